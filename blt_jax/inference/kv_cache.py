"""Key/value caches for decoding steps, filled from a batched prefill.

A cache holds, per row, `size` slots of (k, v) stored heads-major, keys transposed (B, G, D, S)
and values (B, G, S, D) — the layouts the two attention dots read as they are, so no step
re-lays out a cache — with the absolute position and the attention segment of each entry.
Windowed stacks (entropy model, local encoder/decoder) use a ring of `size >= window` slots (slot = position % size); the latent model and the token baseline use one slot per
position/patch. A query at position t sees entry e iff 0 <= t - pos(e) < window and
seg(e) == seg(t): exactly the masks of the full forward.

:class:`Cached` is an `Attend` strategy over one cache: the model's own blocks run unchanged
(``block(x, pos, attend)``), only where keys come from differs between training and decoding.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from blt_jax.model import attention, transformer


class Cache(NamedTuple):
    k: jax.Array  # (B, G, D, S): keys transposed (XLA would otherwise transpose them per step)
    v: jax.Array  # (B, G, S, D)
    pos: jax.Array  # (B, S) position of each entry, -1 when empty
    seg: jax.Array  # (B, S) attention segment of each entry


def from_prefill(k_BxNxGxD: jax.Array, v_BxNxGxD: jax.Array, seg_BxN: jax.Array, n_B: jax.Array,
                 size: int, ring: bool) -> Cache:
    """Cache holding what decoding steps over positions 0..n-1 would have left in it."""
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
    k = zero(take(k_BxNxGxD)).transpose(0, 2, 3, 1)
    v = zero(take(v_BxNxGxD)).transpose(0, 2, 1, 3)
    return Cache(k, v, jnp.where(valid, p, -1),
                 jnp.where(valid, take(seg_BxN), -1))


def write(cache: Cache, k_BxLxGxD: jax.Array, v_BxLxGxD: jax.Array, pos_BxL: jax.Array,
          seg_BxL: jax.Array, ring: bool, valid_BxL: jax.Array | None = None,
          keep_invalid: bool = False) -> Cache:
    """Stores L consecutive positions' entries; rows/positions with valid False leave an empty
    (-1) slot instead (the latent step of a row whose patch is still open), or with
    `keep_invalid` leave the slot as it was (a rewrite of some rows' entries only)."""
    size = cache.pos.shape[1]
    slot_BxL = pos_BxL % size if ring else pos_BxL
    pos = pos_BxL if valid_BxL is None or keep_invalid else jnp.where(valid_BxL, pos_BxL, -1)
    ok = jnp.ones(pos_BxL.shape, bool) if valid_BxL is None else valid_BxL
    one = pos_BxL.shape[1] == 1  # one in-place dynamic-update-slice per row, else a scatter

    def row(c: jax.Array, s_L: jax.Array, x: jax.Array, ok_L: jax.Array, axis: int
            ) -> jax.Array:
        if keep_invalid:  # invalid positions write back what their slot held
            old = jax.lax.dynamic_slice_in_dim(c, s_L[0], 1, axis=axis) if one else \
                jnp.take(c, s_L, axis=axis)
            x = jnp.where(ok_L.reshape([-1 if a == axis else 1 for a in range(x.ndim)]), x, old)
        if one:
            return jax.lax.dynamic_update_slice_in_dim(c, x, s_L[0], axis=axis)
        return c.at[(slice(None),) * axis + (s_L,)].set(x)  # a ring may wrap inside L

    put = lambda c, x, axis: jax.vmap(lambda *a: row(*a, axis))(c, slot_BxL, x, ok)  # noqa
    dt = cache.k.dtype
    return Cache(put(cache.k, k_BxLxGxD.astype(dt).transpose(0, 2, 3, 1), 2),  # (G, D, S)
                 put(cache.v, v_BxLxGxD.astype(dt).transpose(0, 2, 1, 3), 1),  # (G, S, D)
                 put(cache.pos, pos, 0), put(cache.seg, seg_BxL, 0))


BLOCK = 128  # slots per step of the blockwise attention over a positional (non-ring) cache


def visible(cache: Cache, pos_BxL: jax.Array, seg_BxL: jax.Array, window: int | None,
            start: Any = 0, size: int | None = None) -> jax.Array:
    """(B, L, S): which cache entries (slots start .. start + size) each query may see."""
    c_pos, c_seg = cache.pos, cache.seg
    if size is not None:
        c_pos, c_seg = (jax.lax.dynamic_slice_in_dim(x, start, size, 1) for x in (c_pos, c_seg))
    delta = pos_BxL[:, :, None] - c_pos[:, None, :]
    mask = (c_pos >= 0)[:, None] & (delta >= 0) & (c_seg[:, None] == seg_BxL[:, :, None])
    return mask & (delta < window) if window is not None else mask


class Cached:
    """Attend strategy for L new positions: attends over the cache and their own (k, v).

    The cache is only read during the call; `.new` keeps the new (k, v) and :func:`extended`
    writes them. A step that computes inside `lax.cond` returns `.new` and writes outside, so
    no branch outputs a whole cache (XLA would copy every cache per step to merge branches).
    """

    def __init__(self, cache: Cache, pos_BxL: jax.Array, seg_BxL: jax.Array,
                 window: int | None, ring: bool, valid_BxL: jax.Array | None = None,
                 alone: bool = False):
        self.cache, self.pos, self.seg, self.window = cache, pos_BxL, seg_BxL, window
        self.ring, self.valid, self.alone = ring, valid_BxL, alone
        self.new: tuple[jax.Array, jax.Array] | None = None

    def __call__(self, q_BxLxHxD: jax.Array, k_BxLxGxD: jax.Array, v_BxLxGxD: jax.Array
                 ) -> jax.Array:
        self.new = (k_BxLxGxD, v_BxLxGxD)
        # a ring slot the new positions overwrite holds an entry >= size >= window back
        # (invisible either way), so reading the old cache plus the new entries is exact
        def mask_old(start: Any = 0, size: int | None = None) -> jax.Array:
            m = visible(self.cache, self.pos, self.seg, self.window, start, size)
            c_pos = self.cache.pos if size is None else \
                jax.lax.dynamic_slice_in_dim(self.cache.pos, start, size, 1)
            if self.alone:  # each position: the cache's other entries and its own new one only
                return m & (c_pos[:, None, :] != self.pos[:, :, None])
            # an entry being rewritten (a re-decoded position) is replaced by its new version
            return m & ~jnp.any(c_pos[:, None, :] == self.pos[:, :, None], axis=1)[:, None, :]

        own = self.pos[:, :, None] - self.pos[:, None, :]
        if self.alone:
            mask_new = own == 0
        else:
            mask_new = (own >= 0) & (self.seg[:, :, None] == self.seg[:, None, :])
        if self.window is not None:
            mask_new &= own < self.window
        if self.valid is not None:  # invalid entries are seen by no other position
            mask_new &= self.valid[:, None, :] | (own == 0)
        if self.ring or self.cache.pos.shape[1] <= BLOCK:
            out = attend_stored(q_BxLxHxD, self.cache.k, self.cache.v, mask_old(), k_BxLxGxD,
                                v_BxLxGxD, mask_new)
        else:  # slot = position: nothing at or past the last query's position + 1 is visible
            out = attend_blocks(q_BxLxHxD, self.cache.k, self.cache.v, mask_old, 0,
                                jnp.max(self.pos) + 1, k_BxLxGxD, v_BxLxGxD, mask_new)
        self._read = out.ravel()[0]
        return out

    def committed(self, keep_invalid: bool = False) -> Cache:
        """The cache with the new entries written, ordered after the reads of this call.

        XLA writes a loop-carried cache in place only when the write provably follows every
        read of the old buffer; an update that does not depend on the reads makes it copy the
        whole cache (each layer, every step). A zero derived from the attention output gives
        the write that dependence.
        """
        zero = jnp.nan_to_num(self._read, posinf=0.0, neginf=0.0) * 0.0
        k, v = (x + zero.astype(x.dtype) for x in self.new)
        pos, seg = (x + zero.astype(x.dtype) for x in (self.pos, self.seg))
        return write(self.cache, k, v, pos, seg, self.ring, self.valid, keep_invalid)


def attend_stored(q_BxLxHxD: jax.Array, kt_BxGxDxS: jax.Array, v_BxGxSxD: jax.Array,
                  mask_BxLxS: jax.Array, k_BxLxGxD: jax.Array | None = None,
                  v_BxLxGxD: jax.Array | None = None, mask_BxLxL: jax.Array | None = None
                  ) -> jax.Array:
    """Softmax attention over stored keys (transposed) and values, plus optionally L new
    entries, as one key set: no cache is copied to append the new ones."""
    b, nq, h, d = q_BxLxHxD.shape
    g, size = kt_BxGxDxS.shape[1], kt_BxGxDxS.shape[3]
    q = (q_BxLxHxD / math.sqrt(d)).reshape(b, nq, g, h // g, d).transpose(0, 2, 3, 1, 4)
    prec = attention.precision(q, kt_BxGxDxS)  # the model's one precision rule
    s = jnp.einsum("bgrqd,bgdk->bgrqk", q, kt_BxGxDxS, preferred_element_type=jnp.float32,
                   precision=prec)
    mask = mask_BxLxS
    if k_BxLxGxD is not None:
        k_new, v_new = (x.transpose(0, 2, 1, 3).astype(v_BxGxSxD.dtype)
                        for x in (k_BxLxGxD, v_BxLxGxD))
        s_new = jnp.einsum("bgrqd,bgkd->bgrqk", q, k_new, preferred_element_type=jnp.float32,
                           precision=prec)
        s = jnp.concatenate([s, s_new], -1)
        mask = jnp.concatenate([mask_BxLxS, mask_BxLxL], axis=-1)
    w = jax.nn.softmax(jnp.where(mask[:, None, None], s, -jnp.inf), axis=-1)
    w = w.astype(v_BxGxSxD.dtype)
    out = jnp.einsum("bgrqk,bgkd->bgrqd", w[..., :size], v_BxGxSxD, precision=prec)
    if k_BxLxGxD is not None:
        out = out + jnp.einsum("bgrqk,bgkd->bgrqd", w[..., size:], v_new, precision=prec)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, nq, h, d)


def attend_blocks(q_BxLxHxD: jax.Array, kt_BxGxDxS: jax.Array, v_BxGxSxD: jax.Array,
                  mask_fn: Any, lo: Any, hi: Any, k_BxLxGxD: jax.Array | None = None,
                  v_BxLxGxD: jax.Array | None = None, mask_BxLxL: jax.Array | None = None,
                  block: int = BLOCK) -> jax.Array:
    """:func:`attend_stored` over stored slots lo .. hi - 1 only (traced bounds), a block of
    slots at a time with an online softmax: a decoding step pays for the slots in use, not the
    whole buffer (the latent's one slot per patch of the longest context, the bytes of one
    patch). `mask_fn(start, size)` -> (B, L, size) visibility of those slots."""
    b, nq, h, d = q_BxLxHxD.shape
    g, size = kt_BxGxDxS.shape[1], kt_BxGxDxS.shape[3]
    block = min(block, size)
    q = (q_BxLxHxD / math.sqrt(d)).reshape(b, nq, g, h // g, d).transpose(0, 2, 3, 1, 4)
    prec = attention.precision(q, kt_BxGxDxS)

    def add(carry: tuple, s: jax.Array, vals: jax.Array, eq: str) -> tuple:
        m, l_, acc = carry
        m_new = jnp.maximum(m, jnp.max(s, -1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m - m_safe)
        pv = jnp.einsum(eq, p.astype(vals.dtype), vals, preferred_element_type=jnp.float32,
                        precision=prec)
        return m_new, l_ * corr + jnp.sum(p, -1), acc * corr[..., None] + pv

    def body(i: jax.Array, carry: tuple) -> tuple:
        start = jnp.minimum(i * block, size - block)  # the last block may overlap the one before
        ks = jax.lax.dynamic_slice_in_dim(kt_BxGxDxS, start, block, 3)
        vs = jax.lax.dynamic_slice_in_dim(v_BxGxSxD, start, block, 2)
        slot = start + jnp.arange(block)
        mask = mask_fn(start, block) & ((slot >= i * block) & (slot >= lo) & (slot < hi))[None, None]
        s = jnp.einsum("bgrqd,bgdk->bgrqk", q, ks, preferred_element_type=jnp.float32,
                       precision=prec)
        return add(carry, jnp.where(mask[:, None, None], s, -jnp.inf), vs, "bgrqk,bgkd->bgrqd")

    shape = q.shape[:-1]
    carry = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
             jnp.zeros(q.shape, jnp.float32))
    carry = jax.lax.fori_loop(lo // block, (hi + block - 1) // block, body, carry)
    if k_BxLxGxD is not None:
        k_new, v_new = (x.transpose(0, 2, 1, 3).astype(v_BxGxSxD.dtype)
                        for x in (k_BxLxGxD, v_BxLxGxD))
        s_new = jnp.einsum("bgrqd,bgkd->bgrqk", q, k_new, preferred_element_type=jnp.float32,
                           precision=prec)
        carry = add(carry, jnp.where(mask_BxLxL[:, None, None], s_new, -jnp.inf), v_new,
                    "bgrqk,bgkd->bgrqd")
    _, l_, acc = carry
    out = (acc / l_[..., None]).astype(v_BxGxSxD.dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, nq, h, d)


def strategies(caches: Sequence[Cache], pos_BxL: jax.Array, seg_BxL: jax.Array,
               window: int | None, ring: bool, valid_BxL: jax.Array | None = None,
               alone: bool = False) -> list[Cached]:
    return [Cached(c, pos_BxL, seg_BxL, window, ring, valid_BxL, alone) for c in caches]


def extended(attends: Sequence[Cached]) -> list[Cache]:
    """The caches with each strategy's new entries written."""
    return [a.committed() for a in attends]


def transformer_prefill(model: Any, ids_BxN: jax.Array, n_B: jax.Array, size: int
                        ) -> tuple[jax.Array, list[Cache]]:
    """Full forward of a Transformer over right-padded rows -> (logits, caches for positions < n)."""
    sink: list = []
    logits = model(ids_BxN, sink=sink)
    window = model.cfg.window
    if window is not None:  # the masks of the model's own forward (transformer.attend)
        seg = transformer.context_segments(
            model.cfg, attention.segments_from_eos(ids_BxN, model.cfg.eos_id),
            transformer.positions(*ids_BxN.shape))
    else:
        seg = jnp.zeros(ids_BxN.shape, jnp.int32)
    caches = [from_prefill(k, v, seg, n_B, size, ring=window is not None) for k, v in sink]
    return logits, caches


def transformer_step(model: Any, x_BxL: jax.Array, pos_BxL: jax.Array, seg_BxL: jax.Array,
                     caches: list[Cache]) -> tuple[jax.Array, list[Cache]]:
    """L ids per row at positions pos -> fp32 logits (B, L, V) and the extended caches."""
    window = model.cfg.window
    attends = strategies(caches, pos_BxL, seg_BxL, window, ring=window is not None)
    return model(x_BxL, pos_BxL, attends=attends), extended(attends)
