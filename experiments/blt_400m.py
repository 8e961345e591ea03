"""BLT 400M (paper Table 10 shape).

    blt-jax train --config experiments/blt_400m.py --workdir /gcs/BUCKET/runs/blt_400m \\
        --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m

Paper recipe (config.paper_experiment: §4.8 optimizer, bf16, remat).
Batches of 16M bytes (1024 rows of 16384 bytes).
Data: a TFDS dataset prepared on the TPU VM (README, "Data on a TPU VM").
"""

from blt_jax import config


def get_config():
    c = config.paper_experiment("blt", "blt_400m", seq_len=16384, batch_size=1024, p_max=5120)
    c.entropy.target_bytes_per_patch = 4.5  # threshold calibrated on training rows
    c.entropy.workdir = ""  # required: --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m
    return c
