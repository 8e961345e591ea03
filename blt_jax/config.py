"""Model and experiment configs (ml_collections) and their validation.

A BLT model config uses the reference's field names (so `params.json` maps one to one); the
entropy model and the token baseline share one `transformer` config. Presets cover the test,
bench and paper shapes (spec §12); experiment files in experiments/ build on them (loaded by `overrides`).
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

import ml_collections
from ml_collections import config_dict

from blt_jax.errors import UserError
from blt_jax.text import patching
from blt_jax.text.tokenizer import VOCAB_SIZE


def _opt_int() -> Any:  # a fresh typed None each time (a shared reference would link fields)
    return config_dict.placeholder(int)


def patching_config(mode: str = "global", threshold: float = patching.DEFAULT_THRESHOLD,
                    **kw: Any) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(mode=mode, threshold=threshold,
                                       threshold_add=config_dict.placeholder(float),
                                       max_patch_length=config_dict.placeholder(int),
                                       patch_size=4.5))
    c.update(kw)
    return c


def patching_rule(cfg: ml_collections.ConfigDict) -> patching.PatchRule:
    """The validated patching rule of a patching config (UserError naming a bad field)."""
    try:
        return patching.PatchRule(mode=cfg.mode, threshold=cfg.threshold,
                                  threshold_add=cfg.threshold_add,
                                  max_patch_length=cfg.max_patch_length,
                                  patch_size=cfg.patch_size)
    except ValueError as e:  # PatchRule checks only these user-set fields
        raise UserError(f"model.patching: {e}") from None


# model fields that change how a model runs, not which parameters it has: they may differ
# between a checkpoint and the run that loads it, and stored configs without them take these.
# scan_layers (lax.scan over the layers) is on in the train-step benchmark; off by default:
# XLA:CPU deadlocked (an all-gather rendezvous timeout) on training loops with scanned FSDP
# layers over 8 fake CPU devices in one process.
RUNTIME_DEFAULTS = dict(dtype="float32", attention_impl="fast", local_attention_block=128,
                        attention_chunk=512, remat=False, scan_layers=False)


def _common(**kw: Any) -> dict[str, Any]:
    base = dict(vocab_size=VOCAB_SIZE, norm_eps=1e-5, multiple_of=256, ffn_dim_multiplier=1.0,
                init_std_factor="disabled", **RUNTIME_DEFAULTS)
    base.update(kw)
    return base


def with_runtime_defaults(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A stored model config completed with runtime fields added since it was written."""
    with model_cfg.unlocked():
        for k, v in RUNTIME_DEFAULTS.items():
            if k not in model_cfg:
                model_cfg[k] = v
    return model_cfg


