"""Self-speculative BLT decoding (BLT-S) against the naive full-recompute oracle: greedy bytes on
every patching mode, the verify pass's logits for forced drafts (delimiters, EOS, rows of
different lengths), the acceptance rule's output distribution, batches, stops and streaming."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.inference import generate, sampling, speculative
from blt_jax.testing import oracles
from test_generate import FAST, PROMPTS, RULES, blt_model  # noqa: F401 (fixture)


def with_rule(model, mode):
    rule = model.patching_rule
    model.patching_rule = rule.replace(**RULES[mode](model.median_entropy))
    return rule


@pytest.mark.parametrize("mode", [pytest.param(m, marks=() if m in FAST | {"byte"}
                                               else pytest.mark.slow) for m in RULES])
def test_greedy_speculation_equals_naive_on_every_patching_mode(blt_model, mode):  # noqa: F811
    rule = with_rule(blt_model, mode)
    try:
        opts = generate.Options(max_new=24)
        naive = [oracles.naive_generate(blt_model, p, opts, row=i) for i, p in enumerate(PROMPTS)]
        for draft_len in (3, 8):  # 3: a verify pass holds 2 patches, byte patches overflow it
            res = blt_model._generator.generate(PROMPTS, opts._replace(draft_len=draft_len))
            for i, (new, _, closed) in enumerate(naive):
                assert res.new[i] == new, (draft_len, i, res.new[i], new)
                assert res.latent_steps[i] == closed  # committed patches == patches closed
            spec = res.speculation
            assert spec["rounds"] >= spec["verify_passes"] > 0 or mode == "bpe"
            assert spec["bytes_per_round"] >= 1.0
    finally:
        blt_model.patching_rule = rule


def verify_round(model, prompts, forced):
    """Prefill id prompts, run one speculation round drafting the forced ids -> the verify
    pass's logits at each drafted position (B, R, V) and the round's carry."""
    g = model._generator
    r = len(forced[0])
    total = 256
    n = max(len(p) for p in prompts)
    prompt = np.zeros((len(prompts), n), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, : len(p)] = p
    rnd = speculative.Round(r, max_closes=r + 2)  # room for a patch per byte
    forced = jnp.asarray(np.array(forced, np.int32))
    opts = generate.Options(max_new=64)

    def run(params, e_params, prompt, n_b):
        m, e = g._models(params, e_params)
        gen = g.decoder(m, e, model.patching_rule, total, r + 1)
        carry = generate.Carry(gen.prefill(prompt, n_b), jnp.zeros((), jnp.int32),
                               jnp.zeros((), jnp.int32), None, jnp.zeros(len(prompts), jnp.int32),
                               speculative.Stats.start(len(prompts), rnd))
        adv = functools.partial(generate.advance, opts=opts, stops=[], pad=gen.pad,
                                nbytes=jnp.asarray(g.codec.nbytes), eos=-1)
        return speculative.run_round(
            gen, carry, rnd, lambda lg, k, i: forced[:, i],
            lambda lg: sampling.probabilities(lg, 0.0, None, None),
            lambda c, x: adv(lambda s, y: (gen.step(s, y)[0], jnp.zeros((), jnp.int32)), c, x),
            0)

    c, logits = jax.jit(run)(model.params, model.entropy_model.params, prompt,
                             np.array([len(p) for p in prompts], np.int32))
    return np.asarray(logits), c


@pytest.mark.parametrize("mode", [pytest.param(m, marks=() if m in {"bpe", "global_max4", "byte"}
                                               else pytest.mark.slow) for m in RULES])
def test_verify_pass_logits_equal_naive_for_forced_drafts(blt_model, mode):  # noqa: F811
    """The verify pass computes, at every drafted position, what the naive forward over that
    prefix computes: delimiters (bpe id 3, closed late), EOS (2), rows of different lengths."""
    rule = with_rule(blt_model, mode)
    try:
        prompts = [[1, 76, 109, 3], [1, 100, 3, 36, 3, 120, 2, 1, 90]]
        forced = [[3, 3, 80, 2, 1, 3, 81, 82, 3, 90, 91, 3],
                  [3, 3, 80, 2, 1, 3, 81, 82, 200, 3, 2, 7]]
        got, carry = verify_round(blt_model, prompts, forced)
        for i, (p, f) in enumerate(zip(prompts, forced)):
            want = [oracles._naive_logits(blt_model, p + f[: k + 1]) for k in range(len(f))]
            np.testing.assert_allclose(got[i], np.stack(want), atol=1e-4, rtol=0)
        # the round commits the leading drafts greedy decoding would have chosen, then stops
        n_new = np.asarray(carry.state.n_new)
        for i, f in enumerate(forced):
            a = 1
            while a < len(f) and int(np.argmax(got[i, a - 1])) == f[a]:
                a += 1
            assert n_new[i] == a
    finally:
        blt_model.patching_rule = rule


def test_acceptance_rule_keeps_the_target_distribution():
    """Vocabulary-level check of the speculative rule: drafts from q, accepted with
    min(1, p/q), rejections redrawn from norm(max(p - q, 0)): the emitted id is distributed
    as p (chi-square over 40,000 draws), for overlapping and disjoint supports."""
    n = 40_000
    keys = jax.random.split(jax.random.key(0), 2 * n)
    for p, q in [([0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.4, 0.4]),
                 ([0.0, 0.0, 0.7, 0.3], [0.6, 0.4, 0.0, 0.0]),
                 ([0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25])]:
        p_, q_ = jnp.asarray(p), jnp.asarray(q)
        tok = jax.vmap(lambda k: jax.random.categorical(k, jnp.log(q_)))(keys[:n])
        a, forced = speculative.accept(
            jnp.broadcast_to(p_, (n, 1, 4)), jnp.broadcast_to(q_, (n, 1, 4)),
            tok[:, None].astype(jnp.int32), jnp.ones(n, jnp.int32), keys[n:])
        emitted = np.where(np.asarray(a) == 1, np.asarray(tok), np.asarray(forced))
        assert np.all((np.asarray(a) == 1) == (np.asarray(forced) == -1))
        counts = np.bincount(emitted, minlength=4)
        expected = n * np.asarray(p)
        nz = expected > 0
        assert np.all(counts[~nz] == 0)
        chi2 = float(np.sum((counts[nz] - expected[nz]) ** 2 / expected[nz]))
        assert chi2 < 16.3, (p, q, counts)  # 99.9% point of chi-square with <= 3 dof
    # greedy: one-hot distributions accept exactly the argmax and replace the first miss
    p = jax.nn.one_hot(jnp.array([[2, 1, 0]]), 4)
    a, forced = speculative.accept(p, jax.nn.one_hot(jnp.array([[2, 3, 0]]), 4),
                                   jnp.array([[2, 3, 0]]), jnp.array([3]), keys[:1])
    assert int(a[0]) == 1 and int(forced[0]) == 1


def test_sampled_speculation(blt_model):  # noqa: F811
    # top_k=1 sampling is deterministic: the speculative rule must give greedy's bytes
    greedy = blt_model.generate(PROMPTS[:2], max_new_bytes=20)
    one = blt_model.generate(PROMPTS[:2], max_new_bytes=20, temperature=1.0, top_k=1,
                             speculate=True, draft_len=6)
    assert one == greedy
    # sampled: rows of the requested length, reproducible for a seed, and seeds differ
    kw = dict(max_new_bytes=20, temperature=1.0, seed=5, speculate=True, draft_len=6)
    a = blt_model.generate(PROMPTS[:2], **kw)
    assert a == blt_model.generate(PROMPTS[:2], **kw)
    assert a != blt_model.generate(PROMPTS[:2], **{**kw, "seed": 6})
    assert all(len(x) <= 20 for x in a)


def test_speculation_batches_stops_and_streams(blt_model):  # noqa: F811
    kw = dict(max_new_bytes=30, speculate=True, draft_len=5)
    alone = [blt_model.generate(p, max_new_bytes=30) for p in PROMPTS]
    assert blt_model.generate(PROMPTS, **kw) == alone  # rows advance independently
    stop = alone[0][7:9]
    assert blt_model.generate(PROMPTS[0], stop=[stop], **kw) == alone[0][: alone[0].find(stop)]
    pieces = list(blt_model.stream(PROMPTS[0], chunk=2, **kw))
    assert b"".join(pieces) == alone[0] and len(pieces) > 1
    assert blt_model.last_generation.speculation["bytes_per_verify"] > 1


def test_speculation_bad_inputs(blt_model, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="draft_len"):
        blt_model.generate("hi", max_new_bytes=3, speculate=True, draft_len=0)
    with pytest.raises(ValueError, match="speculate"):
        blt_model.generate("hi", max_new_bytes=3, speculate="yes")
    with pytest.raises(ValueError, match="speculate"):
        blt_model._generator.generate([b"hi"], generate.Options(max_new=3, draft_len=4),
                                      record_logits=True)
