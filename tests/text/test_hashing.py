import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.text import hashing

GOLDEN = {  # spec §4: fixture ids, prime π_0, vocab 500002, positions 0..7
    3: [443987, 348935, 37502, 294216, 274140, 242340, 50093, 202570],
    4: [437197, 281585, 189712, 127061, 29038, 267201, 129446, 401070],
    5: [123201, 79613, 382808, 283737, 426389, 123063, 155827, 380477],
    6: [166353, 302503, 241104, 306205, 90295, 349786, 191529, 178252],
    7: [34117, 201753, 20286, 95355, 64005, 444548, 244054, 421114],
    8: [172383, 323061, 340750, 41807, 150805, 85526, 382522, 178197],
}
GOLDEN_PRIME1_N3 = [45033, 130495, 163602, 92134, 155420, 419160, 335565, 381280]


def python_bucket(window, vocab, prime_index=0):
    """Exact oracle: Python integers, two's-complement wrap to signed 64-bit, floor-mod."""
    s = sum(int(w) * hashing.PRIMES[prime_index] ** j for j, w in enumerate(window)) % 2**64
    if s >= 2**63:
        s -= 2**64
    return s % vocab


def oracle(row, n, vocab, prime_index=0):
    padded = [0] * (n - 1) + list(row)
    return [python_bucket(padded[i:i + n], vocab, prime_index) for i in range(len(row))]


@pytest.mark.parametrize("n", sorted(GOLDEN))
def test_spec_goldens_numpy_and_jax(fixture_sentence, n):
    ids = fixture_sentence["ids"][:8]
    assert hashing.ngram_buckets(ids, n, 500002).tolist() == GOLDEN[n]
    assert np.asarray(hashing.ngram_buckets(jnp.asarray(ids), n, 500002)).tolist() == GOLDEN[n]
    assert oracle(ids, n, 500002) == GOLDEN[n]


def test_second_prime_golden(fixture_sentence):
    ids = fixture_sentence["ids"][:8]
    assert hashing.ngram_buckets(ids, 3, 500002, prime_index=1).tolist() == GOLDEN_PRIME1_N3
    got = hashing.ngram_buckets(jnp.asarray(ids), 3, 500002, prime_index=1)
    assert np.asarray(got).tolist() == GOLDEN_PRIME1_N3


def test_random_rows_match_python_oracle_without_x64():
    assert not jax.config.jax_enable_x64
    rng = np.random.default_rng(0)
    fn = jax.jit(hashing.ngram_buckets, static_argnums=(1, 2, 3))
    for trial in range(30):
        n = int(rng.integers(1, 10))
        vocab = int(rng.choice([2, 7, 30000, 50002, 500002, 2**24 - 1]))
        prime_index = int(rng.integers(0, len(hashing.PRIMES)))
        ids = rng.integers(0, 260, (3, 17)).astype(np.int32)
        want = [oracle(r, n, vocab, prime_index) for r in ids]
        assert hashing.ngram_buckets(ids, n, vocab, prime_index).tolist() == want
        got = fn(jnp.asarray(ids), n, vocab, prime_index)
        assert got.dtype == jnp.int32
        assert np.asarray(got).tolist() == want, (n, vocab, prime_index)


def test_padding_is_per_row_and_spans_documents():
    # Left padding with zeros happens once per row, not per document (BOS/EOS inside n-grams).
    row = np.array([1, 72, 2, 1, 73, 74], np.int32)
    got = hashing.ngram_buckets(row[None], 3, 500002)[0].tolist()
    assert got == oracle(row, 3, 500002)
    assert got[4] == python_bucket([2, 1, 73], 500002)


def test_bad_input():
    with pytest.raises(ValueError, match="ids"):
        hashing.ngram_buckets(np.zeros((1, 2, 3), np.int32), 3, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        hashing.ngram_buckets(np.zeros(3, np.int32), 3, 2**25)
    with pytest.raises(ValueError, match="prime_index"):
        hashing.ngram_buckets(np.zeros(3, np.int32), 3, 10, prime_index=11)
