"""The fair BPB harness, threshold sweep, robustness suite and figures, on untrained models."""

import json
import math
import random

import numpy as np
import pytest

import blt_jax
from blt_jax.text import bpe
from blt_jax.testing import oracles
from blt_jax.tools import cli
from blt_jax import config, overrides
from blt_jax.pipeline import corpus
from blt_jax.evaluation import evaluate, figures, robustness, sweep
from helpers import make_workdir

DOCS = [b"First document: plain ASCII text.", "Second — naïve café, 日本語 🙂".encode(),
        b"zxqvj wwkk never-seen byte soup \x7f\x01!"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    cfg = config.model_preset("blt_tiny")
    cfg.patching.threshold = 5.0
    blt = blt_jax.load(make_workdir(root / "blt", "blt", cfg, config.model_preset("entropy_tiny")))
    bcfg = config.model_preset("bpe_tiny")
    work = make_workdir(root / "bpe", "bpe", bcfg)
    bpe.train(corpus.documents("train")[:30], bcfg.vocab_size).save(work)
    base = blt_jax.load(work)
    for m in (blt, base, blt.entropy_model):
        m.config.data.update(seq_len=24, eval_batch_size=4)
    return {"blt": blt, "bpe": base, "entropy": blt.entropy_model}


def test_every_byte_counted_once_for_every_model(models):
    n_bytes = sum(len(d) + 2 for d in DOCS) - 1  # each stream position after the first BOS
    for name, model in models.items():
        for stride in (None, 8):
            r = evaluate.score(model, DOCS, stride=stride)
            assert r["bytes"] == n_bytes, (name, stride, r["bytes"])
            assert r["bpb"] > 0 and math.isclose(r["nats"], r["bpb"] * n_bytes * math.log(2),
                                                 rel_tol=1e-6)


def test_harness_equals_hand_sum(models):
    for name, model in models.items():
        got = evaluate.score(model, DOCS)["bpb"]
        assert got == pytest.approx(oracles.hand_bpb(model, DOCS, 24), rel=2e-5), name


def test_sliding_windows_score_each_target_once():
    ids = np.arange(4, 61)
    seen = []
    for b in evaluate.windows(ids, None, 16, 5, batch_size=3):
        seen += b["targets"][b["mask"]].tolist()
    assert seen == ids[1:].tolist()
    with pytest.raises(ValueError, match="stride"):
        next(evaluate.windows(ids, None, 16, 17, 1))


def check_rows(ids, nb, budget, stride, in_bytes=True):
    """Independent checks of the windows over a stream whose ids name their own positions."""
    cum = np.concatenate([[0], np.cumsum(nb)])
    seen, first = [], True
    for b in evaluate.windows(ids, nb, budget, stride, 4, in_bytes=in_bytes):
        for row, tgt, mask in zip(b["ids"], b["targets"], b["mask"]):
            k = int((tgt > 0).sum())  # inputs with a target (the last target also sits in row)
            s = int(row[0]) - 1  # stream position of the first input
            assert (row[:k] == ids[s: s + k]).all() and (tgt[:k] == ids[s + 1: s + k + 1]).all()
            size = cum[s + k] - cum[s]  # input bytes (ids' own count when not in_bytes)
            limit = budget if in_bytes else None
            assert limit is None or size <= limit or k == 1
            if in_bytes and s + k < len(ids) - 1 and stride is None:
                assert size + nb[s + k] > budget  # maximal: the next id would not fit
            for j in np.flatnonzero(mask):
                ctx = cum[s + j + 1] - cum[s]  # bytes seen by the target at input j
                assert first or ctx >= budget - (stride or budget) - nb.max() + 1 or s == 0
                seen.append(int(tgt[j]))
            first = False
    assert seen == ids[1:].tolist()  # every target once, in order


@pytest.mark.parametrize("budget,stride", [(20, None), (20, 7), (9, 9), (6, 1), (64, 30)])
def test_byte_budget_windows(budget, stride):
    rng = np.random.default_rng(budget * 31 + (stride or 0))
    ids = np.arange(1, 301)
    check_rows(ids, rng.integers(1, 8, len(ids)), budget, stride)  # token-like byte counts
    check_rows(ids, np.ones(len(ids), np.int64), budget, stride)  # a byte model


def test_sliding_context_guarantee_and_scoring(models):
    # each later window re-reads N - S earlier ids: the scored targets' context is at least that
    ids = np.arange(1, 200)
    for b in evaluate.windows(ids, None, 16, 4, batch_size=2):
        for row, mask in zip(b["ids"], b["mask"]):
            if row[0] != 1:
                assert np.flatnonzero(mask).min() >= 16 - 4
    # and the harness sums exactly those targets' log-probs (hand sum over the same windows)
    m = models["entropy"]
    got = evaluate.score(m, DOCS, stride=4)
    ids, _ = evaluate.stream(m, DOCS)
    nats = 0.0
    for b in evaluate.windows(ids, None, 24, 4, 1):
        logits = m.logits(b["ids"]).astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nats -= (np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0] * b["mask"]).sum()
    assert got["nats"] == pytest.approx(nats, rel=1e-4)
    assert got["bytes"] == evaluate.score(m, DOCS)["bytes"]


