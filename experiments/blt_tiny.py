"""Tiny BLT on the embedded corpus, CPU-sized; needs a trained entropy model.

    blt-jax train --config experiments/entropy_tiny.py --workdir runs/entropy_tiny
    blt-jax train --config experiments/blt_tiny.py --workdir runs/blt_tiny \\
        --config.entropy.workdir=runs/entropy_tiny

The threshold is calibrated to 4 bytes/patch on training rows (recorded in threshold.json).
"""

from blt_jax import config


def get_config():
    return config.tiny_experiment("blt")
