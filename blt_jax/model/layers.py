"""Shared building blocks (spec §5.1, §5.4): RMSNorm, interleaved RoPE, GQA attention, SwiGLU,
the pre-norm transformer block and the double-residual cross-attention.

Weights are stored (in, out) with the reference's names (wq, wk, wv, wo, w1, w2, w3,
attention_norm, ffn_norm, ...) so checkpoint conversion is a transpose. Parameters are fp32 and
carry `logical_axes` metadata for sharding.py; matmuls run in the configured compute dtype (fp32
ones at HIGHEST precision: attention.precision).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from blt_jax.model import attention
from blt_jax.scale.sharding import constrain

# attend(q_BxLxHxD, k_BxSxGxD, v_BxSxGxD) -> (B, L, H, D): which keys a query may see
Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def param(rngs: nnx.Rngs, shape: Sequence[int], std: float | None,
          axes: Sequence[str | None]) -> nnx.Param:
    """Truncated normal (±3σ) as the reference initialises; std=None means ones (norm weights)."""
    if std is None:
        value = jnp.ones(shape, jnp.float32)
    else:
        value = std * jax.random.truncated_normal(rngs.params(), -3.0, 3.0, shape, jnp.float32)
    return nnx.Param(value, logical_axes=tuple(axes))


def ffn_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float = 1.0) -> int:
    """The reference's SwiGLU hidden size: 768 -> 2048, 1024 -> 2816, 2048 -> 5632."""
    hidden = int(ffn_dim_multiplier * int(8 * dim / 3))
    return multiple_of * -(-hidden // multiple_of)


def depth_factor(kind: str, depth: int, n_layers: int, dim: int) -> float:
    factors = {"disabled": 1.0, "current_depth": (2 * (depth + 1)) ** 0.5,
               "global_depth": (2 * (n_layers + 1)) ** 0.5, "dim_ratio": dim / 4096}
    if kind not in factors:
        raise ValueError(f"init_std_factor: unknown {kind!r}; choose one of {sorted(factors)}")
    return factors[kind]


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.weight = param(rngs, (dim,), None, ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...].reshape((1,) * (x.ndim - 1) + (-1,))
        return (y * w).astype(x.dtype)


class Linear(nnx.Module):
    """Bias-free linear layer, kernel (in, out)."""

    def __init__(self, d_in: int, d_out: int, std: float, axes: Sequence[str], *,
                 rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.kernel = param(rngs, (d_in, d_out), std, axes)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # A 2-D dot: on (B, L, D) inputs XLA:CPU inserts transposes that also swallow the
        # neighbouring elementwise work (FFN forward+backward 650 -> 290 ms at the bench shape).
        w = self.kernel[...].astype(self.dtype)
        x2 = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        y = jnp.dot(x2, w, precision=attention.precision(x2, w))
        return y.reshape(x.shape[:-1] + (w.shape[1],))


class Embedding(nnx.Module):
    def __init__(self, n: int, dim: int, std: float, axes: Sequence[str | None], *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32):
        self.embedding = param(rngs, (n, dim), std, axes)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


def rope(x_BxLxHxD: jax.Array, pos_BxL: jax.Array, theta: float) -> jax.Array:
    """Interleaved-pair rotary embedding: (x[2m], x[2m+1]) rotated by pos · θ^(-2m/D).

    Written as x·cos + pairswap(x)·sin with per-lane tables, so it stays one elementwise
    fusion in the input's layout (no stack/transpose of the pairs).
    """
    d = x_BxLxHxD.shape[-1]
    freqs = jnp.repeat(1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)), 2)
    ang = pos_BxL.astype(jnp.float32)[:, :, None, None] * freqs[None, None, None]  # (B, L, 1, D)
    sign = jnp.tile(jnp.array([-1.0, 1.0], jnp.float32), d // 2)  # (-x1, x0) per pair
    x = x_BxLxHxD.astype(jnp.float32)
    swapped = jnp.flip(x.reshape(x.shape[:-1] + (d // 2, 2)), axis=-1).reshape(x.shape)
    return (x * jnp.cos(ang) + swapped * (sign[None, None, None] * jnp.sin(ang))).astype(
        x_BxLxHxD.dtype)


class Attention(nnx.Module):
    """Self-attention with GQA (query head q uses kv head q // (H / G)) and RoPE on q, k."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, std: float, *, rope_theta: float,
                 rngs: nnx.Rngs, dtype: Any):
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.rope_theta = rope_theta
        hd = self.head_dim
        self.wq = Linear(dim, n_heads * hd, std, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.wk = Linear(dim, n_kv_heads * hd, std, ("embed", "kv_heads"), rngs=rngs, dtype=dtype)
        self.wv = Linear(dim, n_kv_heads * hd, std, ("embed", "kv_heads"), rngs=rngs, dtype=dtype)
        self.wo = Linear(n_heads * hd, dim, std, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def qkv(self, x_BxLxD: jax.Array, pos_BxL: jax.Array) -> tuple[jax.Array, ...]:
        b, n, _ = x_BxLxD.shape
        q = self.wq(x_BxLxD).reshape(b, n, self.n_heads, self.head_dim)
        k = self.wk(x_BxLxD).reshape(b, n, self.n_kv_heads, self.head_dim)
        v = self.wv(x_BxLxD).reshape(b, n, self.n_kv_heads, self.head_dim)
        q = constrain(q, ("batch", "length", "act_heads", None))
        return rope(q, pos_BxL, self.rope_theta), rope(k, pos_BxL, self.rope_theta), v

    def out(self, o_BxLxHxD: jax.Array) -> jax.Array:
        b, n = o_BxLxHxD.shape[:2]
        return self.wo(o_BxLxHxD.reshape(b, n, self.n_heads * self.head_dim))

    def __call__(self, x_BxLxD: jax.Array, pos_BxL: jax.Array, attend: Attend) -> jax.Array:
        return self.out(attend(*self.qkv(x_BxLxD, pos_BxL)))


class FeedForward(nnx.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int, std_in: float, std_out: float, *, rngs: nnx.Rngs,
                 dtype: Any):
        self.w1 = Linear(dim, hidden, std_in, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.w3 = Linear(dim, hidden, std_in, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.w2 = Linear(hidden, dim, std_out, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.w1(x)) * self.w3(x)
        return self.w2(constrain(h, ("batch", "length", "act_mlp")))


class TransformerBlock(nnx.Module):
    """Pre-norm block: h = x + Attn(norm(x)); out = h + FFN(norm(h))."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None, *, norm_eps: float,
                 rope_theta: float, multiple_of: int, ffn_dim_multiplier: float,
                 init_factor: float, rngs: nnx.Rngs, dtype: Any):
        hidden = ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
        std = dim ** -0.5 / init_factor
        self.attention_norm = RMSNorm(dim, norm_eps, rngs=rngs)
        self.attention = Attention(dim, n_heads, n_kv_heads or n_heads, std,
                                   rope_theta=rope_theta, rngs=rngs, dtype=dtype)
        self.ffn_norm = RMSNorm(dim, norm_eps, rngs=rngs)
        self.feed_forward = FeedForward(dim, hidden, std, hidden ** -0.5 / init_factor,
                                        rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, pos_BxL: jax.Array, attend: Attend) -> jax.Array:
        h = x + self.attention(self.attention_norm(x), pos_BxL, attend)
        out = h + self.feed_forward(self.ffn_norm(h))
        return constrain(out, ("batch", "length", "act_embed"))


class CrossAttention(nnx.Module):
    """Cross-attention without RoPE, separate RMSNorms on queries and keys/values.

    Returns ``x + attn`` like the reference; callers add the result to x again (double residual,
    baked into released weights).
    """

    def __init__(self, dim: int, n_heads: int, *, norm_eps: float, init_factor: float,
                 rngs: nnx.Rngs, dtype: Any):
        std = dim ** -0.5 / init_factor
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.cross_attn_norm_q = RMSNorm(dim, norm_eps, rngs=rngs)
        self.cross_attn_norm_kv = RMSNorm(dim, norm_eps, rngs=rngs)
        self.wq = Linear(dim, dim, std, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.wk = Linear(dim, dim, std, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.wv = Linear(dim, dim, std, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.wo = Linear(dim, dim, std, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def split(self, y_BxLxD: jax.Array) -> jax.Array:
        return y_BxLxD.reshape(y_BxLxD.shape[:2] + (self.n_heads, self.head_dim))

    def queries(self, x_BxLxD: jax.Array) -> jax.Array:
        return self.split(self.wq(self.cross_attn_norm_q(x_BxLxD)))

    def keys_values(self, kv_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        kvn = self.cross_attn_norm_kv(kv_BxSxD)
        return self.split(self.wk(kvn)), self.split(self.wv(kvn))

    def finish(self, x_BxLxD: jax.Array, o_BxLxHxD: jax.Array) -> jax.Array:
        b, n = o_BxLxHxD.shape[:2]
        return x_BxLxD + self.wo(o_BxLxHxD.reshape(b, n, self.n_heads * self.head_dim))

    def apply(self, x_BxLxD: jax.Array, attend_heads: Callable[[jax.Array], jax.Array]
              ) -> jax.Array:
        """x + CA(x), CA itself returning x + attn: the reference's double residual.

        `attend_heads` maps the (B, L, H, D) queries to the attention output: which keys a query
        sees and how they are stored is the caller's (training kernels or a decoding cache).
        """
        return x_BxLxD + self.finish(x_BxLxD, attend_heads(self.queries(x_BxLxD)))

    def dense(self, x_BxQxD: jax.Array, kv_BxSxD: jax.Array, mask_BxQxS: jax.Array) -> jax.Array:
        """Oracle path with an explicit (B, Q, S) mask: x + CA(x)."""
        k, v = self.keys_values(kv_BxSxD)
        return self.apply(x_BxQxD, lambda q: attention.dense_attention(q, k, v, mask_BxQxS))