BAD_UTF8 = [b"valid start \xff\xfe then \xc3( broken \xe2\x82 tail", b"\x80\x81\x82"]


def test_same_byte_context_and_bytes_for_every_model(models):
    docs = DOCS + BAD_UTF8  # invalid UTF-8 must count byte for byte for BPE too
    n_bytes = sum(len(d) + 2 for d in docs) - 1
    res = {n: evaluate.score(m, docs, context_bytes=20) for n, m in models.items()}
    for name, r in res.items():
        assert r["bytes"] == n_bytes, (name, r["bytes"])
        assert r["context_bytes"] == 20 and r["context_unit"] == "bytes"
        assert r["max_context_bytes"] <= 20 and r["mean_context_bytes"] > 5
    # the byte model's windows are exactly 20 bytes: its max context is the budget itself
    assert res["entropy"]["max_context_bytes"] == 20
    from blt_jax.evaluation import compare
    fair = compare.check_fair(res)
    assert fair["scored_bytes"] == n_bytes and fair["context_bytes"] == 20
    # the BPE result is the hand sum over its byte-budget windows
    m = models["bpe"]
    ids, nb = evaluate.stream(m, docs)
    # its FLOPs/byte charge attention over the tokens 20 bytes hold, not the padded window
    from blt_jax.model import flops
    per_token = nb.sum() / len(ids)
    want = flops.transformer_flops_per_token(m.model_config, 20 / per_token) / per_token
    assert res["bpe"]["flops_per_byte"] == pytest.approx(want, rel=1e-9)
    assert res["bpe"]["bytes_per_token"] == pytest.approx(per_token)
    nats = 0.0
    for b in evaluate.windows(ids, nb, 20, None, 1, in_bytes=True):
        logits = m.logits(b["ids"]).astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nats -= (np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0] * b["mask"]).sum()
    assert res["bpe"]["nats"] == pytest.approx(nats, rel=1e-4)


def test_compare_refuses_unequal_bytes_or_context():
    from blt_jax.evaluation import compare
    ok = dict(bytes=100.0, context_bytes=20, max_context_bytes=20, mean_context_bytes=10.0)
    with pytest.raises(RuntimeError, match="different byte counts"):
        compare.check_fair({"a": ok, "b": dict(ok, bytes=102.0)})
    with pytest.raises(RuntimeError, match="different byte contexts"):
        compare.check_fair({"a": ok, "b": dict(ok, context_bytes=None)})
    with pytest.raises(RuntimeError, match="beyond"):
        compare.check_fair({"a": ok, "b": dict(ok, max_context_bytes=21)})


def test_flops_per_byte_fields(models):
    r = evaluate.score(models["blt"], DOCS)
    assert r["flops_per_byte_with_entropy"] > r["flops_per_byte"] > 0
    assert 1 <= r["bytes_per_patch"] <= 25
    t = evaluate.score(models["bpe"], DOCS)
    assert t["bytes_per_token"] > 1 and t["flops_per_byte"] > 0


def test_sweep_larger_patches_fewer_flops(models, tmp_path):
    rows = sweep.run(models["blt"].workdir, thresholds=[4.9, 5.1, 5.3], max_batches=2,
                     plot=str(tmp_path / "sweep.png"))
    rows.sort(key=lambda r: r["threshold"])
    assert [r["bytes_per_patch"] for r in rows] == sorted(r["bytes_per_patch"] for r in rows)
    assert rows[0]["flops_per_byte"] > rows[-1]["flops_per_byte"]
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "threshold" in sweep.format_rows(rows)
    (aimed,) = sweep.run(models["blt"].workdir, targets=[3.0], max_batches=2)  # calibrated
    assert aimed["target_bytes_per_patch"] == 3.0 and 2.0 < aimed["bytes_per_patch"] < 4.5


