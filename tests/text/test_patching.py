import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.text import patching
from blt_jax.testing import oracles

THETA = patching.DEFAULT_THRESHOLD


# ---------------------------------------------------------------------------------------------
# An independent oracle: spec §3 transcribed position by position with Python loops.

def naive_lengths(ids, h, *, mode, threshold=THETA, threshold_add=None, include_next=True,
                  max_patch_length=None, patch_size=4):
    n = len(ids) if ids is not None else len(h)
    t = n + 1 if include_next else n

    def spacelike(i):
        b = int(ids[i]) - 4
        return not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or 128 <= b < 192)

    starts = []
    for p in range(t):
        if mode == "global":
            s = p < 2 or h[p - 1] > threshold
        elif mode == "monotonic":
            s = p < 3 or h[p - 1] - h[p - 2] > threshold
        elif mode == "combined":
            s = p < 3 or (p >= 4 and h[p - 1] > threshold and h[p - 1] - h[p - 2] > threshold_add)
        elif mode == "space":
            m = p - 1
            s = p < 2 or ids[m] < 4 or (spacelike(m) and not spacelike(m - 1))
        elif mode == "bpe":  # spec §3.7: starts {0,1} ∪ {y+1 : ids[y] == 3, y < L-1}
            y = p - 1
            s = p < 2 or (ids[y] == 3 and y < n - 1)
        elif mode == "bpe_incremental":
            s = p < 2 or ids[p - 1] == 3
        elif mode == "byte":
            s = True
        elif mode == "static":
            s = p == 0 or (p - 1) % patch_size == 0
        if s:
            starts.append(p)
    lengths = [b - a for a, b in zip(starts, starts[1:] + [t])]
    if max_patch_length:
        split = []
        for length in lengths:
            while length > max_patch_length:
                split.append(max_patch_length)
                length -= max_patch_length
            split.append(length)
        lengths = split
    return lengths


def random_row(rng, n):
    # Mix of low/high entropies around θ, text-like ids with spaces, specials and delimiters.
    h = rng.gamma(1.2, 1.2, n).astype(np.float32)
    alphabet = np.array([ord(c) + 4 for c in "abcdefgh XYZ019.,\n"] + [0xC3 + 4, 0xA9 + 4, 1, 2, 3])
    ids = rng.choice(alphabet, n)
    ids[0] = 1
    return ids, h


RULES = [dict(mode="global"), dict(mode="global", max_patch_length=3),
         dict(mode="monotonic", threshold=0.5), dict(mode="combined", threshold_add=0.3),
         dict(mode="space"), dict(mode="space", max_patch_length=4), dict(mode="bpe"),
         dict(mode="bpe_incremental"), dict(mode="byte"), dict(mode="static", patch_size=4)]


# ---------------------------------------------------------------------------------------------
# Goldens (spec §14), from the reference's own fixture.

def test_fixture_starts_match_reference(fixture_sentence):
    lengths = patching.patch_lengths_from_entropies(fixture_sentence["entropies"],
                                                    include_next=False)
    starts = np.zeros(81, bool)
    starts[np.cumsum(lengths)[:-1]] = True
    starts[0] = True
    np.testing.assert_array_equal(starts, fixture_sentence["start"])


def test_fixture_goldens(fixture_sentence):
    h = fixture_sentence["entropies"]
    base = [1, 1, 1, 1, 1, 15, 3, 3, 1, 1, 3, 12, 1, 1, 1, 1, 1, 5, 5, 1, 2, 1]
    assert patching.patch_lengths_from_entropies(h, include_next=False).tolist() == base + [19]
    assert patching.patch_lengths_from_entropies(h).tolist() == base + [20]
    assert patching.patch_lengths_from_entropies(h, include_next=False, max_patch_length=8).tolist() == [
        1, 1, 1, 1, 1, 8, 7, 3, 3, 1, 1, 3, 8, 4, 1, 1, 1, 1, 1, 5, 5, 1, 2, 1, 8, 8, 3]
    assert patching.patch_lengths_from_entropies(h, 1.0, mode="monotonic",
                                                 include_next=False).tolist() == [
        1, 1, 17, 1, 3, 3, 5, 10, 2, 2, 8, 5, 3, 18, 2]


