"""kv_cache.write against a numpy statement of what each slot must hold afterwards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.inference import kv_cache


@pytest.mark.parametrize("n_new", [1, 3])
@pytest.mark.parametrize("keep_invalid", [False, True])
def test_write_slots_valid_and_kept(n_new, keep_invalid):
    rng = np.random.default_rng(0)
    b, g, d, size = 2, 2, 4, 5
    cache = kv_cache.Cache(rng.normal(size=(b, g, d, size)).astype(np.float32),
                           rng.normal(size=(b, g, size, d)).astype(np.float32),
                           np.arange(size)[None].repeat(b, 0).astype(np.int32),
                           np.zeros((b, size), np.int32))
    pos = np.array([[4, 5, 6][:n_new], [6, 7, 8][:n_new]], np.int32)  # ring: wraps at 5
    valid = np.array([[True, False, True][:n_new], [False, True, True][:n_new]])
    k = rng.normal(size=(b, n_new, g, d)).astype(np.float32)
    v = rng.normal(size=(b, n_new, g, d)).astype(np.float32)
    out = kv_cache.write(cache, k, v, pos, np.ones_like(pos), ring=True, valid_BxL=valid,
                         keep_invalid=keep_invalid)
    want_k, want_v = np.array(cache.k), np.array(cache.v)
    want_pos, want_seg = np.array(cache.pos), np.array(cache.seg)
    for r in range(b):
        for i in range(n_new):
            s = pos[r, i] % size
            if valid[r, i] or not keep_invalid:
                want_k[r, :, :, s], want_v[r, :, s] = k[r, i], v[r, i]
                want_pos[r, s] = pos[r, i] if valid[r, i] else -1
                want_seg[r, s] = 1
    for got, want in zip(out, (want_k, want_v, want_pos, want_seg)):
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("lo,hi", [(0, 45), (13, 30), (40, 45), (0, 1)])
def test_blockwise_attention_equals_dense(lo, hi):
    """attend_blocks (slots lo..hi-1, blocks of 16 over 45 slots: the last block overlaps)
    equals attend_stored with everything outside lo..hi masked, new entries included."""
    rng = np.random.default_rng(1)
    b, nq, h, g, d, size = 2, 3, 4, 2, 8, 45
    q = rng.normal(size=(b, nq, h, d)).astype(np.float32)
    kt = rng.normal(size=(b, g, d, size)).astype(np.float32)
    v = rng.normal(size=(b, g, size, d)).astype(np.float32)
    mask = rng.random((b, nq, size)) < 0.6
    k_new = rng.normal(size=(b, nq, g, d)).astype(np.float32)
    v_new = rng.normal(size=(b, nq, g, d)).astype(np.float32)
    mask_new = np.tril(np.ones((nq, nq), bool))[None].repeat(b, 0)
    inside = (np.arange(size) >= lo) & (np.arange(size) < hi)
    want = kv_cache.attend_stored(q, kt, v, mask & inside, k_new, v_new, mask_new)
    got = kv_cache.attend_blocks(
        q, kt, v, lambda start, n: jax.lax.dynamic_slice_in_dim(jnp.asarray(mask), start, n, 2),
        lo, hi, k_new, v_new, mask_new, block=16)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
