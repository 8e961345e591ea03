"""BLT model core: oracle equality, causality on every patching path, entropies, sharding,
memory growth, bad input, parameter/FLOP accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from blt_jax.model import blt, flops
from blt_jax.testing import oracles
from blt_jax import config
from blt_jax.text import patching, tokenizer
from blt_jax.scale import sharding
from blt_jax.model.transformer import Transformer, entropies

TEXTS = [b"The cat sat on the mat. ", b"def f(x):\n    return x + 1\n", "naïve café, 日本語! ".encode(),
         b"0123456789 abc ABC ... ???"]


def make_rows(b, n, seed=0, multi_doc=True):
    """Rows of BLT ids: documents (BOS ... EOS) packed back to back, cut to n."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(b):
        stream = []
        while len(stream) < n:
            doc = bytes(rng.choice(list(b"".join(TEXTS)), int(rng.integers(5, 30))))
            stream += tokenizer.encode(doc, eos=multi_doc and r % 2 == 0).tolist()
        rows.append(stream[:n])
    return np.asarray(rows, np.int32)


def space_lengths(ids, p_max):
    host = patching.patch_lengths(ids, mode="space")
    return oracles.fit_to_capacity(host, p_max)[0]


def build(cfg, seed=0):
    return nnx.split(blt.BLT(cfg, rngs=nnx.Rngs(seed)))


def tiny(**kw):
    cfg = config.model_preset("blt_tiny")
    for k, v in kw.items():
        if k == "patching":
            cfg.patching.update(v)
        else:
            cfg[k] = v
    return config.validate(cfg)


VARIANTS = {
    "default": {},
    "enc_all_layers_k1_proj": dict(n_layers_local_encoder=2, cross_attn_all_layers_encoder=True,
                                   cross_attn_all_layers_decoder=False, cross_attn_k=1),
    "gqa_block_causal": dict(n_kv_heads=1, n_kv_heads_global=2, global_attention="block_causal",
                             n_layers_local_decoder=3, cross_attn_k=3),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_paths_equal_dense_oracle(variant):
    cfg = tiny(**VARIANTS[variant])
    gdef, st = build(cfg)
    gdef_dense, _ = build(tiny(attention_impl="dense", **VARIANTS[variant]))
    ids = make_rows(3, 45, seed=1)
    lengths = space_lengths(ids, 30)  # more buffer than patches: zero padding patches
    fwd = lambda g: jax.jit(lambda s, i, ln: nnx.merge(g, s)(i, ln))  # noqa: E731
    fast, dense = fwd(gdef)(st, ids, lengths), fwd(gdef_dense)(st, ids, lengths)
    assert fast.shape == (3, 45, 260) and fast.dtype == jnp.float32
    np.testing.assert_allclose(fast, dense, atol=1e-4, rtol=1e-4)
    if variant != "default":
        return  # gradients once (they double the compile time)

    def loss(g):
        def f(s):
            logits = nnx.merge(g, s)(ids, lengths)
            return -jnp.mean(jax.nn.log_softmax(logits)[..., 7])
        return jax.jit(jax.grad(f))(st)
    for a, b in zip(jax.tree.leaves(loss(gdef)), jax.tree.leaves(loss(gdef_dense))):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-3)


def _scan_lengths(fn):
    """The lengths of the scans in fn's jaxpr (layer scans have the stack's depth)."""
    return [e.params["length"] for e in jax.make_jaxpr(fn)().jaxpr.eqns
            if e.primitive.name == "scan"]


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_equal_the_per_layer_loop(remat):
    """scan_layers (lax.scan over the layers' stacked parameters) computes what the unrolled
    loop does: BLT logits and every gradient, and a plain transformer's logits."""
    ids = make_rows(2, 40, seed=3)
    lengths = space_lengths(ids, 24)
    gdef, st = build(tiny(n_layers_global=5, remat=remat, scan_layers=True))
    gdef_loop, _ = build(tiny(n_layers_global=5, remat=remat, scan_layers=False))

    def loss(g):
        def f(s):
            return -jnp.mean(jax.nn.log_softmax(nnx.merge(g, s)(ids, lengths))[..., 9])
        return f
    assert 5 in _scan_lengths(lambda: loss(gdef)(st))
    assert 5 not in _scan_lengths(lambda: loss(gdef_loop)(st))
    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss(g)))(st) for g in (gdef, gdef_loop))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)
    tcfg = config.model_preset("entropy_tiny")
    tcfg.update(n_layers=5, scan_layers=True)
    model = Transformer(tcfg, rngs=nnx.Rngs(2))
    scanned = np.asarray(jax.jit(lambda i: model(i))(ids))
    model.cfg.scan_layers = False
    np.testing.assert_allclose(np.asarray(jax.jit(lambda i: model(i))(ids)), scanned,
                               atol=1e-5, rtol=1e-5)


