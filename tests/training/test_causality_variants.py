"""Training-path causality beyond the default tiny config: the in-graph patcher (with P_max
overflow) + BLT forward on block-causal global attention, all-layers encoder cross-attention and
k != 2, under perturbations that *add* patch delimiters (spaces, newlines, EOS) after t."""

import jax
import numpy as np
import pytest
from flax import nnx

from blt_jax import config
from blt_jax.model import blt
from blt_jax.text import patching, tokenizer

VARIANTS = {
    "block_causal_k3": dict(global_attention="block_causal", cross_attn_k=3),
    "enc_all_layers": dict(n_layers_local_encoder=2, cross_attn_all_layers_encoder=True),
    "k1_dec_last_only": dict(cross_attn_k=1, cross_attn_all_layers_decoder=False),
}
DELIMS = [ord(" ") + 4, ord("\n") + 4, ord(".") + 4, tokenizer.EOS_ID]


def rows(b, n, rng):
    ids = rng.integers(ord("a") + 4, ord("z") + 5, (b, n)).astype(np.int32)  # one long word
    ids[:, 0] = tokenizer.BOS_ID
    return ids


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_adding_delimiters_later_never_changes_earlier_logits(name):
    cfg = config.model_preset("blt_tiny")
    cfg.update(VARIANTS[name])
    config.validate(cfg)
    gdef, st = nnx.split(blt.BLT(cfg, rngs=nnx.Rngs(1)))
    rule = patching.PatchRule("space")
    p_max = 8  # delimiters added later overflow the buffer: the overflow policy is in play

    @jax.jit
    def fwd(i):
        return blt.forward_from_ids(nnx.merge(gdef, st), None, i, p_max, rule)

    rng = np.random.default_rng(len(name))
    ids = rows(3, 40, rng)
    base, buf = fwd(ids)
    base = np.asarray(base)
    for t in (5, 17, 30):
        changed = ids.copy()
        where = rng.choice(np.arange(t + 1, 40), 8, replace=False)
        changed[:, where] = rng.choice(DELIMS, (3, 8))  # more patches (and EOS segments) after t
        out, buf2 = fwd(changed)
        out = np.asarray(out)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-4  # the change is seen later
        assert (np.asarray(buf2.lengths) > 0).sum() > (np.asarray(buf.lengths) > 0).sum()
