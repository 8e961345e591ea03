"""Tiny BPE token baseline on the embedded corpus (byte-level BPE trained on the same split),
the same transformer shape as blt_tiny's latent model.

    blt-jax train --config experiments/bpe_tiny.py --workdir runs/bpe_tiny
"""

from blt_jax import config


def get_config():
    return config.tiny_experiment("bpe")
