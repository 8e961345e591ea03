"""`blt-jax import-reference`: released BLT weights -> a blt-jax workdir that `load()` opens.

Sources: (a) a facebookresearch/blt release folder (`params.json` TrainArgs + `consolidated.pth`
with ``{"model": state_dict}``, read without torch) or (b) a Hugging Face
folder (`config.json` + `*.safetensors`, entropy model bundled under ``model.patcher.``, read with
a small built-in safetensors reader). Every hyper-parameter comes from the source's config.
Conventions made exact here: Linear weights [out, in] -> kernels (in, out); hash tables fused
function-major; RoPE has no weights (interleaved pairs in both); cross-attention k-row splits are
plain reshapes of the same matrices.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np
from flax import nnx

from blt_jax import config, paths
from blt_jax.errors import UserError
from blt_jax.text.tokenizer import VOCAB_SIZE
from blt_jax.tools.weight_files import read_pth, read_safetensors  # noqa: F401 (re-exported)
from blt_jax.training import checkpoint

_HF = {"attention": "self_attn", "feed_forward": "mlp", "attention_norm": "input_layernorm",
       "ffn_norm": "post_attention_layernorm", "tok_embeddings": "embed_tokens",
       "cross_attn_norm_q": "q_norm", "cross_attn_norm_kv": "k_norm", "w1": "gate_proj",
       "w2": "down_proj", "w3": "up_proj", "wq": "q_proj", "wk": "k_proj", "wv": "v_proj",
       "wo": "o_proj", "output": "lm_head"}


def _json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"source: {path} is not valid JSON ({e}); re-download it") from None


def _weights(reader: Callable[[pathlib.Path], dict[str, np.ndarray]], path: pathlib.Path
             ) -> dict[str, np.ndarray]:
    """The weight readers' ValueErrors describe the file (truncated, wrong format)."""
    try:
        return reader(path)
    except ValueError as e:
        raise UserError(f"{e}; re-download {path.name}") from None


def _read_folder(src: pathlib.Path) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    if not src.is_dir():
        raise UserError(f"source: {src} is not a directory")
    if (src / "params.json").exists() and (src / "consolidated.pth").exists():
        return "reference", _json(src / "params.json"), _weights(read_pth,
                                                                  src / "consolidated.pth")
    shards = sorted(src.glob("*.safetensors"))
    if (src / "config.json").exists() and shards:
        weights: dict[str, np.ndarray] = {}
        for shard in shards:
            weights.update(_weights(read_safetensors, shard))
        return "hf", _json(src / "config.json"), weights
    raise UserError(f"source: {src} has neither params.json + consolidated.pth (reference "
                     "release) nor config.json + *.safetensors (Hugging Face)")


# ---------------------------------------------------------------------------------------------
# Configs

def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(f"source config: {msg}")


