"""Key/value caches for one-token steps, filled from a batched prefill.

A cache holds, per row, `size` slots of (k, v) with the absolute position and the attention
segment of the entry. Windowed stacks (entropy model, local encoder/decoder) use a ring of
`size = window` slots (slot = position % window); the latent model and the token baseline use
one slot per position/patch. A query at position t sees entry e iff 0 <= t - pos(e) < window
and seg(e) == seg(t): exactly the masks of the full forward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from blt_jax.model import attention


class Cache(NamedTuple):
    k: jax.Array  # (B, S, G, D)
    v: jax.Array  # (B, S, G, D)
    pos: jax.Array  # (B, S) position of each entry, -1 when empty
    seg: jax.Array  # (B, S) attention segment of each entry


def from_prefill(k_BxNxGxD: jax.Array, v_BxNxGxD: jax.Array, seg_BxN: jax.Array, n_B: jax.Array,
                 size: int, ring: bool) -> Cache:
    """Cache holding what one-token steps over positions 0..n-1 would have left in it."""
    b, n = seg_BxN.shape
    slots = jnp.arange(size)
    if ring:  # slot s holds the latest position p < n with p % size == s
        last = n_B[:, None] - 1
        p = slots[None, :] + size * jnp.floor_divide(last - slots[None, :], size)
    else:
        p = jnp.broadcast_to(slots[None, :], (b, size))
    valid = (p >= 0) & (p < n_B[:, None]) & (p < n)
    idx = jnp.clip(p, 0, n - 1)
    take = lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa
    zero = lambda x: jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, 0)  # noqa
    return Cache(zero(take(k_BxNxGxD)), zero(take(v_BxNxGxD)), jnp.where(valid, p, -1),
                 jnp.where(valid, take(seg_BxN), -1))


def empty(b: int, size: int, g: int, d: int, dtype: Any) -> Cache:
    z = jnp.zeros((b, size, g, d), dtype)
    return Cache(z, z, jnp.full((b, size), -1, jnp.int32), jnp.full((b, size), -1, jnp.int32))


def write(cache: Cache, k_BxGxD: jax.Array, v_BxGxD: jax.Array, pos_B: jax.Array,
          seg_B: jax.Array, ring: bool, valid_B: jax.Array | None = None) -> Cache:
    """Stores this position's entry; rows with valid False leave an empty (-1) slot instead."""
    size = cache.pos.shape[1]
    slot = pos_B % size if ring else pos_B
    put = jax.vmap(lambda c, s, x: c.at[s].set(x))
    pos = pos_B if valid_B is None else jnp.where(valid_B, pos_B, -1)
    return Cache(put(cache.k, slot, k_BxGxD.astype(cache.k.dtype)),
                 put(cache.v, slot, v_BxGxD.astype(cache.v.dtype)),
                 put(cache.pos, slot, pos), put(cache.seg, slot, seg_B))


def attend(q_BxHxD: jax.Array, cache: Cache, pos_B: jax.Array, seg_B: jax.Array,
           window: int | None) -> jax.Array:
    """One query per row against the cache (after writing this position's entry)."""
    delta = pos_B[:, None] - cache.pos
    mask = (cache.pos >= 0) & (delta >= 0) & (cache.seg == seg_B[:, None])
    if window is not None:
        mask = mask & (delta < window)
    out = attention.dense_attention(q_BxHxD[:, None], cache.k, cache.v, mask[:, None])
    return out[:, 0]


def block_step(block: Any, x_BxD: jax.Array, pos_B: jax.Array, seg_B: jax.Array, cache: Cache,
               window: int | None, ring: bool, valid_B: jax.Array | None = None
               ) -> tuple[jax.Array, Cache]:
    """TransformerBlock on one token per row, reading and extending its cache (rows with
    valid False compute a throw-away output and leave their cache slot empty)."""
    h = block.attention_norm(x_BxD[:, None])
    q, k, v = block.attention.qkv(h, pos_B[:, None])
    cache = write(cache, k[:, 0], v[:, 0], pos_B, seg_B, ring, valid_B)
    o = attend(q[:, 0], cache, pos_B, seg_B, window)
    x = x_BxD[:, None] + block.attention.out(o[:, None])
    x = x + block.feed_forward(block.ffn_norm(x))
    return x[:, 0], cache


def transformer_prefill(model: Any, ids_BxN: jax.Array, n_B: jax.Array, size: int
                        ) -> tuple[jax.Array, list[Cache]]:
    """Full forward of a Transformer over right-padded rows -> (logits, caches for positions < n)."""
    sink: list = []
    logits = model(ids_BxN, sink=sink)
    window = model.cfg.window
    seg = attention.segments_from_eos(ids_BxN, model.cfg.eos_id) if window is not None \
        else jnp.zeros(ids_BxN.shape, jnp.int32)
    caches = [from_prefill(k, v, seg, n_B, size, ring=window is not None) for k, v in sink]
    return logits, caches


def transformer_step(model: Any, x_B: jax.Array, pos_B: jax.Array, seg_B: jax.Array,
                     caches: list[Cache]) -> tuple[jax.Array, list[Cache]]:
    """One id per row at position pos -> fp32 logits (B, V) and the extended caches."""
    window = model.cfg.window
    h = model.tok_embeddings(x_B[:, None])[:, 0]
    out = []
    for block, cache in zip(model.layers, caches):
        h, cache = block_step(block, h, pos_B, seg_B, cache, window, ring=window is not None)
        out.append(cache)
    return model.output(model.norm(h)).astype(jnp.float32), out
