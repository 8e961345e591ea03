"""Local decoder (spec §7): byte i cross-attends to the k vectors of patch d(i) = p(i+1) − 1
(before each windowed self-attention block, per config), then RMSNorm and fp32 byte logits."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from blt_jax.model import attention
from blt_jax.model.layers import Attend, CrossAttention, Linear, RMSNorm, depth_factor
from blt_jax.scale.sharding import constrain
from blt_jax.text.tokenizer import VOCAB_SIZE
from blt_jax.model.transformer import (capturing, compute_dtype, local_attend, make_blocks,
                                       per_layer, run_block)


class LocalDecoder(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d, k, dg, dtype = cfg.dim_local_decoder, cfg.cross_attn_k, cfg.dim_global, compute_dtype(cfg)
        self.cfg = cfg
        # Created iff d_G != d_D, as in the reference (config validation rejects k > 1 without it).
        self.patch_embedding_projection = Linear(dg, k * d, dg ** -0.5, ("embed", "mlp"),
                                                 rngs=rngs, dtype=dtype) if dg != d else None
        n = cfg.n_layers_local_decoder
        n_cross = n if cfg.cross_attn_all_layers_decoder else 1
        self.cross_attn_layers = nnx.List([
            CrossAttention(d, cfg.cross_attn_nheads, norm_eps=cfg.norm_eps,
                           init_factor=depth_factor(cfg.init_std_factor, i, n, d), rngs=rngs,
                           dtype=dtype) for i in range(n_cross)])
        self.layers = make_blocks(cfg, d, n, cfg.n_heads_local_decoder, cfg.n_kv_heads, rngs)
        self.norm = RMSNorm(d, cfg.norm_eps, rngs=rngs)
        self.output = Linear(d, VOCAB_SIZE, d ** -0.5, ("embed", "vocab"), rngs=rngs, dtype=dtype)

    def patch_rows(self, g_BxPxG: jax.Array) -> jax.Array:
        """Global outputs -> (B, P, k, d_D): patch j's output split into k rows."""
        b, p, _ = g_BxPxG.shape
        z = g_BxPxG if self.patch_embedding_projection is None else \
            self.patch_embedding_projection(g_BxPxG)
        return z.reshape(b, p, self.cfg.cross_attn_k, self.cfg.dim_local_decoder)

    def cross_attend(self, layer: CrossAttention, h_BxNxD: jax.Array, z_BxPxKxD: jax.Array,
                     decoder_patch_ids_BxN: jax.Array) -> jax.Array:
        """h + CA(h, z), CA returning h + attn: the double residual."""
        b, p, k, d = z_BxPxKxD.shape
        if self.cfg.attention_impl == "dense":
            mask = attention.decoder_cross_mask(decoder_patch_ids_BxN, p, k)
            return layer.dense(h_BxNxD, z_BxPxKxD.reshape(b, p * k, d), mask)
        keys, values = layer.keys_values(z_BxPxKxD.reshape(b, p * k, d))
        split = lambda t: t.reshape((b, p, k) + t.shape[2:])  # noqa: E731
        return layer.apply(h_BxNxD, lambda q: attention.decoder_cross_attention(
            q, split(keys), split(values), decoder_patch_ids_BxN))

    def logits(self, h_BxNxD: jax.Array) -> jax.Array:
        logits = self.output(self.norm(h_BxNxD)).astype(jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab"))

    def run(self, h_BxNxD: jax.Array, pos_BxN: jax.Array, attend: Attend | Sequence[Attend],
            cross: Callable[[int, CrossAttention, jax.Array], jax.Array]) -> jax.Array:
        """The decoder's layer loop -> fp32 logits. `cross(j, layer, h)` is cross-attention
        layer j (training reads every patch's rows, decoding the last closed patch's cache);
        `attend` the self-attention strategy (one, or one per layer)."""
        cfg = self.cfg
        h = h_BxNxD
        for i, (block, a) in enumerate(zip(self.layers, per_layer(attend, len(self.layers)))):
            if i == 0 or cfg.cross_attn_all_layers_decoder:
                j = i if cfg.cross_attn_all_layers_decoder else 0
                h = cross(j, self.cross_attn_layers[j], h)
            h = run_block(block, cfg.remat, h, pos_BxN, a)
        return self.logits(h)

    def __call__(self, h_BxNxD: jax.Array, g_BxPxG: jax.Array, pos_BxN: jax.Array,
                 seg_BxN: jax.Array, decoder_patch_ids_BxN: jax.Array,
                 sink: list | None = None) -> jax.Array:
        cfg = self.cfg
        z = self.patch_rows(g_BxPxG)
        attend = capturing(local_attend(cfg, seg_BxN, cfg.local_attention_window_len), sink)
        return self.run(h_BxNxD, pos_BxN, attend, lambda j, layer, h: self.cross_attend(
            layer, h, z, decoder_patch_ids_BxN))
