"""Matmul precision: an fp32 config (imported models) asks every dot for HIGHEST, so TPU/GPU
defaults (bf16 passes, TF32) cannot lower it; a bf16 config leaves the backend default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blt_jax import config
from blt_jax.model import factory
from blt_jax.text import patching, tokenizer


def dot_precisions(jaxpr):
    """The precision of every dot_general in a jaxpr, sub-jaxprs (scan, remat, pjit) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(dot_precisions(inner))
    return found


def is_highest(p):
    return p is not None and all(x == jax.lax.Precision.HIGHEST
                                 for x in (p if isinstance(p, tuple) else (p,)))


def blt_jaxpr(dtype):
    cfg = config.model_preset("blt_tiny")
    cfg.dtype = dtype
    graphdef, state = nnx.split(factory.build_model(cfg))
    ids = tokenizer.encode(b"Precision is asked for, not assumed.")[None]
    lengths = patching.patch_lengths(ids, mode="space")
    return jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids, lengths))(state).jaxpr


def transformer_jaxpr(dtype, window):
    cfg = config.model_preset("entropy_tiny")
    cfg.update(dtype=dtype, window=window, attention_impl="fast", local_attention_block=16)
    graphdef, state = nnx.split(factory.build_model(cfg))
    ids = jnp.asarray(np.arange(4, 132, dtype=np.int32)[None])  # 128 > block: blockwise path
    return jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids))(state).jaxpr


@pytest.mark.parametrize("build", [blt_jaxpr, lambda d: transformer_jaxpr(d, 32),
                                   lambda d: transformer_jaxpr(d, None)],
                         ids=["blt", "windowed", "causal"])
def test_fp32_dots_are_highest_and_bf16_dots_default(build):
    fp32 = dot_precisions(build("float32"))
    assert len(fp32) >= 10 and all(is_highest(p) for p in fp32), fp32  # scanned: one body
    bf16 = dot_precisions(build("bfloat16"))
    assert len(bf16) == len(fp32) and not any(is_highest(p) for p in bf16), bf16
