"""Fast attention paths == dense-mask oracle (values and gradients); no NaN on empty rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.model import attention, layers
from blt_jax.text import patching


def rand(key, *shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def assert_same_values_and_grads(fast, dense, args, atol=2e-6):
    """Jitted forward and gradients of a fast kernel against the dense-mask oracle."""
    np.testing.assert_allclose(jax.jit(fast)(*args), jax.jit(dense)(*args), atol=atol)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    grads = [jax.jit(jax.grad(loss(f), tuple(range(len(args)))))(*args) for f in (fast, dense)]
    for gf, gd in zip(*grads):
        assert np.isfinite(gf).all()
        np.testing.assert_allclose(gf, gd, atol=10 * atol)


def random_segments(rng, b, n, p_eos=0.05):
    ids = np.where(rng.random((b, n)) < p_eos, 2, 50)
    return attention.segments_from_eos(jnp.asarray(ids), 2)


@pytest.mark.parametrize("n,window,block,h,g", [
    (37, 8, 4, 4, 2), (64, 16, 16, 2, 2), (50, 1, 8, 2, 1), (33, 100, 8, 4, 4), (70, 9, 128, 2, 2)])
def test_local_attention_matches_dense(n, window, block, h, g):
    rng = np.random.default_rng(n)
    q, k, v = rand(1, 2, n, h, 8), rand(2, 2, n, g, 8), rand(3, 2, n, g, 8)
    seg = random_segments(rng, 2, n)
    fast = lambda q, k, v: attention.local_attention(q, k, v, seg, window, block)  # noqa: E731
    dense = lambda q, k, v: attention.dense_attention(q, k, v, attention.local_mask(seg, window))  # noqa: E731
    assert_same_values_and_grads(fast, dense, (q, k, v))


def test_local_mask_semantics():
    ids = jnp.asarray([[1, 5, 6, 2, 1, 7, 8, 9]])
    seg = attention.segments_from_eos(ids, 2)
    assert seg[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # EOS closes its own segment
    m = np.asarray(attention.local_mask(seg, 2))[0]
    assert m[3].tolist() == [False, False, True, True, False, False, False, False]
    assert m[4].tolist() == [False] * 4 + [True] + [False] * 3  # the byte after EOS sees itself only


def lengths_with_empty_patches(rng, b, n, p):
    out = np.zeros((b, p), np.int32)
    for r in range(b):
        lengths = patching.patch_lengths(None, rng.gamma(1.2, 1.2, n).astype(np.float32))
        lengths = lengths[: p - 1].tolist()
        lengths[-1] += n + 1 - sum(lengths)
        out[r, : len(lengths)] = lengths
    return jnp.asarray(out)


def test_encoder_cross_attention_matches_dense_with_empty_patches():
    rng = np.random.default_rng(0)
    b, n, p, k, h, d = 3, 40, 24, 2, 2, 8
    lengths = lengths_with_empty_patches(rng, b, n, p)  # padding patches and a virtual patch
    pid, _ = patching.patch_ids_from_lengths(lengths, n)
    q, kk, vv = rand(1, b, p, k, h, d), rand(2, b, n, h, d), rand(3, b, n, h, d)
    mask = attention.encoder_cross_mask(pid, p, k)
    fast = lambda q, kk, vv: attention.encoder_cross_attention(q, kk, vv, pid).reshape(b, p * k, h, d)  # noqa
    dense = lambda q, kk, vv: attention.dense_attention(q.reshape(b, p * k, h, d), kk, vv, mask)  # noqa
    assert_same_values_and_grads(fast, dense, (q, kk, vv))
    out = jax.jit(fast)(q, kk, vv)
    empty = np.asarray(mask).sum(-1) == 0
    assert empty.any() and np.all(np.asarray(out)[empty] == 0) and np.isfinite(out).all()


def test_decoder_cross_attention_matches_dense():
    rng = np.random.default_rng(1)
    b, n, p, k, h, d = 3, 40, 24, 3, 2, 8
    lengths = lengths_with_empty_patches(rng, b, n, p)
    _, did = patching.patch_ids_from_lengths(lengths, n)
    q, kk, vv = rand(1, b, n, h, d), rand(2, b, p, k, h, d), rand(3, b, p, k, h, d)
    mask = attention.decoder_cross_mask(did, p, k)
    fast = lambda q, kk, vv: attention.decoder_cross_attention(q, kk, vv, did)  # noqa: E731
    dense = lambda q, kk, vv: attention.dense_attention(  # noqa: E731
        q, kk.reshape(b, p * k, h, d), vv.reshape(b, p * k, h, d), mask)
    assert_same_values_and_grads(fast, dense, (q, kk, vv))


def test_max_pool_empty_patches_are_zero_and_grad_is_finite():
    h = rand(0, 1, 6, 4)
    pid = jnp.asarray([[0, 1, 1, 3, 3, 3]])  # patch 2 and 4 are empty
    pooled = attention.segment_max_pool(h, pid, 5)
    np.testing.assert_allclose(pooled[0, 1], jnp.max(h[0, 1:3], axis=0))
    assert np.all(np.asarray(pooled[0, 2]) == 0) and np.all(np.asarray(pooled[0, 4]) == 0)
    g = jax.grad(lambda x: attention.segment_max_pool(x, pid, 5).sum())(h)
    assert np.isfinite(g).all() and float(g.sum()) == pytest.approx(4 * 3)


def test_fully_masked_rows_give_zero_not_nan():
    q, k, v = rand(1, 1, 3, 2, 4), rand(2, 1, 5, 2, 4), rand(3, 1, 5, 2, 4)
    mask = jnp.zeros((1, 3, 5), bool).at[0, 1, 2].set(True)
    out = attention.dense_attention(q, k, v, mask)
    assert np.all(np.asarray(out[0, 0]) == 0) and np.all(np.asarray(out[0, 2]) == 0)
    g = jax.grad(lambda q: attention.dense_attention(q, k, v, mask).sum())(q)
    assert np.isfinite(g).all()


def test_gqa_matches_repeated_kv_heads():
    q, k, v = rand(1, 2, 7, 6, 4), rand(2, 2, 7, 2, 4), rand(3, 2, 7, 2, 4)
    mask = attention.causal_mask(2, 7)
    grouped = attention.dense_attention(q, k, v, mask)
    # query head i uses kv head i // 3 (consecutive groups, the reference's repeat_kv)
    rep = lambda x: jnp.repeat(x, 3, axis=2)  # noqa: E731
    np.testing.assert_allclose(grouped, attention.dense_attention(q, rep(k), rep(v), mask),
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Blocks against independent numpy formulas

def test_rmsnorm_and_rope_against_numpy():
    from flax import nnx
    x = np.asarray(rand(0, 2, 5, 8))
    norm = layers.RMSNorm(8, 1e-5, rngs=nnx.Rngs(0))
    norm.weight[...] = jnp.arange(1.0, 9.0)
    want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * np.arange(1.0, 9.0)
    np.testing.assert_allclose(norm(jnp.asarray(x)), want, rtol=1e-5)

    xr = np.asarray(rand(1, 1, 5, 2, 8), np.float64)
    pos = np.arange(5)
    want = np.empty_like(xr)
    for t in range(5):
        for m in range(4):
            ang = pos[t] * 10000.0 ** (-2 * m / 8)
            a, b = xr[0, t, :, 2 * m], xr[0, t, :, 2 * m + 1]
            want[0, t, :, 2 * m] = a * np.cos(ang) - b * np.sin(ang)
            want[0, t, :, 2 * m + 1] = a * np.sin(ang) + b * np.cos(ang)
    got = layers.rope(jnp.asarray(xr, jnp.float32), jnp.asarray(pos)[None], 10000.0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_ffn_hidden_rule_goldens():
    assert [layers.ffn_hidden_dim(d) for d in (768, 1024, 1280, 2048, 2560, 3072, 4096)] == [
        2048, 2816, 3584, 5632, 6912, 8192, 11008]


@pytest.mark.parametrize("n,chunk", [(70, 16), (64, 64), (33, 8)])
def test_chunked_causal_attention_matches_dense(n, chunk):
    rng = np.random.default_rng(n)
    q, k, v = rand(1, 2, n, 4, 8), rand(2, 2, n, 2, 8), rand(3, 2, n, 2, 8)
    seg = jnp.asarray(np.cumsum(rng.random((2, n)) < 0.1, axis=1))
    fast = lambda q, k, v: attention.causal_attention(q, k, v, seg, chunk)  # noqa: E731
    dense = lambda q, k, v: attention.dense_attention(q, k, v, attention.causal_mask(2, n, seg))  # noqa: E731
    assert_same_values_and_grads(fast, dense, (q, k, v))


def _map_lengths(fn, *args):
    return [e.params["length"] for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns
            if e.primitive.name == "scan"]


@pytest.mark.parametrize("kind", ["local", "dense_large"])
def test_batch_sharded_attention_loops_over_heads_not_rows(kind):
    """Under a batch-sharded mesh the per-slice loop runs over kv heads (and query blocks),
    keeping rows an array axis: a loop over the sharded batch made XLA gather the global batch
    onto every device. Same values and gradients as the single-device row loop."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from blt_jax.scale import sharding

    rng = np.random.default_rng(3)
    b, n, h, g, d = 8, 300 if kind == "local" else 1100, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, n, x, d)), jnp.float32) for x in (h, g, g))
    seg = jnp.asarray(np.cumsum(rng.random((b, n)) < 0.02, axis=1), jnp.int32)
    if kind == "local":
        f = lambda q, k, v, s: attention.local_attention(q, k, v, s, 64, 32)  # noqa: E731
        loop = g * -(-n // 32)
    else:  # scores of 8 x 4 x 1100 x 1100 pass _MAP_SCORES: one slice at a time
        f = lambda q, k, v, s: attention.dense_attention(  # noqa: E731
            q, k, v, attention.causal_mask(b, n, s))
        loop = g
    loss = lambda q, k, v, s: (f(q, k, v, s) ** 2).sum()  # noqa: E731
    assert _map_lengths(f, q, k, v, seg) == [b * g]
    ref, ref_grad = jax.jit(f)(q, k, v, seg), jax.jit(jax.grad(loss))(q, k, v, seg)
    mesh = sharding.make_mesh((1, 8, 1))
    with jax.set_mesh(mesh):
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("fsdp")))  # noqa: E731
        args = tuple(put(x) for x in (q, k, v, seg))
        assert _map_lengths(f, *args) == [loop]
        got, grad = jax.jit(f)(*args), jax.jit(jax.grad(loss))(*args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), atol=1e-4, rtol=1e-4)
