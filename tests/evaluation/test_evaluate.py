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
from blt_jax import config
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


def test_sliding_context_helps_or_equals_on_a_trained_pattern(models):
    # a longer guaranteed context can only be computed differently; both must count the same
    a = evaluate.score(models["entropy"], DOCS)
    b = evaluate.score(models["entropy"], DOCS, stride=4)
    assert a["bytes"] == b["bytes"] and a["bpb"] != b["bpb"]


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
    cfg = config.load_experiment("experiments/compare_tiny.py:ci")
    out = compare.run(cfg, tmp_path / "cmp", log=lambda *_: None)
    res = out["results"]
    assert set(res) == {"blt_entropy", "blt_space", "blt_static", "bpe"}
    flops = [r["summary"]["train_flops"] for r in res.values()]
    assert max(flops) / min(flops) < 1.35  # equal training FLOPs (to a step's granularity)
    assert len({r["val"]["bytes"] for r in res.values()}) == 1  # the same bytes for every model
    assert all(len(r["curve"]) >= 2 for r in res.values())
    assert (tmp_path / "cmp" / "bpb_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert "| bpe |" in (tmp_path / "cmp" / "compare.md").read_text()
