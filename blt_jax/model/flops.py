"""Parameter and FLOP accounting (spec §12.4, §13.2).

FLOPs follow the paper's Chinchilla-style counting (embedding lookups free, backward = 2x
forward). The paper's Appendix-B expressions were not available; these are the spec's
reconstruction, written out term by term (per token/byte, forward):

    TransfFL(h, l, m, V) = l · (2·h·(2h + 2·kv) + 2·3·h·f + 2·2·m·h) + 2·h·V
        (q/o projections h², k/v projections h·kv, SwiGLU 3·h·f, attention scores + values
         over m keys, output head over V)
    encoder cross-attention, per patch and layer: 4·k·h² (q, o) + 4·n_p·h² (k, v) + 4·k·n_p·h
    decoder cross-attention, per byte and layer:  4·h² (q, o) + 4·k·h²/n_p (k, v) + 4·k·h
    patch projections (pool -> k queries, k·d_E -> d_G, d_G -> k·d_D): 2·in·out per patch

BLT per byte = global/n_p + encoder + decoder + cross-attention + projections/n_p (+ the entropy
model per byte when patching runs at inference). A token model per byte = TransfFL / bytes_per_token.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from flax import nnx

from blt_jax.model.layers import ffn_hidden_dim
from blt_jax.text.tokenizer import VOCAB_SIZE


def transformer_layer_flops(h: int, n_heads: int, n_kv_heads: int | None, m: float,
                            f: int) -> float:
    kv = h // n_heads * (n_kv_heads or n_heads)
    return 2 * h * (2 * h + 2 * kv) + 2 * 3 * h * f + 2 * 2 * m * h


def transf_fl(h: int, l: int, n_heads: int, n_kv_heads: int | None, m: float, vocab: int,
              cfg: ml_collections.ConfigDict) -> float:
    f = ffn_hidden_dim(h, cfg.multiple_of, cfg.ffn_dim_multiplier)
    return l * transformer_layer_flops(h, n_heads, n_kv_heads, m, f) + 2 * h * vocab


def transformer_flops_per_token(cfg: ml_collections.ConfigDict, n_ctx: int) -> float:
    """Forward FLOPs per token of a plain decoder (entropy model or token baseline)."""
    m = min(cfg.window, n_ctx) if cfg.window else n_ctx
    return transf_fl(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, m, cfg.vocab_size, cfg)


def blt_flops_per_byte(cfg: ml_collections.ConfigDict, bytes_per_patch: float, n_ctx: int,
                       entropy_cfg: ml_collections.ConfigDict | None = None) -> dict[str, float]:
    """Forward FLOPs per byte by component, and the total (with the entropy model if given)."""
    n_p, k = float(bytes_per_patch), cfg.cross_attn_k
    de, dg, dd = cfg.dim_local_encoder, cfg.dim_global, cfg.dim_local_decoder
    w = min(cfg.local_attention_window_len, n_ctx)
    n_enc_cross = cfg.n_layers_local_encoder if cfg.cross_attn_all_layers_encoder else 1
    n_dec_cross = cfg.n_layers_local_decoder if cfg.cross_attn_all_layers_decoder else 1
    proj = 2 * de * k * de + (2 * k * de * dg if k * de != dg else 0) + \
        (2 * dg * k * dd if dg != dd else 0)
    out = {
        "global": transf_fl(dg, cfg.n_layers_global, cfg.n_heads_global, cfg.n_kv_heads_global,
                            n_ctx / n_p, 0, cfg) / n_p,
        "encoder": transf_fl(de, cfg.n_layers_local_encoder, cfg.n_heads_local_encoder,
                             cfg.n_kv_heads, w, 0, cfg),
        "decoder": transf_fl(dd, cfg.n_layers_local_decoder, cfg.n_heads_local_decoder,
                             cfg.n_kv_heads, w, VOCAB_SIZE, cfg),
        "encoder_cross": n_enc_cross * (4 * k * de * de + 4 * n_p * de * de
                                        + 4 * k * n_p * de) / n_p,
        "decoder_cross": n_dec_cross * (4 * dd * dd + 4 * k * dd * dd / n_p + 4 * k * dd),
        "projections": proj / n_p,
    }
    out["blt"] = sum(out.values())
    if entropy_cfg is not None:
        out["entropy_model"] = transformer_flops_per_token(entropy_cfg, n_ctx)
    out["total"] = out["blt"] + out.get("entropy_model", 0.0)
    return out


def param_counts(model_fn: Any) -> dict[str, int]:
    """Counts of a model built by `model_fn()` without materialising it (nnx.eval_shape)."""
    model = nnx.eval_shape(model_fn)
    state = nnx.state(model)
    counts = {"hash_embedding": 0, "other_embedding": 0, "non_embedding": 0}
    for path, v in nnx.to_flat_state(state):
        n = int(v.get_value().size)
        if "hash_embeddings" in path:  # the shard-friendly padding rows are not parameters
            counts["hash_embedding"] += model.local_encoder.hash_rows * v.get_value().shape[1]
        elif "tok_embeddings" in path:
            counts["other_embedding"] += n
        else:
            counts["non_embedding"] += n
    counts["total"] = sum(counts.values())
    return counts
