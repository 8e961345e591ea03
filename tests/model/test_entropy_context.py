"""Entropy context reset (the reference scores independent 8,192-id chunks): every patching
path against a slow oracle that runs the entropy model on each chunk separately."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import blt_jax
from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.model import factory, kinds
from blt_jax.text import patching
from blt_jax.tools import reference_import as ri
from conftest import DATA
from helpers import make_workdir

REF, REF_ENT = DATA / "reference_tiny", DATA / "reference_tiny_entropy"


def tiny_entropy(context, window=16, dim=32):
    cfg = config.transformer_config(dim=dim, n_layers=2, n_heads=2, window=window,
                                    multiple_of=16)
    cfg.entropy_context = context
    return cfg


def byte_rows(b, n, seed=0):
    ids = np.random.default_rng(seed).integers(4, 260, (b, n)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 50::97] = 2  # a few EOS: attention segments restart inside chunks too
    return ids


def entropy64(logits):
    """-Σ p log p in float64, written apart from the implementation."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(-1)


def oracle(model, ids, every):
    """Each `every`-id chunk of each row scored alone (positions from 0), concatenated."""
    call, rows = jax.jit(lambda x: model(x)), []
    for row in ids:
        pieces = [entropy64(call(jnp.asarray(row[None, s:s + every])))[0]
                  for s in range(0, len(row), every)]
        rows.append(np.concatenate(pieces))
    return np.stack(rows)


def test_reset_every_64_ids_matches_chunk_by_chunk_oracle():
    model = factory.build_model(tiny_entropy(64), seed=3)
    ids = byte_rows(2, 200)  # 3 full chunks and a 8-id tail (padded inside, cut off)
    got = np.asarray(kinds.entropies(model, jnp.asarray(ids)))
    np.testing.assert_allclose(got, oracle(model, ids, 64), atol=2e-5, rtol=0)
    fn = np.asarray(factory.entropy_fn(factory.Weights(*_split(model), model.cfg))(ids))
    np.testing.assert_allclose(fn, got, atol=1e-5, rtol=0)  # the jitted host path too
    full = np.asarray(kinds.entropies(factory.build_model(tiny_entropy(0), seed=3),
                                      jnp.asarray(ids)))
    np.testing.assert_allclose(full[:, :64], got[:, :64], atol=1e-5)  # first chunk: same
    assert np.abs(full[:, 64:70] - got[:, 64:70]).min() > 1e-4  # after a reset: context lost


def _split(model):
    from flax import nnx
    return nnx.split(model)


def test_reset_every_8192_ids_as_the_reference():
    model = factory.build_model(tiny_entropy(8192, window=512, dim=16), seed=1)
    ids = byte_rows(1, 8192 + 300, seed=2)
    got = np.asarray(jax.jit(kinds.entropies)(model, jnp.asarray(ids)))
    np.testing.assert_allclose(got, oracle(model, ids, 8192), atol=2e-5, rtol=0)


def test_blt_patches_in_graph_use_the_reset():
    patcher = factory.build_model(tiny_entropy(64), seed=4)
    ids = byte_rows(2, 150, seed=5)
    h = oracle(patcher, ids, 64)
    rule = patching.as_rule(mode="global", threshold=float(np.median(h)))
    buf = kinds.KINDS["blt"].patches({"ids": jnp.asarray(ids)}, rule, patcher, 151)
    want = patching.patch_lengths(ids, h, rule)
    got = np.asarray(buf.lengths)
    for r in range(2):
        np.testing.assert_array_equal(got[r][got[r] > 0], want[r][want[r] > 0])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctx") / "blt"
    ri.import_reference(str(REF), str(out), str(REF_ENT), entropy_context=64)
    return out


def test_import_records_the_context_and_load_overrides_it(imported):
    stored = json.loads((imported / "entropy_model" / "config.json").read_text())
    assert stored["model"]["entropy_context"] == 64
    ids = byte_rows(2, 150, seed=6)
    reset = blt_jax.load(imported)
    never = blt_jax.load(imported, entropy_context=0)
    assert never.entropy_model.model_config.entropy_context == 0
    h = reset.entropies(ids)
    np.testing.assert_allclose(h, oracle(never.entropy_model.module, ids, 64), atol=2e-5)
    assert np.abs(h[:, 64:] - never.entropies(ids)[:, 64:]).max() > 1e-3
    np.testing.assert_array_equal(reset.patch_lengths(ids),
                                  patching.patch_lengths(ids, h, reset.patching_rule))
    again = blt_jax.load(imported, entropy_context=32)
    np.testing.assert_allclose(again.entropies(ids), oracle(never.entropy_model.module, ids, 32),
                               atol=2e-5)


def test_default_import_never_resets(tmp_path):
    out = ri.import_reference(str(REF), str(tmp_path / "w"), str(REF_ENT))
    stored = json.loads((tmp_path / "w" / "entropy_model" / "config.json").read_text())
    assert stored["model"]["entropy_context"] == 0
    assert blt_jax.load(out).entropy_model.model_config.entropy_context == 0


def test_cli_flag_and_bad_values(tmp_path):
    from blt_jax.tools import cli
    out = tmp_path / "w"
    assert cli.main(["import-reference", "--blt", str(REF), "--entropy", str(REF_ENT),
                     "--out", str(out), "--entropy-context", "8192"]) == 0
    stored = json.loads((out / "entropy_model" / "config.json").read_text())
    assert stored["model"]["entropy_context"] == 8192
    for bad in (-1, True, 2.5):
        with pytest.raises(UserError, match="entropy_context"):
            blt_jax.load(out, entropy_context=bad)
        with pytest.raises(UserError, match="entropy_context"):
            ri.import_reference(str(REF), str(tmp_path / "x"), str(REF_ENT), entropy_context=bad)
    bpe = make_workdir(tmp_path / "bpe", "bpe", config.model_preset("bpe_tiny"))
    with pytest.raises(UserError, match="computes no entropies"):
        blt_jax.load(bpe, entropy_context=64)