def _hash_sizes(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(int(x) for x in value.split(",") if x)
    return tuple(int(x) for x in value)


_STACKS = ("local_encoder", "global", "local_decoder")
_HF_STACK = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads"}


def _stack_fields(get: Callable[[str, str], Any]) -> dict[str, Any]:
    """dim_S, n_layers_S and n_heads_S of the BLT's three stacks S; get(S, field) reads them."""
    return {f"{field}_{stack}": get(stack, field) for stack in _STACKS
            for field in ("dim", "n_layers", "n_heads")}


def _hash_fields(src: Mapping[str, Any], vocab: int, nb_functions: int) -> dict[str, Any]:
    """The hash n-gram fields: the same keys in params.json and HF config.json, other defaults."""
    return dict(
        encoder_hash_byte_group_size=_hash_sizes(src.get("encoder_hash_byte_group_size")),
        encoder_hash_byte_group_vocab=int(src.get("encoder_hash_byte_group_vocab", vocab)),
        encoder_hash_byte_group_nb_functions=int(src.get("encoder_hash_byte_group_nb_functions",
                                                         nb_functions)))


def patching_from_reference(p: Mapping[str, Any]) -> dict[str, Any]:
    mode = p.get("patching_mode", "entropy")
    if mode == "entropy":
        mode = "monotonic" if p.get("monotonicity") else \
            "combined" if p.get("threshold_add") is not None else "global"
    _need(mode in ("global", "monotonic", "combined", "space", "static", "byte", "bpe"),
          f"patching_mode {mode!r} is not supported")
    out = dict(mode=mode, threshold=float(p.get("threshold", 1.335442066192627)),
               patch_size=float(p.get("patch_size", 4.5)))
    if p.get("threshold_add") is not None:
        out["threshold_add"] = float(p["threshold_add"])
    if p.get("max_patch_length") is not None:
        out["max_patch_length"] = int(p["max_patch_length"])
    return out


def blt_config_from_reference(m: Mapping[str, Any], patcher: Mapping[str, Any]
                              ) -> ml_collections.ConfigDict:
    """params.json["model"] (ByteLatentTransformerArgs) + data.patcher_args -> BLT config."""
    for flag in ("cross_attn_encoder", "cross_attn_decoder", "cross_attn_init_by_pooling",
                 "use_local_encoder_transformer"):
        _need(bool(m.get(flag, False)), f"{flag}=false is not supported (released models use true)")
    _need(m.get("downsampling_by_pooling", "max") == "max", "only max pooling is supported")
    _need(m.get("cross_attn_window_encoder") is None and m.get("cross_attn_window_decoder") is None,
          "windowed cross-attention is not supported")
    _need(not m.get("encoder_enable_byte_ngrams", False), "frequency n-gram tables unsupported")
    _need(m.get("patching_mode", "entropy") != "", "the BOE-prefix static mode is not supported")
    if m.get("head_dim") is not None:
        for d, h in [(f"dim_{s}", f"n_heads_{s}") for s in _STACKS]:
            _need(m[d] // m[h] == m["head_dim"], f"head_dim {m['head_dim']} != {d}/{h}")
    attn = m.get("attn_bias_type", "causal")
    _need(attn in ("causal", "block_causal", "local_block_causal"),
          f"attn_bias_type {attn!r} unsupported")
    fields = dict(
        _stack_fields(lambda stack, field: m[f"{field}_{stack}"]),  # the same names
        n_kv_heads_global=m.get("n_kv_heads_global"), n_kv_heads=m.get("n_kv_heads"),
        cross_attn_k=m.get("cross_attn_k") or 1, cross_attn_nheads=m["cross_attn_nheads"],
        cross_attn_all_layers_encoder=bool(m.get("cross_attn_all_layers_encoder", False)),
        cross_attn_all_layers_decoder=bool(m.get("cross_attn_all_layers_decoder", False)),
        local_attention_window_len=m.get("local_attention_window_len") or 512,
        **_hash_fields(m, vocab=30000, nb_functions=3),
        rope_theta=float(m.get("rope_theta", 10000.0)), norm_eps=float(m.get("norm_eps", 1e-5)),
        multiple_of=int(m.get("multiple_of", 256)),
        ffn_dim_multiplier=float(m.get("ffn_dim_multiplier") or 1.0),
        global_attention="block_causal" if attn == "block_causal" else "causal",
        patching=patching_from_reference(patcher))
    return config.validate(config.blt_config(**fields))


# what the reference's load_entropy_model builds whatever params.json says (spec §2.1)
_REF_ENTROPY_FIXED = {"sliding_window": 512, "rope_theta": 10000.0, "n_kv_heads": None,
                      "norm_eps": 1e-5, "multiple_of": 256}


def entropy_config_from_reference(e: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """params.json["entropy_model"] -> transformer config, as the reference loader builds it:
    only dim, n_layers, n_heads, ffn_dim_multiplier and vocab_size are read; window 512,
    RoPE θ 10000 and the other fields are fixed. Fields it ignores but that say otherwise are
    reported in the config's ``ignored_source_fields`` (and by import-reference)."""
    _need(int(e.get("vocab_size", VOCAB_SIZE)) in (VOCAB_SIZE, -1), "entropy vocab must be 260")
    cfg = config.validate(config.transformer_config(
        dim=e["dim"], n_layers=e["n_layers"], n_heads=e["n_heads"], n_kv_heads=None,
        window=512, rope_theta=10000.0, norm_eps=1e-5, multiple_of=256,
        ffn_dim_multiplier=float(e.get("ffn_dim_multiplier") or 1.0)))
    return cfg


def ignored_entropy_fields(e: Mapping[str, Any]) -> dict[str, Any]:
    """params.json entropy fields the reference loader ignores whose values differ from what
    it builds (what an import should tell the user)."""
    return {k: e[k] for k, fixed in _REF_ENTROPY_FIXED.items()
            if e.get(k) is not None and e[k] != fixed}


def _theta(c: Mapping[str, Any], default: float) -> float:
    rp = c.get("rope_parameters") or c.get("rope_scaling") or {}
    return float(c.get("rope_theta", rp.get("rope_theta", default)))


def _hf_multiple_of(subs: Mapping[str, Mapping[str, Any]]) -> int:
    """The reference's SwiGLU rule has one `multiple_of`; find the one that reproduces every
    sub-config's explicit intermediate_size (HF stores sizes, the reference a rule)."""
    from blt_jax.model.layers import ffn_hidden_dim

    sized = {k: c for k, c in subs.items() if c.get("intermediate_size") is not None}
    for mult in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if all(ffn_hidden_dim(c["hidden_size"], mult) == int(c["intermediate_size"])
               for c in sized.values()):
            return mult
    sizes = {k: (c["hidden_size"], c["intermediate_size"]) for k, c in sized.items()}
    raise UserError(f"source config: intermediate_size values {sizes} do not follow the "
                     "SwiGLU rule multiple_of * ceil(int(8d/3) / multiple_of) for one multiple_of")


def configs_from_hf(c: Mapping[str, Any]) -> tuple[ml_collections.ConfigDict,
                                                   ml_collections.ConfigDict | None]:
    enc, dec, glob = c["encoder_config"], c["decoder_config"], c["global_config"]
    _need(enc["num_attention_heads"] == dec["num_attention_heads"],
          "encoder and decoder cross-attention head counts differ")
    multiple_of = _hf_multiple_of({"encoder_config": enc, "decoder_config": dec,
                                   "global_config": glob})
    kv_local = enc.get("num_key_value_heads")
    patching = patching_from_reference(dict(
        patching_mode=c.get("patching_mode", "entropy"), threshold=c.get("patching_threshold",
                                                                          1.335442066192627),
        monotonicity=c.get("monotonicity", False), threshold_add=c.get("patching_threshold_add"),
        max_patch_length=c.get("max_patch_length"), patch_size=c.get("patch_size", 4.5)))
    subs = dict(zip(_STACKS, (enc, glob, dec)))
    blt_cfg = config.validate(config.blt_config(
        **_stack_fields(lambda stack, field: subs[stack][_HF_STACK[field]]),
        n_kv_heads_global=glob.get("num_key_value_heads"),
        n_kv_heads=kv_local if kv_local != enc["num_attention_heads"] else None,
        cross_attn_k=c.get("cross_attn_k", 2), cross_attn_nheads=enc["num_attention_heads"],
        cross_attn_all_layers_encoder=bool(enc.get("cross_attn_all_layers", False)),
        cross_attn_all_layers_decoder=bool(dec.get("cross_attn_all_layers", True)),
        local_attention_window_len=enc.get("sliding_window") or 512,
        **_hash_fields(c, vocab=500002, nb_functions=1),
        rope_theta=_theta(glob, 500000.0), norm_eps=float(enc.get("rms_norm_eps", 1e-5)),
        multiple_of=multiple_of, patching=patching))
    p = c.get("patcher_config")
    ent = None
    if p:
        ent = config.validate(config.transformer_config(
            multiple_of=_hf_multiple_of({"patcher_config": p}),
            dim=p["hidden_size"], n_layers=p["num_hidden_layers"],
            n_heads=p["num_attention_heads"],
            n_kv_heads=(p.get("num_key_value_heads")
                        if p.get("num_key_value_heads") != p["num_attention_heads"] else None),
            window=p.get("sliding_window") or 512, rope_theta=_theta(p, 10000.0),
            norm_eps=float(p.get("rms_norm_eps", 1e-5))))
    return blt_cfg, ent


# ---------------------------------------------------------------------------------------------
# Weights

def _source_key(path: tuple[Any, ...], naming: str, prefix: str) -> str:
    parts = [str(p) for p in path[:-1]]  # drop kernel / embedding / weight
    if naming == "hf":
        parts = [_HF.get(p, p) for p in parts]
    return prefix + ".".join(parts) + ".weight"


def _fill(abstract: Any, sd: Mapping[str, np.ndarray], naming: str, prefix: str,
          special: Mapping[tuple[Any, ...], np.ndarray]) -> Any:
    flat = []
    used = set()
    for path, var in nnx.to_flat_state(abstract):
        shape = tuple(var.get_value().shape)
        if path in special:
            arr = special[path]
        else:
            key = _source_key(path, naming, prefix)
            if key not in sd:
                raise UserError(f"weights: missing {key!r} (needed for {'/'.join(map(str, path))})")
            arr = sd[key]
            used.add(key)
            if path[-1] == "kernel":
                arr = arr.T  # torch Linear [out, in] -> (in, out)
        if tuple(arr.shape) != shape:
            raise UserError(f"weights: {'/'.join(map(str, path))} has shape {arr.shape}, the "
                             f"config implies {shape}")
        flat.append((path, var.replace(np.ascontiguousarray(arr, np.float32))))
    return nnx.from_flat_state(flat), used


def blt_params_from_state_dict(sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict,
                               naming: str = "reference") -> Any:
    """Reference/HF BLT state dict -> nnx State of blt_jax.model.blt.BLT (strict: no key ignored)."""
    from blt_jax.model.blt import BLT

    abstract = nnx.state(nnx.eval_shape(lambda: BLT(cfg, rngs=nnx.Rngs(0))))
    prefix = "model." if naming == "hf" else ""
    special: dict[tuple[Any, ...], np.ndarray] = {}
    n_tables = cfg.encoder_hash_byte_group_nb_functions * len(cfg.encoder_hash_byte_group_size)
    hash_keys: list[str] = []
    if n_tables:
        if naming == "hf":
            hash_keys = ["model.encoder_hash_tok_embedding.weight"]
        else:
            hash_keys = [f"encoder_hash_tok_embedding.{t}.weight" for t in range(n_tables)]
        missing = [k for k in hash_keys if k not in sd]
        if missing:
            raise UserError(f"weights: missing hash tables {missing[:2]}")
        fused = np.concatenate([sd[k] for k in hash_keys], axis=0)
        rows = _padded_rows(abstract, fused.shape[0])
        special[("local_encoder", "hash_embeddings", "embedding")] = np.pad(
            fused, ((0, rows - fused.shape[0]), (0, 0)))  # never-indexed shard padding
    if naming == "hf":
        special[("local_decoder", "output", "kernel")] = sd["lm_head.weight"].T
    state, used = _fill(abstract, sd, naming, prefix, special)
    used |= set(hash_keys) | ({"lm_head.weight"} if naming == "hf" else set())
    unused = [k for k in sd if k not in used and not k.startswith(("model.patcher.", "patcher."))
              and not k.endswith(("rope.freqs_cis", "rotary_emb.inv_freq"))]
    if unused:
        raise UserError(f"weights: {len(unused)} source tensors have no place in the config, "
                         f"e.g. {unused[:3]} (wrong params.json?)")
    return state


def _padded_rows(abstract: Any, real_rows: int) -> int:
    rows = abstract["local_encoder"]["hash_embeddings"]["embedding"].get_value().shape[0]
    if rows < real_rows:
        raise UserError(f"weights: {real_rows} hash rows do not fit the config's {rows}")
    return rows


def transformer_params_from_state_dict(sd: Mapping[str, np.ndarray],
                                       cfg: ml_collections.ConfigDict,
                                       naming: str = "reference", prefix: str = "") -> Any:
    from blt_jax.model.transformer import Transformer

    abstract = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    state, used = _fill(abstract, sd, naming, prefix, {})
    unused = [k for k in sd if k.startswith(prefix) and k not in used
              and not k.endswith(("rope.freqs_cis", "rotary_emb.inv_freq"))]
    if unused:
        raise UserError(f"weights: entropy model tensors without a place: {unused[:3]}")
    return state


# ---------------------------------------------------------------------------------------------
# The command

def _write_workdir(out: pathlib.Path, kind: str, model_cfg: ml_collections.ConfigDict,
                   params: Any, source: str, entropy_dir: str = "") -> None:
    exp = config.experiment_config(kind, model_cfg)
    exp.entropy.workdir = entropy_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(exp.to_json(indent=2))
    checkpoint.save_params_only(out, params, step=0, meta={"imported_from": source})


def import_reference(blt_src: str, out: str, entropy_src: str | None = None,
                     entropy_dtype: str = "float32", entropy_context: int = 0) -> str:
    """Converts released weights into a workdir at `out` (refuses to overwrite one).

    entropy_dtype: the entropy model's compute dtype. float32 (default) gives the exact
    entropies of the weights; bfloat16 is what the reference runs (its loader sets the torch
    default dtype to bf16), so patch boundaries near θ match the reference more often.
    entropy_context: ids after which the entropy model's context restarts when it scores
    patching entropies; 8192 is what the reference does (independent 8,192-id chunks), 0
    (default) never restarts. Both are recorded in entropy_model/config.json.
    """
    if entropy_dtype not in ("float32", "bfloat16"):
        raise UserError(f"entropy_dtype: float32 or bfloat16, got {entropy_dtype!r}")
    if isinstance(entropy_context, bool) or not isinstance(entropy_context, int) \
            or entropy_context < 0:
        raise UserError(f"entropy_context: ids per context >= 1 (the reference: 8192), or 0 "
                        f"for none, got {entropy_context!r}")
    out_p = paths.local_only(out, "out")
    if out_p.exists() and any(out_p.iterdir()):
        raise UserError(f"out: {out} exists and is not empty; choose a new directory")
    naming, cfg_json, sd = _read_folder(paths.local_only(blt_src, "blt"))
    if naming == "reference":
        model_cfg = blt_config_from_reference(cfg_json["model"],
                                              cfg_json.get("data", {}).get("patcher_args", {}))
        ent_cfg, ent_sd, ent_naming, ent_prefix = None, None, "reference", ""
        if entropy_src:
            ent_naming, ent_json, ent_sd = _read_folder(paths.local_only(entropy_src, "entropy"))
            if ent_naming != "reference":
                raise UserError("entropy: give the reference entropy folder (params.json + "
                                 "consolidated.pth) with a reference BLT folder")
            ent_args = ent_json.get("entropy_model", ent_json)
            ent_cfg = entropy_config_from_reference(ent_args)
            ignored = ignored_entropy_fields(ent_args)
            if ignored:
                print(f"import-reference: the reference loader ignores entropy params.json "
                      f"fields {ignored}; built as it does (window 512, RoPE θ 10000)")
    else:
        model_cfg, ent_cfg = configs_from_hf(cfg_json)
        ent_sd, ent_naming, ent_prefix = sd, "hf", "model.patcher."
        if entropy_src:
            raise UserError("entropy: a Hugging Face folder bundles its entropy model; "
                             "drop --entropy")
    needs_entropy = model_cfg.patching.mode in ("global", "monotonic", "combined")
    if needs_entropy and ent_cfg is None:
        raise UserError("entropy: this BLT patches by entropy; pass --entropy with the entropy "
                         "model folder")
    params = blt_params_from_state_dict(sd, model_cfg, naming)
    ent_params = transformer_params_from_state_dict(ent_sd, ent_cfg, ent_naming, ent_prefix) \
        if ent_cfg is not None else None
    if ent_params is not None:
        ent_cfg.update(dtype=entropy_dtype, entropy_context=entropy_context)
        _write_workdir(out_p / "entropy_model", "entropy", ent_cfg, ent_params,
                       str(entropy_src or blt_src))
    _write_workdir(out_p, "blt", model_cfg, params, str(blt_src),
                   "entropy_model" if ent_params is not None else "")
    return str(out_p)