def test_no_nan_with_empty_padding_and_virtual_patches():
    gdef, st = build(tiny())
    ids = make_rows(2, 20, seed=2)
    lengths = np.zeros((2, 16), np.int32)
    lengths[:, :4] = [1, 5, 14, 0]  # 1 + 5 + 14 = 20, then the empty virtual patch
    lengths[:, 3] = 1
    val, grads = jax.jit(jax.value_and_grad(lambda s: nnx.merge(gdef, s)(ids, lengths).sum()))(st)
    assert np.isfinite(float(val))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------------------------
# Causality: logits <= t never change when bytes > t change, on every patching path.

@pytest.fixture(scope="module")
def entropy_model():
    return nnx.split(Transformer(config.model_preset("entropy_tiny"), rngs=nnx.Rngs(5)))


def _rule(mode, median, **extra):
    base = dict(mode=mode, threshold=median, threshold_add=None, max_patch_length=None,
                patch_size=3)
    base.update(extra)
    return base


CAUSAL_RULES = {
    "global": lambda m: _rule("global", m),
    "global_max3": lambda m: _rule("global", m + 0.05, max_patch_length=3),
    "monotonic": lambda m: _rule("monotonic", 0.0),
    "combined": lambda m: _rule("combined", m, threshold_add=0.0),
    "space": lambda m: _rule("space", m),
    "bpe": lambda m: _rule("bpe", m),
    "byte": lambda m: _rule("byte", m),
    "static": lambda m: _rule("static", m),
}


def assert_causal(fn, ids, rng, trials=3, alphabet=tuple(range(4, 260)) + (1, 2), atol=1e-5):
    base = np.asarray(fn(ids))
    n = ids.shape[1]
    for _ in range(trials):
        t = int(rng.integers(0, n - 1))
        changed = ids.copy()
        changed[:, t + 1:] = rng.choice(alphabet, (ids.shape[0], n - t - 1))
        out = np.asarray(fn(changed))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=atol, rtol=0)
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 0  # the change was visible later


@pytest.mark.parametrize("mode", sorted(CAUSAL_RULES))
def test_blt_causality_with_in_jit_entropy_patching(mode, entropy_model):
    egdef, est = entropy_model
    gdef, st = build(tiny())
    ids = make_rows(4, 48, seed=3)  # rows 0, 2: several documents; rows 1, 3: one document
    if mode == "bpe":
        ids[ids == ord(" ") + 4] = tokenizer.BPE_DELIM_ID  # delimiters for the bpe rule
    h = np.asarray(jax.jit(lambda s, i: entropies(nnx.merge(egdef, s), i))(est, ids))
    rule = CAUSAL_RULES[mode](float(np.median(h[:, 1:])))
    p_max = 20  # some rows overflow: exercises the causal overflow policy in-graph

    @jax.jit
    def fwd(i):
        logits, buf = blt.forward_from_ids(nnx.merge(gdef, st), nnx.merge(egdef, est), i, p_max,
                                           rule)
        return logits, buf

    logits, buf = fwd(ids)
    assert np.asarray(buf.lengths).sum(-1).tolist() == [49] * 4
    n_patches = (np.asarray(buf.lengths) > 0).sum(-1)
    assert (n_patches > 2).all() and (n_patches < 49).any() or mode == "byte"
    assert_causal(lambda i: fwd(i)[0], ids, np.random.default_rng(len(mode)))


