"""Hash n-gram bucket ids (spec §4), exact to the reference's signed int64 arithmetic.

bucket(i) = floor_mod(Σ_{j<n} x[i-n+1+j] · π^j  (two's-complement int64 wraparound), vocab),
rows left-padded with n-1 zeros, the *oldest* byte weighted π^0.

numpy inputs use int64 directly (numpy wraps silently). jax inputs must not need
``jax_enable_x64``: the 64-bit sum is carried in four 16-bit limbs held in uint32, and the
modulus is taken byte by byte (Horner), which is exact for vocab < 2^24.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899,
          9576890767, 3628273133, 2860486313, 5463458053, 3367900313)
MAX_VOCAB = 1 << 24


def _check(ids: Any, n: int, vocab_size: int, prime_index: int) -> None:
    if ids.ndim not in (1, 2):
        raise ValueError(f"ids: expected a 1-D or 2-D array, got shape {ids.shape}")
    if not 1 <= n <= 64:
        raise ValueError(f"n: n-gram size must be in [1, 64], got {n}")
    if not 1 <= vocab_size < MAX_VOCAB:
        raise ValueError(f"vocab_size: must be in [1, 2^24), got {vocab_size}")
    if not 0 <= prime_index < len(PRIMES):
        raise ValueError(f"prime_index: must be in [0, {len(PRIMES)}), got {prime_index}")


def _windows(xp: Any, ids: Any, n: int) -> list[Any]:
    """The n shifted views x[i-n+1+j] (j = 0 oldest .. n-1 newest), zero left padding."""
    length = ids.shape[-1]
    padded = xp.concatenate([xp.zeros(ids.shape[:-1] + (n - 1,), ids.dtype), ids], axis=-1)
    return [padded[..., j: j + length] for j in range(n)]


def _numpy_buckets(ids: np.ndarray, n: int, vocab_size: int, prime: int) -> np.ndarray:
    powers = [np.int64(int(pow(prime, j, 1 << 64)) - (1 << 64) * (pow(prime, j, 1 << 64) >> 63))
              for j in range(n)]
    acc = np.zeros(ids.shape, np.int64)
    with np.errstate(over="ignore"):
        for w, p in zip(_windows(np, ids.astype(np.int64), n), powers):
            acc = acc + w * p
    return np.mod(acc, np.int64(vocab_size)).astype(np.int32)


def _limbs(value: int) -> tuple[int, int, int, int]:
    return tuple((value >> (16 * k)) & 0xFFFF for k in range(4))  # type: ignore[return-value]


def _jax_buckets(ids: jax.Array, n: int, vocab_size: int, prime: int) -> jax.Array:
    u32 = jnp.uint32
    limbs = [jnp.zeros(ids.shape, u32) for _ in range(4)]
    for w, power in zip(_windows(jnp, ids.astype(u32), n), (pow(prime, j, 1 << 64) for j in range(n))):
        carry = jnp.zeros(ids.shape, u32)
        for k, c in enumerate(_limbs(power)):
            total = limbs[k] + w * u32(c) + carry  # < 2^32: each term is < 2^16 * 2^16
            limbs[k] = total & u32(0xFFFF)
            carry = total >> u32(16)
    # Unsigned value mod vocab, 8 bits at a time (r * 256 + byte < 2^32 for vocab < 2^24).
    r = jnp.zeros(ids.shape, u32)
    for k in (3, 2, 1, 0):
        for shift in (8, 0):
            r = (r * u32(256) + ((limbs[k] >> u32(shift)) & u32(0xFF))) % u32(vocab_size)
    # Signed reinterpretation: s = u - 2^64 when the top bit is set; floor-mod keeps [0, vocab).
    wrap = u32((1 << 64) % vocab_size)
    negative = limbs[3] >= u32(0x8000)
    r = jnp.where(negative, (r + u32(vocab_size) - wrap) % u32(vocab_size), r)
    return r.astype(jnp.int32)


def ngram_buckets(ids: Any, n: int, vocab_size: int, prime_index: int = 0) -> Any:
    """Bucket of the n-gram ending at every position of `ids` (1-D or (B, L); numpy or jax)."""
    _check(ids, n, vocab_size, prime_index)
    if isinstance(ids, np.ndarray):
        return _numpy_buckets(ids, n, vocab_size, PRIMES[prime_index])
    return _jax_buckets(jnp.asarray(ids), n, vocab_size, PRIMES[prime_index])