def same_parameters(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """The model fields, runtime fields aside, in which two model configs differ."""
    x, y = json.loads(a.to_json()), json.loads(b.to_json())
    return sorted(k for k in set(x) | set(y) if k not in RUNTIME_DEFAULTS and x.get(k) != y.get(k))


def transformer_config(**kw: Any) -> ml_collections.ConfigDict:
    """Llama-style decoder: the entropy model (window set) or a token baseline (window None)."""
    c = ml_collections.ConfigDict(_common(
        kind="transformer", dim=256, n_layers=4, n_heads=4, n_kv_heads=_opt_int(), rope_theta=10000.0,
        window=_opt_int(), eos_id=2))
    c.update(kw)
    return c


def blt_config(**kw: Any) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(_common(
        kind="blt",
        dim_local_encoder=256, n_layers_local_encoder=1, n_heads_local_encoder=4,
        dim_global=512, n_layers_global=8, n_heads_global=8, n_kv_heads_global=_opt_int(),
        dim_local_decoder=256, n_layers_local_decoder=4, n_heads_local_decoder=4,
        n_kv_heads=_opt_int(),  # local encoder/decoder GQA (reference: top-level n_kv_heads)
        cross_attn_k=2, cross_attn_nheads=4,
        cross_attn_all_layers_encoder=False, cross_attn_all_layers_decoder=True,
        local_attention_window_len=512,
        encoder_hash_byte_group_size=(3, 4, 5, 6, 7, 8),
        encoder_hash_byte_group_vocab=500002,
        encoder_hash_byte_group_nb_functions=1,
        # Fused hash-table rows are padded to a multiple of this so an FSDP mesh axis divides
        # them (6 x 500002 rows shard over no power of two); 1 = exact tables (single device).
        hash_row_multiple=1,
        rope_theta=500000.0,
        global_attention="causal",  # or "block_causal" (patch segments closed by EOS)
        patching=patching_config()))
    for key, value in kw.items():
        if key == "patching":
            c.patching.update(value)
        else:
            c[key] = value
    return c


# ---------------------------------------------------------------------------------------------
# Presets (spec §12). Rows marked [unverified] in the spec are used as given there.

def _blt_shape(e: tuple[int, int, int], g: tuple[int, int, int], d: tuple[int, int, int],
               k: int, cross_heads: int, **kw: Any) -> ml_collections.ConfigDict:
    return blt_config(dim_local_encoder=e[0], n_layers_local_encoder=e[1],
                      n_heads_local_encoder=e[2], dim_global=g[0], n_layers_global=g[1],
                      n_heads_global=g[2], dim_local_decoder=d[0], n_layers_local_decoder=d[1],
                      n_heads_local_decoder=d[2], cross_attn_k=k, cross_attn_nheads=cross_heads,
                      **kw)


MODEL_PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    # BLT shapes: (dim, layers, heads) of local encoder, global, local decoder.
    "blt_tiny": lambda: _blt_shape((32, 1, 2), (64, 2, 4), (32, 2, 2), 2, 2,
                                   encoder_hash_byte_group_size=(3, 4, 5),
                                   encoder_hash_byte_group_vocab=1021,
                                   local_attention_window_len=64, multiple_of=32),
    "blt_bench": lambda: _blt_shape((256, 1, 4), (512, 8, 8), (256, 4, 4), 2, 4,
                                    encoder_hash_byte_group_vocab=50000),
    "blt_400m": lambda: _blt_shape((768, 1, 12), (1280, 24, 10), (768, 7, 12), 2, 12,
                                   hash_row_multiple=4096),
    "blt_1b": lambda: _blt_shape((1024, 1, 16), (2048, 25, 16), (1024, 9, 16), 2, 16,
                                 hash_row_multiple=4096),
    "blt_8b": lambda: _blt_shape((1280, 1, 20), (4096, 32, 32), (1280, 6, 20), 4, 20,
                                 hash_row_multiple=4096),
    # Entropy models (reference: 768 wide, 14 layers, window 512, RoPE θ 10000).
    "entropy_tiny": lambda: transformer_config(dim=64, n_layers=2, n_heads=2, window=64,
                                               multiple_of=32),
    "entropy_100m": lambda: transformer_config(dim=768, n_layers=14, n_heads=12, window=512),
    # Token baselines: the latent transformer's shape over BPE ids, RoPE θ 500000.
    "bpe_tiny": lambda: transformer_config(dim=64, n_layers=2, n_heads=4, rope_theta=500000.0,
                                           vocab_size=512, multiple_of=32),
    "bpe_bench": lambda: transformer_config(dim=512, n_layers=8, n_heads=8, rope_theta=500000.0,
                                            vocab_size=8192),
    "bpe_400m": lambda: transformer_config(dim=1280, n_layers=24, n_heads=10,
                                           rope_theta=500000.0, vocab_size=128256),
    "bpe_1b": lambda: transformer_config(dim=2048, n_layers=25, n_heads=16, rope_theta=500000.0,
                                         vocab_size=128256),
    "bpe_8b": lambda: transformer_config(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                                         rope_theta=500000.0, vocab_size=128256),
}