def test_token_baseline_and_entropy_model_are_causal(entropy_model):
    rng = np.random.default_rng(0)
    egdef, est = entropy_model
    ids = make_rows(2, 40, seed=4)
    assert_causal(jax.jit(lambda i: nnx.merge(egdef, est)(i)), ids, rng)
    bpe = nnx.split(Transformer(config.model_preset("bpe_tiny"), rngs=nnx.Rngs(0)))
    tok = rng.integers(0, 512, (2, 40)).astype(np.int32)
    assert_causal(jax.jit(lambda i: nnx.merge(*bpe)(i)), tok, rng, alphabet=tuple(range(512)))
    # the query-chunked path (context longer than attention_chunk) as well
    cfg = config.model_preset("bpe_tiny")
    cfg.attention_chunk = 16
    chunked = Transformer(cfg, rngs=nnx.Rngs(0))
    g2, s2 = nnx.split(chunked)
    np.testing.assert_allclose(jax.jit(lambda i: nnx.merge(g2, s2)(i))(tok),
                               jax.jit(lambda i: nnx.merge(*bpe)(i))(tok), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Entropies

def test_entropies_chunked_equal_full_row_and_rows_do_not_leak(entropy_model):
    egdef, est = entropy_model
    cfg = config.model_preset("entropy_tiny")
    cfg.window = 8  # receptive field 2 layers x 7 = 14 bytes, so chunks of 16 really cut context
    g, s = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
    ids = make_rows(3, 70, seed=5)
    full = jax.jit(lambda i: entropies(nnx.merge(g, s), i))(ids)
    chunked = jax.jit(lambda i: entropies(nnx.merge(g, s), i, chunk=16))(ids)
    np.testing.assert_allclose(chunked, full, atol=2e-5)
    # too little context would change them: the overlap really matters
    naive = jnp.concatenate([jax.jit(lambda i: entropies(nnx.merge(g, s), i))(ids[:, a:a + 16])
                             for a in range(0, 70, 16)], axis=1)
    assert float(jnp.abs(naive - full).max()) > 1e-3
    # per-row: a row's entropies do not depend on the other rows in the batch
    alone = jax.jit(lambda i: entropies(nnx.merge(g, s), i))(ids[1:2])
    np.testing.assert_allclose(alone[0], full[1], atol=2e-5)
    h = np.asarray(full)
    assert h.dtype == np.float32 and (h >= 0).all() and (h <= np.log(260) + 1e-4).all()


# ---------------------------------------------------------------------------------------------
# Sharding: 8 fake devices, several meshes; forward and gradients equal the single-device run

@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (4, 1, 2)])
def test_sharded_forward_and_grads_equal_unsharded(mesh_shape):
    assert jax.device_count() == 8
    # (2, 2, 2) runs the latent as a scan over stacked layers: all-gathers inside the loop
    gdef, st = build(tiny(encoder_hash_byte_group_vocab=1024, scan_layers=mesh_shape == (2, 2, 2)))
    ids = make_rows(8, 32, seed=6)
    lengths = space_lengths(ids, 16)

    def loss(s, i, ln):
        logits = nnx.merge(gdef, s)(i, ln)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]),
                                             i[:, 1:, None], axis=-1))

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss))(st, ids, lengths)
    mesh = sharding.make_mesh(mesh_shape)
    shardings = sharding.state_shardings(st, mesh)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    with jax.set_mesh(mesh):
        st_s = jax.device_put(st, shardings)
        got_loss, got_grads = jax.jit(jax.value_and_grad(loss))(
            st_s, jax.device_put(ids, batch), jax.device_put(lengths, batch))
        jaxpr = str(jax.make_jaxpr(loss)(st_s, jax.device_put(ids, batch),
                                         jax.device_put(lengths, batch)))
    # batch-sharded ids meet column-sharded tables only when fsdp > 1: then the n-gram lookup
    # runs shard-local (ids gathered, one all-to-all), never as a global-batch gather
    assert ("all_to_all" in jaxpr) == (mesh.shape["fsdp"] > 1)
    table = st_s["local_encoder"]["hash_embeddings"]["embedding"]
    # hash-table columns are split over fsdp (rows stay whole: gathers are shard-local)
    assert tuple(table.get_value().sharding.spec)[:2] == (None, "fsdp")
    if mesh.shape["fsdp"] > 1:
        starts = {s.index[1].start for s in table.get_value().addressable_shards}
        assert len(starts) == mesh.shape["fsdp"]
    np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Memory: compiled temporaries grow ~linearly with bytes per row