def test_fixture_patch_and_decoder_ids(fixture_sentence):
    lengths = patching.patch_lengths_from_entropies(fixture_sentence["entropies"])
    p, d = patching.patch_ids_from_lengths(jnp.asarray(lengths)[None], 81)
    p, d = np.asarray(p[0]), np.asarray(d[0])
    np.testing.assert_array_equal(p, fixture_sentence["patch"])
    assert p[:8].tolist() == [0, 1, 2, 3, 4, 5, 5, 5] and d[:6].tolist() == [0, 1, 2, 3, 4, 4]
    assert d[19:23].tolist() == [5, 5, 5, 6]
    # d(i) = p(i + 1) - 1, with p(N) the virtual position's patch.
    p_virtual = len(lengths) - 1
    np.testing.assert_array_equal(d, np.append(p[1:], p_virtual) - 1)


# ---------------------------------------------------------------------------------------------
# Host implementation == naive oracle; device buffer == host, overflow included.

@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
@pytest.mark.parametrize("include_next", [True, False])
def test_host_matches_naive_oracle(rule, include_next):
    rng = np.random.default_rng(hash((str(rule), include_next)) % 2**32)
    for _ in range(150):
        ids, h = random_row(rng, int(rng.integers(1, 60)))
        got = patching.patch_lengths(ids, h, include_next=include_next, **rule).tolist()
        assert got == naive_lengths(ids, h, include_next=include_next, **rule)
        assert sum(got) == len(ids) + include_next


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_device_buffer_matches_host_with_overflow(rule):
    rng = np.random.default_rng(7)
    b, n = 64, 48
    p_max = 4 if rule["mode"].startswith("bpe") else 12  # many rows need more -> overflow path
    fn = jax.jit(lambda i, h: patching.patch_buffer(p_max=p_max, ids=i, entropies=h, **rule))
    n_overflow = 0
    for _ in range(4):  # 4 x 64 = 256 rows per rule, ~2300 over all rules
        rows = [random_row(rng, n) for _ in range(b)]
        ids = np.stack([r[0] for r in rows]); h = np.stack([r[1] for r in rows])
        buf = fn(jnp.asarray(ids), jnp.asarray(h))
        host = patching.patch_lengths(ids, h, **rule)
        want, overflow = oracles.fit_to_capacity(host, p_max)
        np.testing.assert_array_equal(np.asarray(buf.lengths), want)
        np.testing.assert_array_equal(np.asarray(buf.overflow), overflow)
        n_overflow += int((overflow > 0).sum())
        # ids agree with the lengths actually in the buffer
        p, d = patching.patch_ids_from_lengths(buf.lengths, n)
        np.testing.assert_array_equal(np.asarray(buf.patch_ids), np.asarray(p))
        np.testing.assert_array_equal(np.asarray(buf.decoder_patch_ids), np.asarray(d))
        assert (np.asarray(buf.lengths).sum(-1) == n + 1).all()
        assert (np.asarray(buf.patch_ids) < p_max).all()
    assert n_overflow > 0  # the overflow policy was exercised


def test_overflow_policy_is_causal():
    """Changing bytes after t never changes the buffered patch ids at or before t."""
    rng = np.random.default_rng(3)
    n, p_max = 64, 6
    fn = jax.jit(lambda h: patching.patch_buffer(p_max=p_max, entropies=h))
    for _ in range(50):
        _, h = random_row(rng, n)
        t = int(rng.integers(1, n - 1))
        h2 = h.copy()
        h2[t + 1:] = rng.gamma(1.2, 1.2, n - t - 1)
        buf = fn(jnp.asarray(np.stack([h, h2])))
        p, d = np.asarray(buf.patch_ids), np.asarray(buf.decoder_patch_ids)
        # p(i) for i <= t + 1 reads H up to t; d(i) = p(i+1) - 1 for i <= t reads H up to t.
        np.testing.assert_array_equal(p[0, : t + 2], p[1, : t + 2])
        np.testing.assert_array_equal(d[0, : t + 1], d[1, : t + 1])


