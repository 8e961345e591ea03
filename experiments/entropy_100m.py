"""The reference entropy model: 768 wide, 14 layers, 12 heads, window 512, RoPE θ 10000.
Trained once, then frozen for every BLT (spec §2.4: 8192-byte rows).

    blt-jax train --config experiments/entropy_100m.py --workdir /gcs/BUCKET/runs/entropy_100m

Paper recipe (config.paper_experiment: §4.8 optimizer, bf16, remat).
Batches of 16M bytes (64 rows of 8192 bytes).
Data: a TFDS dataset prepared on the TPU VM (README, "Data on a TPU VM").
"""

from blt_jax import config


def get_config():
    c = config.paper_experiment("entropy", "entropy_100m", seq_len=8192, batch_size=64)
    return c
