"""Choosing the next id from logits: greedy, temperature, top-k, top-p (one function for BLT,
the token baseline and the naive oracle, so their choices can only differ through logits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")


def choose(logits_BxV: jax.Array, key_B: jax.Array, temperature: float, top_k: int | None,
           top_p: float | None) -> jax.Array:
    """Next ids (B,). temperature 0 -> argmax. top-k keeps the k largest logits; top-p keeps the
    smallest set of most likely ids whose probability reaches p (the first id always kept)."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV.astype(jnp.float32), axis=-1).astype(jnp.int32)
    logits = _filtered(logits_BxV, temperature, top_k, top_p)
    return jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(key_B, logits).astype(jnp.int32)


def probabilities(logits_BxV: jax.Array, temperature: float, top_k: int | None,
                  top_p: float | None) -> jax.Array:
    """(B, V) the distribution :func:`choose` draws from (greedy: one-hot at the argmax);
    speculative decoding's acceptance rule compares two of them."""
    if temperature == 0.0:
        return jax.nn.one_hot(jnp.argmax(logits_BxV.astype(jnp.float32), axis=-1),
                              logits_BxV.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(_filtered(logits_BxV, temperature, top_k, top_p), axis=-1)


def _filtered(logits_BxV: jax.Array, temperature: float, top_k: int | None,
              top_p: float | None) -> jax.Array:
    """Tempered logits with what top-k / top-p exclude at -inf."""
    logits = logits_BxV.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def step_keys(seed: int, rows: int, step: jax.Array | int) -> jax.Array:
    """Per-row keys for each row's generation step (a scalar or one step per row): a row's
    draws depend only on (seed, its index, its step), not on the rest of the batch."""
    base = jax.random.key(seed)
    steps = jnp.broadcast_to(jnp.asarray(step, jnp.int32), (rows,))
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(base, r), t))(
        jnp.arange(rows), steps)
