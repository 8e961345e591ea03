"""Regenerates the tiny reference-format release used by tests/test_reference_import.py.

    python tests/data/make_reference_fixture.py      # needs torch (any 2.x)

Writes, beside this file, ``reference_tiny/`` and ``reference_tiny_entropy/`` laid out like the
facebookresearch/blt release folders (params.json + consolidated.pth holding {"model": sd}, bf16
like the released weights) and ``reference_tiny_weights.npz`` with the same tensors as float32,
saved by torch itself, as ground truth for the torch-free reader. Names and shapes follow the
spec's Appendix B, written out here independently of blt_jax.
"""

import json
import math
import pathlib

import numpy as np
import torch

HERE = pathlib.Path(__file__).parent

MODEL = dict(  # params.json["model"] of a ByteLatentTransformer
    dim_local_encoder=32, n_layers_local_encoder=2, n_heads_local_encoder=2,
    dim_global=48, n_layers_global=2, n_heads_global=4, n_kv_heads_global=2,
    dim_local_decoder=32, n_layers_local_decoder=2, n_heads_local_decoder=2,
    cross_attn_encoder=True, cross_attn_decoder=True, cross_attn_init_by_pooling=True,
    use_local_encoder_transformer=True, downsampling_by_pooling="max",
    cross_attn_k=2, cross_attn_nheads=4, cross_attn_all_layers_encoder=True,
    cross_attn_all_layers_decoder=True, local_attention_window_len=8,
    encoder_hash_byte_group_size=[3, 4], encoder_hash_byte_group_vocab=97,
    encoder_hash_byte_group_nb_functions=2, rope_theta=500000.0, norm_eps=1e-5,
    multiple_of=16, ffn_dim_multiplier=1.0, attn_bias_type="causal", patching_mode="entropy",
    vocab_size=260, max_encoder_seq_length=256, max_seqlen=64)
PATCHER = dict(patching_mode="entropy", threshold=1.335442066192627, monotonicity=False,
               patch_size=4.5)
ENTROPY = dict(dim=32, n_layers=2, n_heads=2, max_seqlen=8192, ffn_dim_multiplier=1.0,
               vocab_size=260)


def hidden(d, multiple_of):
    return multiple_of * math.ceil(int(8 * d / 3) / multiple_of)


def block(pre, d, heads, kv, mult):
    dh, f = d // heads, hidden(d, mult)
    return {f"{pre}.attention.wq.weight": (heads * dh, d), f"{pre}.attention.wk.weight": (kv * dh, d),
            f"{pre}.attention.wv.weight": (kv * dh, d), f"{pre}.attention.wo.weight": (d, heads * dh),
            f"{pre}.feed_forward.w1.weight": (f, d), f"{pre}.feed_forward.w3.weight": (f, d),
            f"{pre}.feed_forward.w2.weight": (d, f), f"{pre}.attention_norm.weight": (d,),
            f"{pre}.ffn_norm.weight": (d,)}


def cross(pre, d):
    out = {f"{pre}.{w}.weight": (d, d) for w in ("wq", "wk", "wv", "wo")}
    out.update({f"{pre}.cross_attn_norm_q.weight": (d,), f"{pre}.cross_attn_norm_kv.weight": (d,)})
    return out


def blt_shapes(m):
    de, dg, dd, k = m["dim_local_encoder"], m["dim_global"], m["dim_local_decoder"], m["cross_attn_k"]
    s = {"local_encoder.tok_embeddings.weight": (260, de),
         "local_encoder.patch_embedding_projection.weight": (k * de, de),
         "local_decoder.norm.weight": (dd,), "local_decoder.output.weight": (260, dd)}
    n_tables = m["encoder_hash_byte_group_nb_functions"] * len(m["encoder_hash_byte_group_size"])
    for t in range(n_tables):
        s[f"encoder_hash_tok_embedding.{t}.weight"] = (m["encoder_hash_byte_group_vocab"], de)
    for i in range(m["n_layers_local_encoder"]):
        s.update(block(f"local_encoder.layers.{i}", de, m["n_heads_local_encoder"],
                       m["n_heads_local_encoder"], m["multiple_of"]))
    for j in range(m["n_layers_local_encoder"] if m["cross_attn_all_layers_encoder"] else 1):
        s.update(cross(f"local_encoder.cross_attn_layers.{j}", de))
    if k * de != dg:
        s["global_transformer.token_embedding_projection.weight"] = (dg, k * de)
    for i in range(m["n_layers_global"]):
        s.update(block(f"global_transformer.layers.{i}", dg, m["n_heads_global"],
                       m["n_kv_heads_global"], m["multiple_of"]))
    if dg != dd:
        s["local_decoder.patch_embedding_projection.weight"] = (k * dd, dg)
    for i in range(m["n_layers_local_decoder"]):
        s.update(block(f"local_decoder.layers.{i}", dd, m["n_heads_local_decoder"],
                       m["n_heads_local_decoder"], m["multiple_of"]))
    for j in range(m["n_layers_local_decoder"] if m["cross_attn_all_layers_decoder"] else 1):
        s.update(cross(f"local_decoder.cross_attn_layers.{j}", dd))
    return s


def entropy_shapes(e):
    s = {"tok_embeddings.weight": (260, e["dim"]), "norm.weight": (e["dim"],),
         "output.weight": (260, e["dim"])}
    for i in range(e["n_layers"]):
        s.update(block(f"layers.{i}", e["dim"], e["n_heads"], e["n_heads"], 256))
    return s


def random_sd(shapes, gen):
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or "_norm" in name:
            t = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        out[name] = t.to(torch.bfloat16)
    return out


def main():
    gen = torch.Generator().manual_seed(0)
    blt = random_sd(blt_shapes(MODEL), gen)
    ent = random_sd(entropy_shapes(ENTROPY), gen)
    for folder, params, sd in [("reference_tiny", {"model": MODEL, "data": {"patcher_args": PATCHER}}, blt),
                               ("reference_tiny_entropy", {"entropy_model": ENTROPY}, ent)]:
        d = HERE / folder
        d.mkdir(exist_ok=True)
        (d / "params.json").write_text(json.dumps(params, indent=1))
        torch.save({"model": sd}, d / "consolidated.pth")
    arrays = {f"blt/{k}": v.float().numpy() for k, v in blt.items()}
    arrays.update({f"entropy/{k}": v.float().numpy() for k, v in ent.items()})
    np.savez_compressed(HERE / "reference_tiny_weights.npz", **arrays)


if __name__ == "__main__":
    main()
