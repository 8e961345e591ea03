"""blt-jax: the Byte Latent Transformer in JAX/Flax.

    import blt_jax
    model = blt_jax.load("runs/quickstart/blt")   # a workdir written by blt-jax
    model.logits(ids)                              # patches from its entropy model

The paper's data flow is the package layout: text/ (bytes, hash n-grams, patches) -> model/
(entropy model, local encoder, latent transformer, local decoder) -> training/, inference/,
evaluation/; pipeline/ feeds them, scale/ shards them, tools/ is the command line.
"""

import sys as _sys

from blt_jax.text import hashing, patching, tokenizer

# The documented short names (`import blt_jax.tokenizer`, `from blt_jax import patching`).
for _name, _mod in (("tokenizer", tokenizer), ("patching", patching), ("hashing", hashing)):
    _sys.modules[f"{__name__}.{_name}"] = _mod

__version__ = "0.1.0"


def load(path, step=None, mesh=None, **options):
    """Opens a blt-jax workdir (see blt_jax.inference.api.load for `mesh`, `max_context`,
    `entropy_context`)."""
    from blt_jax.inference import api

    return api.load(path, step, mesh, **options)
