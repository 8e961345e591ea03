"""Llama-style decoder shared by the entropy model (byte LM, window 512, EOS segments) and the
token baseline (BPE ids, full causal attention), plus the stack helpers BLT's three models reuse.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from blt_jax.model import attention
from blt_jax.model.layers import Attend, Embedding, Linear, RMSNorm, TransformerBlock, depth_factor
from blt_jax.scale.sharding import constrain


def compute_dtype(cfg: ml_collections.ConfigDict) -> Any:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def make_blocks(cfg: ml_collections.ConfigDict, dim: int, n_layers: int, n_heads: int,
                n_kv_heads: int | None, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([
        TransformerBlock(dim, n_heads, n_kv_heads, norm_eps=cfg.norm_eps,
                         rope_theta=cfg.rope_theta, multiple_of=cfg.multiple_of,
                         ffn_dim_multiplier=cfg.ffn_dim_multiplier,
                         init_factor=depth_factor(cfg.init_std_factor, i, n_layers, dim),
                         rngs=rngs, dtype=compute_dtype(cfg))
        for i in range(n_layers)])


def run_block(block: nnx.Module, remat: bool, *args: Any) -> jax.Array:
    """Calls a block, rematerialising its activations in the backward pass when asked."""
    if not remat:
        return block(*args)
    graphdef, state = nnx.split(block)
    x, rest = args[0], args[1:]
    return jax.checkpoint(lambda s, h: nnx.merge(graphdef, s)(h, *rest))(state, x)


def per_layer(attend: Attend | Sequence[Attend], n: int) -> list[Attend]:
    return list(attend) if isinstance(attend, (list, tuple)) else [attend] * n


def run_blocks(layers: Sequence[nnx.Module], remat: bool, h: jax.Array, pos_BxL: jax.Array,
               attend: Attend | Sequence[Attend], scan: bool = False) -> jax.Array:
    """A stack's layer loop. `attend` is one strategy for every layer (training kernels) or one
    per layer (decoding caches: each layer reads and extends its own). With `scan` and one
    strategy, the layers run as one lax.scan body, so compile time does not grow with depth."""
    if scan and len(layers) > 1 and not isinstance(attend, (list, tuple)):
        return scan_blocks(layers, remat, h, pos_BxL, attend)
    for block, a in zip(layers, per_layer(attend, len(layers))):
        h = run_block(block, remat, h, pos_BxL, a)
    return h


def _stack(*layer_vars: nnx.Variable) -> nnx.Variable:
    """One parameter of every layer stacked on a new leading axis, sharded like one layer's
    (the layer axis whole): without the constraint XLA may gather the whole stack."""
    names = layer_vars[0].get_metadata().get("logical_axes")
    value = jnp.stack([v.get_value() for v in layer_vars])
    return layer_vars[0].replace(constrain(value, (None, *names)) if names else value)


def scan_blocks(layers: Sequence[nnx.Module], remat: bool, h: jax.Array, pos_BxL: jax.Array,
                attend: Attend) -> jax.Array:
    """The layer loop as lax.scan over the layers' parameters stacked at run time.

    Parameters stay one entry per layer (checkpoints, reference import and sharding rules are
    unchanged); the stack is one copy of the stack's weights per step, small beside the step's
    activations, and its transpose hands each layer its own gradient.
    """
    graphdef, first = nnx.split(layers[0])
    rest = [nnx.split(block) for block in layers[1:]]
    if any(g != graphdef for g, _ in rest):
        raise ValueError("scan_blocks: the layers differ in structure; run them unrolled")
    stacked = jax.tree.map(_stack, first, *(s for _, s in rest),
                           is_leaf=lambda x: isinstance(x, nnx.Variable))

    def body(x: jax.Array, state: nnx.State) -> tuple[jax.Array, None]:
        return nnx.merge(graphdef, state)(x, pos_BxL, attend), None
    h, _ = jax.lax.scan(jax.checkpoint(body, prevent_cse=False) if remat else body, h, stacked)
    return h


def local_attend(cfg: ml_collections.ConfigDict, seg_BxN: jax.Array, window: int) -> Attend:
    """Windowed causal attention inside EOS segments (blockwise, or the dense oracle)."""
    if cfg.attention_impl == "dense":
        mask = attention.local_mask(seg_BxN, window)
        return lambda q, k, v: attention.dense_attention(q, k, v, mask)
    return lambda q, k, v: attention.local_attention(q, k, v, seg_BxN, window,
                                                     cfg.local_attention_block)


def causal_attend(cfg: ml_collections.ConfigDict, b: int, n: int,
                  seg_BxN: jax.Array | None = None) -> Attend:
    """Causal attention over all earlier positions (query-chunked beyond cfg.attention_chunk)."""
    if cfg.attention_impl == "dense":
        mask = attention.causal_mask(b, n, seg_BxN)
        return lambda q, k, v: attention.dense_attention(q, k, v, mask)
    return lambda q, k, v: attention.causal_attention(q, k, v, seg_BxN, cfg.attention_chunk)


def capturing(attend: Attend, sink: list | None) -> Attend:
    """Records each layer's (k, v) in `sink` (generation prefill builds its caches from them)."""
    if sink is None:
        return attend

    def f(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        sink.append((k, v))
        return attend(q, k, v)
    return f


def context_segments(cfg: ml_collections.ConfigDict, seg_BxL: jax.Array, pos_BxL: jax.Array
                     ) -> jax.Array:
    """Attention segments with the entropy context's restarts folded in: positions see each
    other iff they share an EOS segment and, with ``entropy_context`` C > 0, the same C-id
    chunk of the row (what scoring independent C-id chunks gives: RoPE is relative, so only the
    mask differs). One rule for the full forward, the prefill and decoding steps."""
    every = int(cfg.get("entropy_context") or 0)
    if every <= 0:
        return seg_BxL
    return seg_BxL + (pos_BxL // every) * (1 << 20)  # < 2**20 EOS per chunk: injective


def positions(b: int, n: int, offset: int = 0) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(offset, offset + n, dtype=jnp.int32)[None], (b, n))


class Transformer(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d, dtype = cfg.dim, compute_dtype(cfg)
        self.cfg = cfg
        self.tok_embeddings = Embedding(cfg.vocab_size, d, d ** -0.5, ("vocab", "embed"),
                                        rngs=rngs, dtype=dtype)
        self.layers = make_blocks(cfg, d, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, rngs)
        self.norm = RMSNorm(d, cfg.norm_eps, rngs=rngs)
        self.output = Linear(d, cfg.vocab_size, d ** -0.5, ("embed", "vocab"), rngs=rngs,
                             dtype=dtype)

    def attend(self, ids_BxL: jax.Array) -> Attend:
        if self.cfg.window is not None:
            seg = context_segments(self.cfg, attention.segments_from_eos(ids_BxL, self.cfg.eos_id),
                                   positions(*ids_BxL.shape))
            return local_attend(self.cfg, seg, self.cfg.window)
        return causal_attend(self.cfg, *ids_BxL.shape)

    def __call__(self, ids_BxL: jax.Array, pos_BxL: jax.Array | None = None,
                 sink: list | None = None, attends: Sequence[Attend] | None = None) -> jax.Array:
        """fp32 next-id logits (B, L, V); `sink` collects every layer's (k, v); `attends` (one
        per layer) replaces the masks of a full row, e.g. with KV caches when decoding."""
        pos = positions(*ids_BxL.shape) if pos_BxL is None else pos_BxL
        h = constrain(self.tok_embeddings(ids_BxL), ("batch", "length", "act_embed"))
        attend = capturing(self.attend(ids_BxL), sink) if attends is None else attends
        h = run_blocks(self.layers, self.cfg.remat, h, pos, attend,
                       scan=self.cfg.scan_layers and sink is None)
        logits = self.output(self.norm(h)).astype(jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab"))


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """H = -Σ p log p in nats over all outputs (special ids included), fp32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropies(model: Transformer, ids_BxN: jax.Array, chunk: int | None = None) -> jax.Array:
    """Per-row entropies (B, N), fp32. Rows never mix (unlike the reference's flattening).

    With `chunk`, the row is processed in pieces of `chunk` bytes, each with
    n_layers·(window−1) bytes of left context: a windowed model's receptive field, so the result
    equals the full-row computation (the full row is already O(N·W) memory; chunks bound it more).
    """
    b, n = ids_BxN.shape
    if chunk is None or chunk >= n:
        return entropy_from_logits(model(ids_BxN))
    if model.cfg.window is None:
        raise ValueError("chunk: chunked entropies need a windowed (local-attention) model")
    overlap = model.cfg.n_layers * (model.cfg.window - 1)
    pieces = []
    for start in range(0, n, chunk):
        lo, hi = max(0, start - overlap), min(n, start + chunk)
        logits = model(ids_BxN[:, lo:hi], positions(b, hi - lo, lo))
        pieces.append(entropy_from_logits(logits[:, start - lo:]))
    return jnp.concatenate(pieces, axis=1)
