"""The Byte Latent Transformer: local encoder -> latent transformer -> local decoder (spec §0).

Inputs are ids (B, N) and patch lengths (B, P_max) covering N + 1 positions (the reference's
include-next convention: the virtual position N makes d(N-1) defined). :func:`forward_from_ids`
patches inside the same jit with a frozen entropy model and the static patch buffer.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from blt_jax.model import attention
from blt_jax import config
from blt_jax.text import patching
from blt_jax.model.latent import LatentTransformer
from blt_jax.model.local_decoder import LocalDecoder
from blt_jax.model.local_encoder import LocalEncoder
from blt_jax.text.tokenizer import EOS_ID, VOCAB_SIZE
from blt_jax.model.transformer import Transformer, entropies, positions


def check_inputs(ids: Any, patch_lengths: Any | None = None) -> None:
    """ValueError for malformed concrete inputs (skipped for tracers inside jit)."""
    if isinstance(ids, jax.core.Tracer) or isinstance(patch_lengths, jax.core.Tracer):
        return
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (B, N), got {ids.shape}")
    if ids.shape[1] < 1:
        raise ValueError("ids: rows must hold at least one id (BOS)")
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"ids: must lie in [0, {VOCAB_SIZE}), got [{ids.min()}, {ids.max()}]")
    if patch_lengths is None:
        return
    lengths = np.asarray(patch_lengths)
    if lengths.ndim != 2 or lengths.shape[0] != ids.shape[0]:
        raise ValueError(f"patch_lengths: expected shape ({ids.shape[0]}, P), got {lengths.shape}")
    if lengths.shape[1] < 2:
        raise ValueError(f"patch_lengths: P_max must be >= 2, got {lengths.shape[1]}")
    if (lengths < 0).any():
        raise ValueError("patch_lengths: negative lengths")
    sums = lengths.sum(axis=1)
    if (sums != ids.shape[1] + 1).any():
        bad = int(np.flatnonzero(sums != ids.shape[1] + 1)[0])
        raise ValueError(f"patch_lengths: row {bad} sums to {sums[bad]}, must be N + 1 = "
                         f"{ids.shape[1] + 1} (include the virtual next-byte position)")
    if (lengths[:, 0] != 1).any():
        raise ValueError("patch_lengths: the first patch of every row must have length 1 ([BOS])")


def patch_segments(ids_BxN: jax.Array, patch_ids_BxN: jax.Array, n_patches: int) -> jax.Array:
    """Block-causal segments over patches: a segment ends at every patch holding an EOS."""
    has_eos = jax.vmap(lambda e, p: jax.ops.segment_max(e, p, num_segments=n_patches,
                                                        indices_are_sorted=True))(
        (ids_BxN == EOS_ID).astype(jnp.int32), patch_ids_BxN)
    has_eos = jnp.maximum(has_eos, 0)
    return jnp.cumsum(has_eos, axis=-1) - has_eos


class BLT(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        config.validate(cfg)
        self.cfg = cfg
        self.local_encoder = LocalEncoder(cfg, rngs=rngs)
        self.global_transformer = LatentTransformer(cfg, rngs=rngs)
        self.local_decoder = LocalDecoder(cfg, rngs=rngs)

    def __call__(self, ids_BxN: jax.Array, patch_lengths_BxP: jax.Array,
                 sink: dict | None = None) -> jax.Array:
        """fp32 logits (B, N, 260): position i predicts byte i + 1.

        `sink` (generation prefill) receives every stack's intermediate keys/values and the
        global outputs, from which generation builds its caches.
        """
        check_inputs(ids_BxN, patch_lengths_BxP)
        b, n = ids_BxN.shape
        p = patch_lengths_BxP.shape[1]
        patch_ids, decoder_ids = patching.patch_ids_from_lengths(patch_lengths_BxP, n)
        pos = positions(b, n)
        seg = attention.segments_from_eos(ids_BxN, EOS_ID)
        enc_sink = {} if sink is not None else None
        h, patches = self.local_encoder(ids_BxN, pos, seg, patch_ids, p, enc_sink)
        patch_seg = patch_segments(ids_BxN, patch_ids, p) \
            if self.cfg.global_attention == "block_causal" else None
        glob_sink = [] if sink is not None else None
        dec_sink = [] if sink is not None else None
        g = self.global_transformer(patches, patch_seg, glob_sink)
        logits = self.local_decoder(h, g, pos, seg, decoder_ids, dec_sink)
        if sink is not None:
            sink.update(encoder=enc_sink, latent=glob_sink, decoder=dec_sink, h=h, g=g,
                        patch_seg=patch_seg, patch_ids=patch_ids)
        return logits


def patch_from_ids(rule: patching.PatchRule, entropy_model: Transformer | None,
                   ids_BxN: jax.Array, p_max: int) -> patching.PatchBuffer:
    """Static-shape patches for ids; entropy modes run the (frozen) entropy model in-graph."""
    h = None
    if rule.needs_entropies:
        if entropy_model is None:
            raise ValueError(f"entropy_model: patching mode {rule.mode!r} needs one")
        h = jax.lax.stop_gradient(entropies(entropy_model, ids_BxN))
    return patching.patch_buffer(p_max=p_max, ids=ids_BxN, entropies=h, rule=rule)


def forward_from_ids(model: BLT, entropy_model: Transformer | None, ids_BxN: jax.Array,
                     p_max: int, rule: patching.PatchRule | Mapping[str, Any] | None = None
                     ) -> tuple[jax.Array, patching.PatchBuffer]:
    """Patch with the model's rule (or `rule`) inside the same graph, then run the BLT."""
    check_inputs(ids_BxN)
    rule = patching.as_rule(rule) if rule is not None else config.patching_rule(model.cfg.patching)
    buf = patch_from_ids(rule, entropy_model, ids_BxN, p_max)
    return model(ids_BxN, buf.lengths), buf