# ---------------------------------------------------------------------------------------------
# Incremental property f(x[:i]) == f(x)[:i] (spec §3.8): starts are decided left to right.

def starts_of(lengths):
    return np.cumsum(np.concatenate([[0], lengths]))[:-1]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_incremental_property(rule):
    if rule["mode"] == "bpe":
        pytest.skip("the reference bpe rule is prefix-consistent only on real positions")
    rng = np.random.default_rng(11)
    for _ in range(40):
        ids, h = random_row(rng, 40)
        full = set(starts_of(patching.patch_lengths(ids, h, include_next=True, **rule)).tolist())
        for i in range(1, 41):
            prefix = patching.patch_lengths(ids[:i], h[:i], include_next=True, **rule)
            # with the virtual position, a prefix of length i decides positions 0..i
            assert set(starts_of(prefix).tolist()) == {s for s in full if s <= i}


# ---------------------------------------------------------------------------------------------
# Threshold search

def test_threshold_for_target_patch_size():
    rng = np.random.default_rng(0)
    docs = [rng.gamma(1.2, 1.2, int(rng.integers(200, 600))).astype(np.float32) for _ in range(20)]
    for target in [2.0, 4.5, 8.0]:
        theta = patching.threshold_for_target_patch_size(docs, target)
        n_patches = sum(len(patching.patch_lengths_from_entropies(d, theta, include_next=False))
                        for d in docs)
        mean = sum(d.size for d in docs) / n_patches
        assert abs(mean - target) / target < 0.02, (target, theta, mean)
    # larger targets need larger thresholds
    t1 = patching.threshold_for_target_patch_size(docs, 3.0)
    t2 = patching.threshold_for_target_patch_size(docs, 6.0)
    assert t2 > t1


def test_threshold_search_rejects_bad_input():
    with pytest.raises(ValueError, match="target"):
        patching.threshold_for_target_patch_size([np.ones(5)], 0.5)
    with pytest.raises(ValueError, match="entropies"):
        patching.threshold_for_target_patch_size([], 4.0)


# ---------------------------------------------------------------------------------------------
# Bad input

def test_bad_input_errors_name_the_argument():
    h = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="entropies: expected a 1-D or 2-D"):
        patching.patch_lengths_from_entropies(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="entropies: contains NaN"):
        patching.patch_lengths_from_entropies(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="entropies: must be >= 0"):
        patching.patch_lengths_from_entropies(np.array([1.0, -0.5]))
    with pytest.raises(ValueError, match="mode: unknown"):
        patching.patch_lengths(None, h, mode="entropyy")
    with pytest.raises(ValueError, match="p_max"):
        patching.patch_buffer(p_max=1, entropies=jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="threshold_add"):
        patching.patch_lengths(None, h, mode="combined")
    with pytest.raises(ValueError, match="max_patch_length"):
        patching.patch_lengths(None, h, max_patch_length=0)
    with pytest.raises(ValueError, match="ids: mode 'space' needs ids"):
        patching.patch_lengths(None, h, mode="space")


def test_bpe_delimiter_at_the_last_position_follows_the_reference():
    ids = np.array([1, 104, 3, 105, 3])  # BOS h <d> i <d>: the delimiter ends the row
    ref = patching.patch_lengths(ids, None, mode="bpe", include_next=True).tolist()
    inc = patching.patch_lengths(ids, None, mode="bpe_incremental", include_next=True).tolist()
    assert ref == [1, 2, 3]  # starts 0, 1, 3: the virtual position 5 joins the last patch
    assert inc == [1, 2, 2, 1]  # the causal variant opens it
    assert patching.patch_lengths(ids, None, mode="bpe", include_next=False).tolist() == [1, 2, 2]
    buf = patching.patch_buffer(p_max=6, ids=jnp.asarray(ids[None]), rule=patching.PatchRule("bpe"))
    assert np.asarray(buf.lengths)[0][:3].tolist() == ref
