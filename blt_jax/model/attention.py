"""Attention kernels over the masks BLT needs, each in O(memory) that scales with bytes.

Shapes: B batch, N bytes, P patches, K = cross_attn_k, H query heads, G kv heads, D head dim,
C block size, W window. Softmax is always fp32; rows with no visible key output exactly 0.

- :func:`dense_attention` — any boolean mask (global model, token baseline, and the test oracle).
- :func:`local_attention` — windowed causal attention inside EOS-closed segments, computed block by
  block: O(N·(W+C)) scores instead of O(N²).
- :func:`encoder_cross_attention` — patch queries see only their own (contiguous) bytes: a
  segment softmax over bytes grouped by patch id, O(N·K·H·D).
- :func:`decoder_cross_attention` — byte i sees the K rows of patch d(i): a gather, O(N·K·H·D).

The ``*_mask`` builders materialise the same masks densely for the oracle path only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_NEG = -1e30
# Score tensors at least this large (elements) are computed one (row, kv head) at a time.
_MAP_SCORES = 1 << 21


def precision(*xs: jax.Array) -> jax.lax.Precision | None:
    """The one matmul-precision rule: HIGHEST when every operand is float32 (an fp32 config,
    e.g. an imported model), so TPU/GPU defaults (bf16 passes, TF32) cannot quietly lower what
    fp32 asked for; None (the backend default) for bf16 compute."""
    return jax.lax.Precision.HIGHEST if all(x.dtype == jnp.float32 for x in xs) else None


def _softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """fp32 softmax over the last axis that is exactly 0 on fully masked rows (no NaN).

    One select, then ``jax.nn.softmax`` (its custom JVP keeps the backward to one fused pass);
    the row test is taken on the (head-free) mask, so it costs nothing per head.
    """
    w = jax.nn.softmax(jnp.where(mask, scores.astype(jnp.float32), _NEG), axis=-1)
    return jnp.where(mask.any(-1, keepdims=True), w, 0.0)


def dense_attention(q_BxQxHxD: jax.Array, k_BxKxGxD: jax.Array, v_BxKxGxD: jax.Array,
                    mask_BxQxK: jax.Array) -> jax.Array:
    b, nq, h, d = q_BxQxHxD.shape
    g = k_BxKxGxD.shape[2]
    # heads-major operands: the two dots are plain batched matmuls
    k_BxGxKxD = k_BxKxGxD.transpose(0, 2, 1, 3)
    v_BxGxKxD = v_BxKxGxD.transpose(0, 2, 1, 3)
    if b * h * nq * k_BxKxGxD.shape[1] < _MAP_SCORES:
        return heads_major_attention(q_BxQxHxD, k_BxGxKxD, v_BxGxKxD, mask_BxQxK)
    q_BxGxRxQxD = q_BxQxHxD.reshape(b, nq, g, h // g, d).transpose(0, 2, 3, 1, 4)
    out = _map_heads(q_BxGxRxQxD, k_BxGxKxD, v_BxGxKxD, mask_BxQxK)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, nq, h, d)


def heads_major_attention(q_BxQxHxD: jax.Array, k_BxGxKxD: jax.Array, v_BxGxKxD: jax.Array,
                          mask_BxQxK: jax.Array) -> jax.Array:
    """Attention over keys/values stored heads-major (what KV caches keep, so a decoding step
    reads them in place instead of re-laying out the whole cache every token)."""
    b, nq, h, d = q_BxQxHxD.shape
    g = k_BxGxKxD.shape[1]
    q_BxGxRxQxD = q_BxQxHxD.reshape(b, nq, g, h // g, d).transpose(0, 2, 3, 1, 4)
    out = _attend(q_BxGxRxQxD, k_BxGxKxD, v_BxGxKxD, mask_BxQxK[:, None])
    return out.transpose(0, 3, 1, 2, 4).reshape(b, nq, h, d)


def _attend(q_XxRxQxD: jax.Array, k_XxKxD: jax.Array, v_XxKxD: jax.Array,
            mask_XxQxK: jax.Array) -> jax.Array:
    """The attention core over any leading batch dims X: R query heads share one kv head."""
    scale = 1.0 / math.sqrt(q_XxRxQxD.shape[-1])
    s = jnp.einsum("...rqd,...kd->...rqk", q_XxRxQxD * scale, k_XxKxD,
                   preferred_element_type=jnp.float32, precision=precision(q_XxRxQxD, k_XxKxD))
    w = _softmax(s, mask_XxQxK[..., None, :, :]).astype(v_XxKxD.dtype)
    return jnp.einsum("...rqk,...kd->...rqd", w, v_XxKxD, precision=precision(w, v_XxKxD))


def _map_heads(q_BxGx: jax.Array, k_BxGx: jax.Array, v_BxGx: jax.Array,
               mask_Bx: jax.Array, blocks: bool = False) -> jax.Array:
    """Runs :func:`_attend` one slice at a time under a rematerialised lax.map.

    Each iteration's scores stay a few MiB (cache-resident, buffers reused), where one batched
    call materialises all of them and pays page faults and full-size transposes for it on
    XLA:CPU; the backward recomputes one slice at a time for the same reason. On one device a
    slice is one (row, kv head). When the batch is sharded it is one kv head (and, for local
    attention's query blocks, `blocks`, one block) over every row: a loop over a sharded axis
    makes XLA gather it, and every device then ran the global batch (the 1B step needed 117
    GiB of temporaries per chip on v5p-64, the same at any depth and any slice size).
    """
    b, g = q_BxGx.shape[:2]
    mesh = jax.sharding.get_abstract_mesh()
    sharded = not mesh.empty and mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1) > 1
    nb = q_BxGx.shape[2] if blocks and sharded else 1
    keep = 3 if blocks and sharded else 2  # dims before the per-slice operands
    if sharded:  # slices (G[, nb]) over every row: (B, G[, nb], ...) -> (G·nb, B, ...)
        lead = lambda x: jnp.moveaxis(x, 0, keep - 1).reshape(  # noqa: E731
            (g * nb, b) + x.shape[keep:])
        mask_of = lambda i: jax.lax.dynamic_index_in_dim(  # noqa: E731
            mask_Bx, i % nb, axis=1, keepdims=False) if blocks else mask_Bx
    else:  # slices (B, G): (B, G, ...) -> (B·G, ...)
        lead = lambda x: x.reshape((b * g,) + x.shape[2:])  # noqa: E731
        mask_of = lambda i: mask_Bx[i // g]  # noqa: E731

    def one(args: tuple[jax.Array, ...]) -> jax.Array:
        q, k, v, i = args
        return _attend(q, k, v, mask_of(i))

    out = jax.lax.map(jax.checkpoint(one), (lead(q_BxGx), lead(k_BxGx), lead(v_BxGx),
                                            jnp.arange(g * nb if sharded else b * g)))
    if not sharded:
        return out.reshape((b, g) + out.shape[1:])
    out = out.reshape((g, nb, b) + out.shape[2:] if blocks else (g, b) + out.shape[2:])
    return jnp.moveaxis(out, keep - 1, 0)


def local_attention(q_BxNxHxD: jax.Array, k_BxNxGxD: jax.Array, v_BxNxGxD: jax.Array,
                    seg_BxN: jax.Array, window: int, block: int = 128) -> jax.Array:
    """Query i sees key j iff 0 <= i - j < window and seg(i) == seg(j), blockwise.

    Queries go in blocks of C; block n reads key blocks n-m..n (m = ceil((W-1)/C)), laid out
    heads-major so each block is one (R·C x D) @ (D x (m+1)C) matmul, one (row, kv head) at a
    time. A window that covers the row is plain causal attention.
    """
    b, n, h, d = q_BxNxHxD.shape
    g = k_BxNxGxD.shape[2]
    r = h // g
    if window >= n:
        return causal_attention(q_BxNxHxD, k_BxNxGxD, v_BxNxGxD, seg_BxN, chunk=n)
    c = max(1, min(block, n))
    nb = -(-n // c)
    m = min(-(-(window - 1) // c) if window > 1 else 0, nb - 1)  # key blocks behind a query block
    tail = nb * c - n

    def blocks(x: jax.Array, front: int, fill: float | int = 0) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[1] = (front, tail)
        x = jnp.pad(x, widths, constant_values=fill)
        return x.reshape((b, x.shape[1] // c, c) + x.shape[2:])

    def windows(x: jax.Array) -> jax.Array:  # (B, nb+m, C, ...) -> (B, nb, (m+1)C, ...)
        return jnp.concatenate([x[:, s: s + nb] for s in range(m + 1)], axis=2)

    # q: (B, G, nb, R, C, D);  k, v: (B, G, nb, (m+1)C, D)
    q = blocks(q_BxNxHxD, 0).reshape(b, nb, c, g, r, d).transpose(0, 3, 1, 4, 2, 5)
    k = windows(blocks(k_BxNxGxD, m * c)).transpose(0, 3, 1, 2, 4)
    v = windows(blocks(v_BxNxGxD, m * c)).transpose(0, 3, 1, 2, 4)
    seg_q = blocks(seg_BxN, 0, -1)  # (B, nb, C)
    seg_k = windows(blocks(seg_BxN, m * c, -2))  # (B, nb, (m+1)C)
    pos_q = jnp.arange(nb * c).reshape(nb, c)
    pos_k = windows((jnp.arange((nb + m) * c) - m * c).reshape(1, nb + m, c))[0]
    delta = pos_q[:, :, None] - pos_k[:, None, :]  # (nb, C, (m+1)C)
    mask = ((delta >= 0) & (delta < window))[None] & (seg_q[..., None] == seg_k[:, :, None, :])
    out = _map_heads(q, k, v, mask, blocks=True)  # (B, G, nb, R, C, D)
    out = out.transpose(0, 2, 4, 1, 3, 5)  # (B, nb, C, G, R, D)
    return out.reshape(b, nb * c, h, d)[:, :n]


def causal_attention(q_BxLxHxD: jax.Array, k_BxLxGxD: jax.Array, v_BxLxGxD: jax.Array,
                     seg_BxL: jax.Array | None = None, chunk: int = 512) -> jax.Array:
    """Causal (optionally segment-restricted) attention over all previous keys.

    Up to `chunk` queries it is one dense call; beyond, queries are processed `chunk` at a time
    under lax.map with rematerialisation, so scores take O(chunk·L) memory instead of O(L²)
    (the latent model's P x P and the token baseline's L x L at long contexts).
    """
    b, n, h, d = q_BxLxHxD.shape
    seg = jnp.zeros((b, n), jnp.int32) if seg_BxL is None else seg_BxL
    if n <= chunk:
        return dense_attention(q_BxLxHxD, k_BxLxGxD, v_BxLxGxD, causal_mask(b, n, seg))
    nc = -(-n // chunk)
    pad = nc * chunk - n
    q = jnp.pad(q_BxLxHxD, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q = q.reshape(b, nc, chunk, h, d).transpose(1, 0, 2, 3, 4)
    seg_q = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1).reshape(b, nc, chunk)
    seg_q = seg_q.transpose(1, 0, 2)

    @jax.checkpoint
    def one_chunk(args: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        q_c, s_c, start = args
        pos_q = start + jnp.arange(chunk)
        mask = (pos_q[:, None] >= jnp.arange(n)[None, :])[None] & (s_c[:, :, None] == seg[:, None, :])
        return dense_attention(q_c, k_BxLxGxD, v_BxLxGxD, mask)

    out = jax.lax.map(one_chunk, (q, seg_q, jnp.arange(nc) * chunk))
    return out.transpose(1, 0, 2, 3, 4).reshape(b, nc * chunk, h, d)[:, :n]


def _segment(op, data_BxN: jax.Array, ids_BxN: jax.Array, num: int) -> jax.Array:
    return jax.vmap(lambda x, i: op(x, i, num_segments=num, indices_are_sorted=True))(
        data_BxN, ids_BxN)


def segment_max_pool(h_BxNxD: jax.Array, patch_ids_BxN: jax.Array, n_patches: int) -> jax.Array:
    """Max over each patch's bytes; patches without bytes pool to 0 (spec §5.3)."""
    pooled = _segment(jax.ops.segment_max, h_BxNxD, patch_ids_BxN, n_patches)
    count = _segment(jax.ops.segment_sum, jnp.ones(patch_ids_BxN.shape, jnp.int32), patch_ids_BxN,
                     n_patches)
    return jnp.where(count[..., None] > 0, pooled, jnp.zeros((), pooled.dtype))


def encoder_cross_attention(q_BxPxKxHxD: jax.Array, k_BxNxHxD: jax.Array, v_BxNxHxD: jax.Array,
                            patch_ids_BxN: jax.Array) -> jax.Array:
    """Patch j's K queries attend to the bytes i with p(i) == j (segment softmax)."""
    b, p, kk, h, d = q_BxPxKxHxD.shape
    q_BxNxKxHxD = jnp.take_along_axis(q_BxPxKxHxD, patch_ids_BxN[:, :, None, None, None], axis=1)
    s_BxNxKxH = jnp.einsum("bnkhd,bnhd->bnkh", q_BxNxKxHxD, k_BxNxHxD,
                           preferred_element_type=jnp.float32,
                           precision=precision(q_BxNxKxHxD, k_BxNxHxD)) / math.sqrt(d)
    top_BxPxKxH = jax.lax.stop_gradient(_segment(jax.ops.segment_max, s_BxNxKxH, patch_ids_BxN, p))
    e_BxNxKxH = jnp.exp(s_BxNxKxH - jnp.take_along_axis(
        top_BxPxKxH, patch_ids_BxN[:, :, None, None], axis=1))
    denom_BxPxKxH = _segment(jax.ops.segment_sum, e_BxNxKxH, patch_ids_BxN, p)
    num_BxPxKxHxD = _segment(jax.ops.segment_sum,
                             e_BxNxKxH[..., None] * v_BxNxHxD[:, :, None].astype(jnp.float32),
                             patch_ids_BxN, p)
    out = num_BxPxKxHxD / jnp.where(denom_BxPxKxH > 0, denom_BxPxKxH, 1.0)[..., None]
    return out.astype(v_BxNxHxD.dtype)


def decoder_cross_attention(q_BxNxHxD: jax.Array, k_BxPxKxHxD: jax.Array, v_BxPxKxHxD: jax.Array,
                            decoder_patch_ids_BxN: jax.Array) -> jax.Array:
    """Byte i attends to the K rows of patch d(i) (gather, then a K-way softmax)."""
    d = q_BxNxHxD.shape[-1]
    idx = decoder_patch_ids_BxN[:, :, None, None, None]
    k_BxNxKxHxD = jnp.take_along_axis(k_BxPxKxHxD, idx, axis=1)
    v_BxNxKxHxD = jnp.take_along_axis(v_BxPxKxHxD, idx, axis=1)
    s_BxNxHxK = jnp.einsum("bnhd,bnkhd->bnhk", q_BxNxHxD, k_BxNxKxHxD,
                           preferred_element_type=jnp.float32,
                           precision=precision(q_BxNxHxD, k_BxNxKxHxD)) / math.sqrt(d)
    w = jax.nn.softmax(s_BxNxHxK, axis=-1).astype(v_BxNxKxHxD.dtype)
    return jnp.einsum("bnhk,bnkhd->bnhd", w, v_BxNxKxHxD, precision=precision(w, v_BxNxKxHxD))


# ---------------------------------------------------------------------------------------------
# Dense masks (oracle path and the small P x P patch masks)


def segments_from_eos(ids_BxN: jax.Array, eos_id: int) -> jax.Array:
    """seg(i) = number of EOS strictly before i: EOS closes its segment inclusively."""
    is_eos = (ids_BxN == eos_id).astype(jnp.int32)
    return jnp.cumsum(is_eos, axis=-1) - is_eos


def local_mask(seg_BxN: jax.Array, window: int) -> jax.Array:
    n = seg_BxN.shape[1]
    delta = jnp.arange(n)[:, None] - jnp.arange(n)[None, :]
    return ((delta >= 0) & (delta < window))[None] & (seg_BxN[:, :, None] == seg_BxN[:, None, :])


def causal_mask(b: int, n: int, seg_BxN: jax.Array | None = None) -> jax.Array:
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool))[None], (b, n, n))
    if seg_BxN is not None:
        mask = mask & (seg_BxN[:, :, None] == seg_BxN[:, None, :])
    return mask


def encoder_cross_mask(patch_ids_BxN: jax.Array, n_patches: int, k: int) -> jax.Array:
    """(B, P·K, N): query row r (patch r // K) sees byte i iff p(i) == r // K."""
    rows = jnp.arange(n_patches * k) // k
    return rows[None, :, None] == patch_ids_BxN[:, None, :]


def decoder_cross_mask(decoder_patch_ids_BxN: jax.Array, n_patches: int, k: int) -> jax.Array:
    """(B, N, P·K): byte i sees the K columns of patch d(i)."""
    cols = jnp.arange(n_patches * k) // k
    return decoder_patch_ids_BxN[:, :, None] == cols[None, None, :]
