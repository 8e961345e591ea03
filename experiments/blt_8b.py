"""BLT 8B (paper Table 10 shape).

    blt-jax train --config experiments/blt_8b.py --workdir /gcs/BUCKET/runs/blt_8b \\
        --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m

Paper recipe (config.paper_experiment: §4.8 optimizer, bf16, remat).
Batches of 16M bytes (1024 rows of 16384 bytes).
Data: a TFDS dataset prepared on the TPU VM (README, "Data on a TPU VM").
"""

from blt_jax import config


def get_config():
    c = config.paper_experiment("blt", "blt_8b", seq_len=16384, batch_size=1024, p_max=5120)
    c.entropy.target_bytes_per_patch = 4.5  # threshold calibrated on training rows
    c.entropy.workdir = ""  # required: --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m
    # 8-way data parallel: FSDP over the rest must divide the 1280 hash-table columns, so the
    # n-gram lookup stays shard-local (v5p:8x8x8: 31.5 GiB per chip, against 81.5 at (1, 512, 1))
    c.mesh.shape = (8, -1, 1)
    return c