def model_preset(name: str) -> ml_collections.ConfigDict:
    if name not in MODEL_PRESETS:
        raise UserError(f"model preset: unknown {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# Experiment configs: what a workdir trains and how


KINDS = ("blt", "entropy", "bpe")


def experiment_config(kind: str, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The full run config written to WORKDIR/config.json (experiments/*.py start from it)."""
    if kind not in KINDS:
        raise UserError(f"kind: must be one of {KINDS}, got {kind!r}")
    c = ml_collections.ConfigDict()
    c.kind = kind
    c.model = model
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        source="embedded",  # embedded | text | jsonl | tfds | preprocessed
        path="",  # files / glob (text, jsonl) or a preprocessed directory
        text_field="text",
        tfds_name="", tfds_data_dir="", tfds_split="train", tfds_eval_split="validation",
        seq_len=512,  # bytes per row (BLT, entropy model) or tokens per row (bpe)
        p_max=0,  # BLT patch buffer (latent length); 0 -> sized on training rows at the first start
        p_max_overflow=0.01,  # ... so that at most this fraction of rows overflows it
        packing="bytes",  # training rows: "bytes" (N + 1 ids) or "patches" (BLT: p_max patches
                          # per row, bytes padded to seq_len; the paper's, needs host patches)
        batch_size=8,
        eval_batch_size=8,
        loader_shards=0,  # document shards behind each global batch; 0 -> one per process
        num_workers=0,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=4e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, warmup_steps=2000,
        schedule="cosine", min_lr_ratio=0.0, clip=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, grad_accum=1, log_every=10, eval_every=200, eval_batches=8,
        peak_flops=0.0,  # for MFU; 0 -> measured matmul peak of this machine
        progress=True,
        init_from="",  # DIR[:STEP]: start from another workdir's params (fresh optimizer)
        profile_steps=(),  # (first, last): a jax.profiler trace of these steps under tb/
        nonfinite="stop",  # non-finite loss/grad norm: "stop", or "skip" the update
        max_skipped=10))  # "skip": stop after this many skipped steps
    c.checkpoint = ml_collections.ConfigDict(dict(
        every=200, keep_latest=3, keep_every=0, keep_best=1, pinned_steps=(), async_save=True))
    c.entropy = ml_collections.ConfigDict(dict(
        workdir="",  # trained entropy model (frozen, patches BLT rows); relative to the workdir
        target_bytes_per_patch=0.0,  # > 0: set the threshold from training data
        calibration_docs=256))
    c.bpe = ml_collections.ConfigDict(dict(  # the token baseline's tokenizer (text/bpe.py)
        tokenizer_path="",  # a Hugging Face byte-level tokenizer.json; "" -> train a BPE
        sample_docs=20_000, sample_bytes=100_000_000, seed=0))  # bounded BPE training sample
    c.mesh = ml_collections.ConfigDict(dict(
        shape=(1, -1, 1),  # (data, fsdp, tensor) inside a slice; one size may be -1
        dcn_shape=(1, 1, 1)))  # across slices (multi-slice: data parallel over DCN)
    return c


def paper_experiment(kind: str, preset: str, *, seq_len: int, batch_size: int,
                     p_max: int = 0) -> ml_collections.ConfigDict:
    """The paper-scale recipe shared by experiments/{entropy_100m,blt_*,bpe_*}.py (paper §4.8).

    AdamW β 0.9/0.95, ε 1e-8, weight decay 0.1, lr 4e-4, 2000 warm-up steps, cosine to 0,
    clipping 1.0; bf16 compute with fp32 parameters, rematerialised layers scanned as one loop
    body (TPU compiles in about a minute instead of 15-36); C4 from TFDS.
    """
    c = experiment_config(kind, model_preset(preset))
    c.model.update(dtype="bfloat16", remat=True, scan_layers=True)
    c.data.update(source="tfds", tfds_name="c4/en:3.1.0", tfds_eval_split="validation")
    c.data.update(seq_len=seq_len, batch_size=batch_size, p_max=p_max, eval_batch_size=64)
    c.optim.update(lr=4e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.0, clip=1.0)
    c.train.update(steps=100_000, eval_every=2000, eval_batches=50, log_every=50)
    c.checkpoint.update(every=1000, keep_latest=3, keep_every=10_000, keep_best=1)
    return c


def tiny_experiment(kind: str) -> ml_collections.ConfigDict:
    """CPU-sized runs on the embedded corpus (experiments/*_tiny.py and `blt-jax quickstart`).

    blt_tiny's latent transformer has bpe_tiny's shape (64 wide, 2 layers, 4 heads): the paper's
    pairing of a BLT with the token model of the same latent architecture.
    """
    preset, seq_len, entropy = _TINY[kind]
    c = experiment_config(kind, model_preset(preset))
    c.data.update(seq_len=seq_len, batch_size=8, eval_batch_size=16)
    c.optim.update(lr=3e-3, warmup_steps=20, min_lr_ratio=0.1)
    c.train.update(steps=300, eval_every=300, eval_batches=0, log_every=10)
    c.checkpoint.every = 100
    c.entropy.update(entropy)
    return c


# kind -> (model preset, data.seq_len, entropy settings) of the tiny runs; the BLT calibrates its
# threshold to 4 bytes/patch, the token baseline's rows are tokens (about 2 bytes each).
_TINY: dict[str, tuple[str, int, dict[str, Any]]] = {
    "entropy": ("entropy_tiny", 256, {}),
    "blt": ("blt_tiny", 256, dict(target_bytes_per_patch=4.0, calibration_docs=64)),
    "bpe": ("bpe_tiny", 128, {}),
}


def replaced(cfg: ml_collections.ConfigDict, fields: dict[str, Any]) -> ml_collections.ConfigDict:
    """A deep copy of cfg with dotted fields set (``{"data.p_max": 0}``); cfg is unchanged."""
    out = copy.deepcopy(cfg)
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node[name]
        node[leaf] = value
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _need(ok: bool, field: str, msg: str) -> None:
    if not ok:  # e.g. "data.seq_len: must be an integer >= 1, got 0" (then: set it right)
        raise UserError(f"{field}: {msg}")


def _heads(dim: int, heads: int, kv: int | None, prefix: str) -> None:
    _need(dim > 0 and heads > 0, prefix, f"dim and heads must be positive, got {dim}, {heads}")
    _need(dim % heads == 0, prefix, f"dim {dim} is not divisible by {heads} heads")
    _need((dim // heads) % 2 == 0, prefix, f"head dim {dim // heads} must be even for RoPE")
    if kv is not None:
        _need(kv > 0 and heads % kv == 0, prefix, f"{heads} heads not divisible by {kv} kv heads")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ValueError naming the field of an inconsistent model config."""
    _need(cfg.dtype in ("float32", "bfloat16"), "dtype", f"float32 or bfloat16, got {cfg.dtype}")
    _need(cfg.attention_impl in ("fast", "dense"), "attention_impl", "must be 'fast' or 'dense'")
    _need(cfg.local_attention_block >= 1, "local_attention_block", "must be >= 1")
    _need(cfg.attention_chunk >= 1, "attention_chunk", "must be >= 1")
    check = _MODEL_CHECKS.get(cfg.kind)
    _need(check is not None, "kind", f"'blt' or 'transformer', got {cfg.kind!r}")
    check(cfg)
    return cfg


def _check_transformer(cfg: ml_collections.ConfigDict) -> None:
    _heads(cfg.dim, cfg.n_heads, cfg.n_kv_heads, "dim/n_heads")
    _need(cfg.n_layers >= 1, "n_layers", f"must be >= 1, got {cfg.n_layers}")
    _need(cfg.window is None or cfg.window >= 1, "window", "must be >= 1 or None")
    _need(cfg.vocab_size >= 2, "vocab_size", "must be >= 2")


def _check_blt(cfg: ml_collections.ConfigDict) -> None:
    _need(cfg.vocab_size == VOCAB_SIZE, "vocab_size", f"BLT models use {VOCAB_SIZE} byte ids")
    _heads(cfg.dim_local_encoder, cfg.n_heads_local_encoder, cfg.n_kv_heads, "local encoder")
    _heads(cfg.dim_global, cfg.n_heads_global, cfg.n_kv_heads_global, "global")
    _heads(cfg.dim_local_decoder, cfg.n_heads_local_decoder, cfg.n_kv_heads, "local decoder")
    _need(cfg.dim_local_encoder == cfg.dim_local_decoder, "dim_local_decoder",
          f"must equal dim_local_encoder ({cfg.dim_local_encoder}): the decoder reads the "
          "encoder's byte states")
    _need(cfg.cross_attn_k >= 1, "cross_attn_k", "must be >= 1")
    _need(cfg.dim_global != cfg.dim_local_decoder or cfg.cross_attn_k == 1, "cross_attn_k",
          "k > 1 needs dim_global != dim_local_decoder (the decoder projection splits patches)")
    for d in (cfg.dim_local_encoder, cfg.dim_local_decoder):
        _need(d % cfg.cross_attn_nheads == 0, "cross_attn_nheads",
              f"{cfg.cross_attn_nheads} does not divide the local width {d}")
    _need(min(cfg.n_layers_local_encoder, cfg.n_layers_global, cfg.n_layers_local_decoder) >= 1,
          "n_layers", "every stack needs at least one layer")
    _need(cfg.local_attention_window_len >= 1, "local_attention_window_len", "must be >= 1")
    sizes = tuple(cfg.encoder_hash_byte_group_size)
    _need(all(1 <= n <= 64 for n in sizes), "encoder_hash_byte_group_size", f"bad sizes {sizes}")
    _need(cfg.encoder_hash_byte_group_nb_functions >= (1 if sizes else 0),
          "encoder_hash_byte_group_nb_functions", "must be >= 1 when hash sizes are given")
    _need(cfg.hash_row_multiple >= 1, "hash_row_multiple", "must be >= 1 (1 = no padding)")
    _need(cfg.global_attention in ("causal", "block_causal"), "global_attention",
          "must be 'causal' or 'block_causal'")
    patching_rule(cfg.patching)


def validate_run(cfg: ml_collections.ConfigDict) -> None:
    """Checks the run fields (sizes, intervals) before anything is built or written."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    for name, v in (("data.seq_len", d.seq_len), ("data.batch_size", d.batch_size),
                    ("data.eval_batch_size", d.eval_batch_size), ("train.steps", t.steps),
                    ("train.grad_accum", t.grad_accum), ("train.log_every", t.log_every),
                    ("train.eval_every", t.eval_every), ("checkpoint.every", cfg.checkpoint.every),
                    ("checkpoint.keep_latest", cfg.checkpoint.keep_latest)):
        _need(isinstance(v, int) and v >= 1, name, f"must be an integer >= 1, got {v!r}")
    for name, v in (("data.p_max", d.p_max), ("optim.warmup_steps", o.warmup_steps),
                    ("train.eval_batches", t.eval_batches), ("data.num_workers", d.num_workers),
                    ("data.loader_shards", d.loader_shards), ("train.max_skipped", t.max_skipped)):
        _need(isinstance(v, int) and v >= 0, name, f"must be an integer >= 0, got {v!r}")
    _need(d.packing in ("bytes", "patches"), "data.packing",
          f"'bytes' or 'patches', got {d.packing!r}")
    _need(0.0 <= d.p_max_overflow < 1.0, "data.p_max_overflow",
          f"must be a fraction in [0, 1), got {d.p_max_overflow!r}")
    _need(d.batch_size % t.grad_accum == 0, "train.grad_accum",
          f"{t.grad_accum} must divide data.batch_size {d.batch_size}")
    _need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    ps = tuple(t.profile_steps)
    _need(not ps or (len(ps) == 2 and 1 <= ps[0] <= ps[1]), "train.profile_steps",
          f"() or (first, last) with 1 <= first <= last, got {ps}")
    _need(t.nonfinite in ("stop", "skip"), "train.nonfinite", f"'stop' or 'skip', got "
          f"{t.nonfinite!r}")


# model.kind -> its checks (the model-config vocabulary; run kinds live in model/kinds.py)
_MODEL_CHECKS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "transformer": _check_transformer, "blt": _check_blt}
