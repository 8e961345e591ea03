"""Tiny entropy model (byte LM) on the embedded corpus, CPU-sized.

    blt-jax train --config experiments/entropy_tiny.py --workdir runs/entropy_tiny
"""

from blt_jax import config


def get_config():
    return config.tiny_experiment("entropy")