def test_noise_transforms_are_seeded_and_do_what_they_say():
    text = b"The quick brown fox jumps over the lazy dog."
    assert robustness.antspeak(text, 0, random.Random(0)) == b" ".join(
        bytes([c]) for c in text.upper())
    assert robustness.upper(text, 0, random.Random(0)) == text.upper()
    dropped = robustness.noised([text], "drop", rate=0.3, seed=1)[0]
    assert len(dropped) < len(text) and dropped == robustness.noised([text], "drop", 0.3, 1)[0]
    rep = robustness.noised([text], "repeat", rate=0.3, seed=1)[0]
    assert len(rep) > len(text) and rep.replace(b"", b"") != text
    rc = robustness.noised([text], "random_case", rate=1.0, seed=2)[0]
    assert rc.lower() == text.lower() and rc != text
    with pytest.raises(ValueError, match="unknown"):
        robustness.noised([text], "shout")


def test_noise_and_probe_tables(models):
    rows = robustness.noise_table({"blt": models["blt"], "bpe": models["bpe"]}, DOCS[:2],
                                  noises=("upper", "drop"))
    assert {r["model"] for r in rows} == {"blt", "bpe"}
    for r in rows:
        assert r["clean"] > 0 and r["upper"] > 0 and "degradation_pct" in r
    words = robustness.words_from(corpus.documents("validation"), 6)
    items = robustness.probe_items(words)
    assert all(len(v) >= 5 for v in items.values())
    probe = robustness.probe_table({"bpe": models["bpe"]}, {k: v[:3] for k, v in items.items()})
    assert 0.0 <= probe[0]["spelling"] <= 1.0


def test_loglik_of_continuation_is_conditional(models):
    # log p(c | p) must equal log p(p + c) - log p(p); a by-hand check through logits
    m = models["entropy"]
    got = robustness.loglik(m, ["ab"], ["cd"])[0]
    from blt_jax.text import tokenizer
    ids = tokenizer.encode("abcd", eos=False)
    logits = m.logits(ids[None])[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = logp[2, ids[3]] + logp[3, ids[4]]
    assert got == pytest.approx(want, abs=1e-4)


def test_eval_cli_json_and_entropy_figure(models, tmp_path, capsys):
    work = models["blt"].workdir
    assert cli.main(["eval", "--workdir", str(work), "--max-batches", "1", "--stride", "128"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["context_policy"] == "sliding/128" and out["bytes"] > 0
    png = tmp_path / "fig.png"
    assert cli.main(["patch", "--workdir", str(work), "--text", "Hello, world!", "--plot",
                     str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    # an entropy-model workdir alone patches by entropy (global rule), never silently by spaces
    ent = models["entropy"].workdir
    assert cli.main(["patch", "--workdir", str(ent), "--text", "Hello, world!"]) == 0
    assert "mode global" in capsys.readouterr().out
    path = figures.bpb_vs_flops({"a": [(1e9, 3.0), (2e9, 2.5)]}, str(tmp_path / "c.png"))
    assert pathlib_exists(path)


def pathlib_exists(p):
    import pathlib
    return pathlib.Path(p).stat().st_size > 1000


@pytest.mark.slow
def test_compare_tiny_reduced(tmp_path):
    from blt_jax.evaluation import compare
    cfg = overrides.load_experiment("experiments/compare_tiny.py:ci")
    out = compare.run(cfg, tmp_path / "cmp", log=lambda *_: None)
    res = out["results"]
    assert set(res) == {"blt_entropy", "blt_space", "blt_static", "bpe"}
    flops = [r["summary"]["train_flops"] for r in res.values()]
    assert max(flops) / min(flops) < 1.35  # equal training FLOPs (to a step's granularity)
    assert len({r["val"]["bytes"] for r in res.values()}) == 1  # the same bytes for every model
    fair = out["fairness"]
    assert {r["val"]["context_bytes"] for r in res.values()} == {fair["context_bytes"]}
    assert fair["scored_bytes"] == res["bpe"]["val"]["bytes"] and "curve_policy" in out
    assert all(len(r["curve"]) >= 2 for r in res.values())
    assert (tmp_path / "cmp" / "bpb_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert "| bpe |" in (tmp_path / "cmp" / "compare.md").read_text()