@pytest.mark.slow
def test_forward_memory_grows_linearly_in_bytes():
    cfg = config.model_preset("blt_bench")
    cfg.update(dict(n_layers_global=2, n_layers_local_decoder=2, dim_global=256,
                    dim_local_encoder=128, dim_local_decoder=128, cross_attn_k=2))
    gdef, abstract = nnx.split(nnx.eval_shape(lambda: blt.BLT(cfg, rngs=nnx.Rngs(0))))
    temps = {}
    for n in (4096, 8192, 16384):
        ids = jax.ShapeDtypeStruct((1, n), jnp.int32)
        lengths = jax.ShapeDtypeStruct((1, n // 4), jnp.int32)
        compiled = jax.jit(lambda s, i, ln: nnx.merge(gdef, s)(i, ln)).lower(
            abstract, ids, lengths).compile()
        temps[n] = compiled.memory_analysis().temp_size_in_bytes
    print({n: f"{t / 2**20:.1f} MiB" for n, t in temps.items()})
    assert temps[16384] / temps[4096] < 4 * 1.25  # linear: 4x bytes -> ~4x memory (not 16x)
    assert temps[16384] / temps[8192] < 2 * 1.25


# ---------------------------------------------------------------------------------------------
# Bad input and config errors

def test_bad_inputs_raise_clear_errors():
    gdef, st = build(tiny())
    model = nnx.merge(gdef, st)
    ids = make_rows(1, 10)
    good = np.array([[1, 4, 6, 0]])
    with pytest.raises(ValueError, match="ids: must lie in"):
        model(np.full((1, 10), 300), good)
    with pytest.raises(ValueError, match="sums to 10, must be N \\+ 1 = 11"):
        model(ids, np.array([[1, 4, 5, 0]]))
    with pytest.raises(ValueError, match="first patch"):
        model(ids, np.array([[2, 4, 5, 0]]))
    with pytest.raises(ValueError, match="P_max must be >= 2"):
        model(ids, np.array([[11]]))
    with pytest.raises(ValueError, match="ids: expected shape"):
        model(ids[0], good)
    for bad, match in [(dict(dim_local_decoder=64), "dim_local_decoder"),
                       (dict(cross_attn_nheads=3), "cross_attn_nheads"),
                       (dict(n_heads_global=3), "global"),
                       (dict(dim_global=32, cross_attn_k=2), "cross_attn_k"),
                       (dict(global_attention="full"), "global_attention"),
                       (dict(patching=dict(mode="entropy")), "mode")]:
        with pytest.raises(ValueError, match=match):
            tiny(**bad)


# ---------------------------------------------------------------------------------------------
# Accounting (spec §12.4) and FLOPs (§13.2)

def test_param_counts_of_the_1b_shape_match_spec():
    cfg = config.model_preset("blt_1b")
    counts = flops.param_counts(lambda: blt.BLT(cfg, rngs=nnx.Rngs(0)))
    assert counts["hash_embedding"] == 6 * 500002 * 1024  # 3.07B
    non_hash = counts["total"] - counts["hash_embedding"]
    assert abs(non_hash - 1.46e9) / 1.46e9 < 0.01
    assert abs(counts["total"] - 4.5e9) / 4.5e9 < 0.01
    state = nnx.state(nnx.eval_shape(lambda: blt.BLT(cfg, rngs=nnx.Rngs(0))))
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    table = state["local_encoder"]["hash_embeddings"]["embedding"].get_value()
    assert table.shape[0] % 4096 == 0 and table.shape[0] - 6 * 500002 < 4096  # shard padding
    assert abs(size(state["global_transformer"]) - 25 * 51.4e6) / 1.285e9 < 0.01
    assert abs(size(state["local_decoder"]) - 158e6) / 158e6 < 0.01


def test_flop_formulas():
    cfg = config.model_preset("blt_tiny")
    a = flops.blt_flops_per_byte(cfg, 4.0, 256)
    b = flops.blt_flops_per_byte(cfg, 8.0, 256)
    # global work per byte halves (its context in patches halves too) when patches double
    f_g = layers_ffn = 3 * 64 * 2 * 64 * 2  # noqa: F841 (documentation of the terms below)
    per_patch = lambda n_p: 2 * (2 * 64 * (2 * 64 + 2 * 64) + 2 * 3 * 64 * 192 + 2 * 2 * (256 / n_p) * 64)  # noqa
    assert a["global"] == pytest.approx(per_patch(4.0) / 4.0)
    assert b["global"] == pytest.approx(per_patch(8.0) / 8.0)
    assert a["encoder"] == b["encoder"] and a["decoder"] == b["decoder"]
    assert a["total"] > b["total"]
    ent = config.model_preset("entropy_tiny")
    c = flops.blt_flops_per_byte(cfg, 4.0, 256, entropy_cfg=ent)
    assert c["total"] == pytest.approx(a["total"] + flops.transformer_flops_per_token(ent, 256))
