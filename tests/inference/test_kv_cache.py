"""kv_cache.write against a numpy statement of what each slot must hold afterwards."""

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
