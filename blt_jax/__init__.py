"""blt-jax: the Byte Latent Transformer in JAX/Flax.

    import blt_jax
    model = blt_jax.load("runs/quickstart/blt")   # a workdir written by blt-jax
    model.logits(ids)                              # patches from its entropy model
"""

__version__ = "0.1.0"


def load(path, step=None):
    """Opens a blt-jax workdir (see blt_jax.api.load)."""
    from blt_jax import api

    return api.load(path, step)
