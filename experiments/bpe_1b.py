"""Token baseline at the 1B BLT's latent size (Llama-3-style, 128K vocabulary).

    blt-jax train --config experiments/bpe_1b.py --workdir /gcs/BUCKET/runs/bpe_1b

Paper recipe (config.paper_experiment: §4.8 optimizer, bf16, remat).
Batches of 16M bytes (1024 rows of 4096 tokens).
Data: a TFDS dataset prepared on the TPU VM (README, "Data on a TPU VM").
"""

from blt_jax import config


def get_config():
    c = config.paper_experiment("bpe", "bpe_1b", seq_len=4096, batch_size=1024)
    return c
