"""Latent (global) transformer over the static P_max patch buffer (spec §6): an optional input
projection k·d_E -> d_G, causal or block-causal attention over patches, and no final norm."""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
from flax import nnx

from blt_jax.model.layers import Attend, Linear
from blt_jax.scale.sharding import constrain
from blt_jax.model.transformer import (capturing, causal_attend, compute_dtype, make_blocks,
                                       positions, run_blocks)


class LatentTransformer(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d_in = cfg.cross_attn_k * cfg.dim_local_encoder
        self.cfg = cfg
        self.token_embedding_projection = Linear(
            d_in, cfg.dim_global, d_in ** -0.5, ("mlp", "embed"), rngs=rngs,
            dtype=compute_dtype(cfg)) if d_in != cfg.dim_global else None
        self.layers = make_blocks(cfg, cfg.dim_global, cfg.n_layers_global, cfg.n_heads_global,
                                  cfg.n_kv_heads_global, rngs)

    def project(self, x_BxPxE: jax.Array) -> jax.Array:
        return x_BxPxE if self.token_embedding_projection is None else \
            self.token_embedding_projection(x_BxPxE)

    def __call__(self, x_BxPxE: jax.Array, patch_seg_BxP: jax.Array | None = None,
                 sink: list | None = None, pos_BxP: jax.Array | None = None,
                 attends: Sequence[Attend] | None = None) -> jax.Array:
        """Patch vectors -> global outputs (B, P, d_G). `patch_seg` enables block-causal masks;
        `attends` (one per layer, e.g. decoding caches) replaces the masks over all P patches."""
        b, p, _ = x_BxPxE.shape
        h = constrain(self.project(x_BxPxE), ("batch", "patches", "act_embed"))
        if attends is None:
            attends = capturing(causal_attend(self.cfg, b, p, patch_seg_BxP), sink)
        pos = positions(b, p) if pos_BxP is None else pos_BxP
        return run_blocks(self.layers, self.cfg.remat, h, pos, attends,
                          scan=self.cfg.scan_layers and sink is None)
