"""Incremental generation == the naive full-recompute loop (bytes and logits), on every patching
mode, across patch and window boundaries, EOS and batches; one latent step per closed patch."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import blt_jax
from blt_jax.text import bpe
from blt_jax.testing import oracles
from blt_jax import config
from blt_jax.pipeline import corpus
from blt_jax.inference import generate
from helpers import make_workdir

PROMPTS = [b"Hello world, this is", b"x", "naïve — text!".encode(), b""]


def tiny_blt(window=16, **patching):
    cfg = config.model_preset("blt_tiny")
    cfg.local_attention_window_len = window
    cfg.patching.update(patching)
    ent = config.model_preset("entropy_tiny")
    ent.window = window
    return cfg, ent


@pytest.fixture(scope="module")
def blt_model(tmp_path_factory):
    cfg, ent = tiny_blt()
    model = blt_jax.load(make_workdir(tmp_path_factory.mktemp("g") / "blt", "blt", cfg, ent))
    h = model.entropies(np.arange(1, 120)[None])
    model.median_entropy = float(np.median(h[:, 1:]))  # thresholds that give mixed patches
    return model


RULES = {
    "global": lambda m: dict(mode="global", threshold=m),
    "global_max4": lambda m: dict(mode="global", threshold=m + 0.1, max_patch_length=4),
    "monotonic": lambda m: dict(mode="monotonic", threshold=0.0),
    "combined": lambda m: dict(mode="combined", threshold=m, threshold_add=0.0),
    "space": lambda m: dict(mode="space"),
    "bpe": lambda m: dict(mode="bpe"),
    "byte": lambda m: dict(mode="byte"),
    "static": lambda m: dict(mode="static", patch_size=3),
}
FAST = {"global", "global_max4", "space"}


def compare(model, prompts, opts):
    res = model._generator.generate(prompts, opts, record_logits=True)
    for i, p in enumerate(prompts):
        new, logits, closed = oracles.naive_generate(model, p, opts, row=i, record_logits=True)
        assert res.new[i] == new, (i, res.new[i], new)
        got = res.logits[i, : len(logits)]
        np.testing.assert_allclose(got, np.stack(logits), atol=1e-4, rtol=0)
        assert res.latent_steps[i] == closed  # latent steps taken == patches closed
    return res


@pytest.mark.parametrize("mode", [pytest.param(m, marks=() if m in FAST else pytest.mark.slow)
                                  for m in RULES])
def test_incremental_equals_naive_on_every_patching_mode(blt_model, mode):
    rule = blt_model.patching_rule
    blt_model.patching_rule = rule.replace(**RULES[mode](blt_model.median_entropy))
    try:
        res = compare(blt_model, PROMPTS, generate.Options(max_new=24))
        # bpe patches only at delimiter id 3, which no byte prompt holds: equality is the check
        assert sum(res.latent_steps) > 0 or mode == "bpe"
    finally:
        blt_model.patching_rule = rule


def forced_steps(model, prompts, forced):
    """Prefill right-padded id prompts, then step the given ids (teacher forcing): per row,
    the logits before each step and the latent steps taken."""
    g = model._generator
    total = 256
    n = max(len(p) for p in prompts)
    prompt = np.zeros((len(prompts), n), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, : len(p)] = p
    e_params = model.entropy_model.params

    def make(params, e_p):
        m, e = g._models(params, e_p)
        return g.decoder(m, e, model.patching_rule, total)

    prefill = jax.jit(lambda pa, ep, x, n_b: make(pa, ep).prefill(x, n_b))
    step = jax.jit(lambda pa, ep, s, x: make(pa, ep).step(s, x))
    s = prefill(model.params, e_params, prompt, np.array([len(p) for p in prompts], np.int32))
    n0, logits = np.asarray(s.n_closed), []
    for k in range(len(forced[0])):
        logits.append(np.asarray(s.logits))
        s, _ = step(model.params, e_params, s, np.array([f[k] for f in forced], np.int32))
    return np.stack(logits, 1), np.asarray(s.n_closed) - n0


@pytest.mark.parametrize("mode", [pytest.param(m, marks=() if m in {"bpe", "global_max4"}
                                               else pytest.mark.slow) for m in RULES])
def test_forced_ids_with_delimiters_and_eos_equal_naive(blt_model, mode):
    """Ids no byte prompt holds (bpe delimiter 3, EOS 2) in the prompt and the continuation,
    rows of different lengths; and a direct causality check: two continuations that share a
    prefix give bitwise equal logits on it."""
    rule = blt_model.patching_rule
    blt_model.patching_rule = rule.replace(**RULES[mode](blt_model.median_entropy))
    try:
        prompts = [[1, 76, 109, 3], [1, 100, 3, 36, 3, 120, 2, 1, 90]]
        shared = [3, 3, 80, 2, 1, 3, 81, 82]
        forced = [shared + [3, 90, 91, 3], shared + [200, 3, 2, 7]]
        got, latent = forced_steps(blt_model, prompts, forced)
        for i, (p, f) in enumerate(zip(prompts, forced)):
            want = [oracles._naive_logits(blt_model, p + f[:k]) for k in range(len(f))]
            np.testing.assert_allclose(got[i], np.stack(want), atol=1e-4, rtol=0)
            closed = oracles._closed_patches(blt_model, p + f) - \
                oracles._closed_patches(blt_model, p)
            assert latent[i] == closed, (i, latent[i], closed)
        # same prompt, continuations differing after `shared`: the shared logits cannot move
        twin, _ = forced_steps(blt_model, [prompts[1]] * 2, [forced[0], forced[1]])
        np.testing.assert_array_equal(twin[0, : len(shared) + 1], twin[1, : len(shared) + 1])
    finally:
        blt_model.patching_rule = rule


def test_one_latent_step_per_closed_patch(blt_model):
    rule = blt_model.patching_rule
    blt_model.patching_rule = rule.replace(threshold=blt_model.median_entropy)
    try:
        res = blt_model._generator.generate([b"Counting latent steps"],
                                            generate.Options(max_new=30))
    finally:
        blt_model.patching_rule = rule
    assert res.latent_runs == res.latent_steps[0] > 0  # batch of one: the latent ran per patch
    assert res.latent_steps[0] < 30  # ... and not per byte


def test_sampling_and_eos_match_naive(blt_model):
    # Boost EOS so sampled generations end at it in some rows and not in others.
    params = blt_model.params
    kernel = params["local_decoder"]["output"]["kernel"]
    old = kernel.get_value()
    kernel.set_value(old.at[:, 2].add(0.35 * np.abs(np.asarray(old)).max()))
    blt_model.__dict__.pop("module", None)
    try:
        opts = generate.Options(max_new=40, temperature=1.0, top_k=50, top_p=0.9, seed=3)
        res = compare(blt_model, PROMPTS[:3], opts)
        assert any(len(n) < 40 for n in res.new)  # some row stopped at EOS
    finally:
        kernel.set_value(old)


def test_rows_do_not_leak_and_stop_strings(blt_model):
    opts = generate.Options(max_new=20)
    alone = blt_model.generate(PROMPTS[0], max_new_bytes=20)
    batch = blt_model.generate(PROMPTS, max_new_bytes=20)
    assert batch[0] == alone and len(batch) == len(PROMPTS)
    full = blt_model.generate(PROMPTS[2], max_new_bytes=20)
    stop = full[5:7]
    cut = blt_model.generate(PROMPTS[2], max_new_bytes=20, stop=[stop])
    assert cut == full[: full.find(stop)]
    del opts


def test_stream_chunks_join_to_generate(blt_model):
    full = blt_model.generate(PROMPTS[0], max_new_bytes=30)
    for stop in (None, full[9:12]):
        want = blt_model.generate(PROMPTS[0], max_new_bytes=30, stop=stop)
        pieces = list(blt_model.stream(PROMPTS[0], max_new_bytes=30, stop=stop, chunk=4))
        assert b"".join(pieces) == want and len(pieces) > 1
        assert blt_model.last_generation.new[0] == want
    assert stop not in b"".join(pieces)


def test_max_context_is_a_parameter(blt_model, tmp_path):
    small = blt_jax.load(blt_model.workdir, max_context=64)
    with pytest.raises(ValueError, match="exceed the context of 64"):
        small.generate(b"x" * 60, max_new_bytes=10)
    assert small.generate(b"x" * 40, max_new_bytes=10) == \
        blt_model.generate(b"x" * 40, max_new_bytes=10)
    with pytest.raises(ValueError, match="max_context"):
        blt_jax.load(blt_model.workdir, max_context=0)


def test_bad_inputs(blt_model):
    with pytest.raises(ValueError, match="max_new_bytes"):
        blt_model.generate("hi", max_new_bytes=0)
    with pytest.raises(ValueError, match="exceed the context"):
        blt_model.generate(b"x" * 5000, max_new_bytes=10)
    with pytest.raises(ValueError, match="top_p"):
        blt_model.generate("hi", max_new_bytes=3, temperature=1.0, top_p=1.5)
    assert isinstance(blt_model.generate(b"\xff\xfe invalid utf-8", max_new_bytes=4), bytes)


@pytest.mark.slow
def test_window_boundary_of_512_bytes(tmp_path):
    cfg, ent = tiny_blt(window=512, mode="space")
    model = blt_jax.load(make_workdir(tmp_path / "w512", "blt", cfg, ent))
    prompt = b"".join(corpus.documents("validation"))[:530]
    compare(model, [prompt, prompt[:515]], generate.Options(max_new=6))


def test_token_baseline_kv_cache_equals_naive(tmp_path):
    cfg = config.model_preset("bpe_tiny")
    work = make_workdir(tmp_path / "bpe", "bpe", cfg)
    bpe.train(corpus.documents("train")[:40], cfg.vocab_size).save(work)
    model = blt_jax.load(work)
    prompts = [b"def f(x):", b"The quick brown"]
    opts = generate.Options(max_new=30)
    res = model._generator.generate(prompts, opts, record_logits=True)
    for i, p in enumerate(prompts):
        new, logits, _ = oracles.naive_generate(model, p, opts, row=i, record_logits=True)
        assert res.new[i] == new and len(new) <= 30
        np.testing.assert_allclose(res.logits[i, : len(logits)], np.stack(logits), atol=1e-4)


def test_cli_generate_streams_utf8_safely(tmp_path, blt_model):
    cfg, ent = tiny_blt()
    work = make_workdir(tmp_path / "cli", "blt", cfg, ent)
    (tmp_path / "p.bin").write_bytes(b"\xe2\x82 split euro \xff")
    for args in (["--prompt-file", str(tmp_path / "p.bin"), "--stream"], ["--prompt", ""],
                 ["--prompt", "x", "--speculate", "--draft-len", "6", "--stream"]):
        r = subprocess.run([sys.executable, "-m", "blt_jax", "generate", "--workdir", str(work),
                            "--max-new-bytes", "12", *args], capture_output=True)
        assert r.returncode == 0, r.stderr
        r.stdout.decode("utf-8")  # valid UTF-8: no split characters printed
        assert b"latent steps" in r.stderr
        assert (b"bytes per verify pass" in r.stderr) == ("--speculate" in args)
    r = subprocess.run([sys.executable, "-m", "blt_jax", "generate", "--workdir", str(work),
                        "--prompt", "x", "--max-new-bytes", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "max_new_bytes" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "blt_jax", "generate", "--workdir", str(work),
                        "--prompt", "x", "--draft-len", "4"], capture_output=True, text=True)
    assert r.returncode == 2 and "--speculate" in r.stderr and "Traceback" not in r.stderr


def test_entropy_context_restarts_match_naive(blt_model):
    """entropy_context C: the entropy model's context restarts every C ids (the reference's
    8,192-id chunks); incremental decoding masks across chunks as the chunked scoring does."""
    model = blt_jax.load(blt_model.workdir, entropy_context=16)
    model.patching_rule = blt_model.patching_rule.replace(threshold=blt_model.median_entropy)
    prompt = b"Chunked entropy contexts restart"  # 33 ids: the prefill spans three chunks
    res = compare(model, [prompt, prompt[:7]], generate.Options(max_new=24))
    assert sum(res.latent_steps) > 0
    # and the restart changes the patching entropies (else this test could not fail)
    ids = model.codec.prompt(prompt)[None]
    assert not np.allclose(model.entropies(ids), blt_model.entropies(ids), atol=1e-3)
