"""One object per model kind: the BLT, the entropy model and the token (BPE) baseline.

Each owns what differs between the kinds: which network it builds, its patching (rule, patch
buffer, ``P_max``), the forward pass and counts behind the objective, FLOPs per position, how
text becomes ids and back, and which decoder generates from it. Training, evaluation, inference
and the tools ask ``kinds.of(cfg)`` instead of comparing kind names. The two vocabularies meet
only here: a run's ``cfg.kind`` (blt | entropy | bpe) and its model's ``cfg.model.kind``
(blt | transformer).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.model import flops
from blt_jax.model.blt import BLT, check_inputs, patch_from_ids
from blt_jax.model import transformer
from blt_jax.pipeline.patch_packing import Packing
from blt_jax.model.transformer import Transformer
from blt_jax.text import bpe, patching
from blt_jax.text.tokenizer import EOS_ID, VOCAB_SIZE, decode_bytes, encode

Counts = dict[str, jax.Array]


# ---------------------------------------------------------------------------------------------
# Text <-> ids


class ByteCodec:
    """Byte ids (BLT, entropy model): one id per byte, so stop strings match inside the loop."""

    tokenizer = None  # what the data pipeline takes: None reads bytes
    eos = EOS_ID
    nbytes = np.ones(VOCAB_SIZE, np.int32)  # every id is one byte of the budget

    def prompt(self, text: bytes) -> np.ndarray:
        """BOS + bytes, no EOS: what generation and scoring continue from."""
        return encode(text, bos=True, eos=False)

    def stream(self, texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """BOS bytes EOS per document, concatenated; None: every id is one byte."""
        return np.concatenate([encode(t) for t in texts]), None

    def decode(self, ids: Sequence[int]) -> bytes:
        return decode_bytes(ids)

    def loop_stops(self, stop: Sequence[bytes]) -> list[np.ndarray]:
        """Stop strings as id sequences the decode loop can match."""
        return [np.asarray(self.prompt(s)[1:], np.int32) for s in stop]


class TokenCodec:
    """BPE ids: a token stands for several bytes, so stop strings are cut from decoded text."""

    def __init__(self, tok: bpe.BpeTokenizer):
        self.tokenizer, self.eos, self.nbytes = tok, tok.eos, tok.nbytes

    def prompt(self, text: bytes) -> np.ndarray:
        return self.tokenizer.encode_document(text)[0][:-1]  # <bos> + tokens

    def stream(self, texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """<bos> tokens <eos> per document and the text bytes each id stands for."""
        pairs = [self.tokenizer.encode_document(t) for t in texts]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def decode(self, ids: Sequence[int]) -> bytes:
        return self.tokenizer.decode_bytes(ids)  # raw bytes, invalid UTF-8 included

    def loop_stops(self, stop: Sequence[bytes]) -> list[np.ndarray]:
        return []  # token boundaries need not align with a stop string


Codec = ByteCodec | TokenCodec


# ---------------------------------------------------------------------------------------------
# The kinds


class Kind:
    """What one kind of run trains and how the rest of the package treats it."""

    name: str
    model_kind: str  # the model config's vocabulary: "blt" or "transformer"
    module: type[nnx.Module]
    byte_level = True  # ids are BLT byte ids (vocabulary 260)
    decoder: str | None = None  # which decoder inference.generate builds ("patches", "tokens")
    scores_entropies = False  # can patch a BLT (frozen into it; `blt-jax preprocess`)
    takes_patcher = False  # its step takes a frozen entropy model
    trains_tokenizer = False  # a tokenizer is trained in the workdir before the model

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"kinds.{type(self).__name__}()"

    # -- runs ---------------------------------------------------------------------------------

    def check(self, cfg: ml_collections.ConfigDict) -> None:
        """ValueError for a run config this kind cannot train."""
        if cfg.model.kind != self.model_kind:
            raise UserError(f"model.kind: a {self.name} run trains a {self.model_kind!r} model, "
                            f"got {cfg.model.kind!r}")
        if self.byte_level and cfg.model.vocab_size != VOCAB_SIZE:
            raise UserError(f"model.vocab_size: byte models use {VOCAB_SIZE} ids")
        if cfg.data.packing != "bytes" and not self.takes_patcher:
            raise UserError(f"data.packing: a {self.name} run packs rows by bytes; "
                            f"'{cfg.data.packing}' is for BLT runs")

    def resume(self, cfg: ml_collections.ConfigDict, stored: ml_collections.ConfigDict
               ) -> ml_collections.ConfigDict:
        """The config a resumed run continues with: cfg plus what the workdir recorded."""
        return config.replaced(cfg, {})

    def summary(self, cfg: ml_collections.ConfigDict, p_max: int) -> dict[str, Any]:
        return {}

    def batch_spec(self, cfg: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], Any]]:
        """(shape, dtype) of every array in a training batch (the AOT compile check's input)."""
        b, n = cfg.data.batch_size, cfg.data.seq_len
        return {"ids": ((b, n), jnp.int32), "targets": ((b, n), jnp.int32),
                "mask": ((b, n), jnp.bool_)}

    def packing(self, cfg: ml_collections.ConfigDict) -> Packing | None:
        """How training rows are packed: None = by bytes (the pipeline's default)."""
        return None

    # -- patching -------------------------------------------------------------------------

    def patch_rule(self, model_cfg: ml_collections.ConfigDict) -> patching.PatchRule | None:
        return None

    def p_max(self, cfg: ml_collections.ConfigDict) -> int:
        """The static patch buffer of a training row (0: no patches)."""
        return 0

    def uses_patcher(self, cfg: ml_collections.ConfigDict) -> bool:
        """Does a run of cfg need its frozen entropy model?"""
        return False

    def calibrates(self, cfg: ml_collections.ConfigDict) -> bool:
        """Does a run of cfg bisect its threshold on training rows before step 1?"""
        return False

    def sizes_buffer(self, cfg: ml_collections.ConfigDict) -> bool:
        """Does a run of cfg size its patch buffer on training rows before step 1?"""
        return False

    def patcher_dir(self, cfg: ml_collections.ConfigDict) -> str:
        """Where a workdir keeps the entropy model that patches it (relative; '' for none)."""
        return ""

    # -- forward ------------------------------------------------------------------------------

    def forward(self, model: Any, batch: dict[str, jax.Array], *, patcher: Any = None,
                p_max: int = 0, rule: patching.PatchRule | None = None
                ) -> tuple[jax.Array, Counts]:
        """Logits (B, N, V) of a batch and the kind's own counts (patch-buffer statistics)."""
        return model(batch["ids"]), {}

    def model_inputs(self, ids_BxN: np.ndarray, patch_lengths: Any,
                     patcher: Callable[[np.ndarray], np.ndarray]) -> tuple[Any, ...]:
        """The network's arguments for host ids (`patcher`: ids -> patch lengths)."""
        if patch_lengths is not None:
            raise UserError("patch_lengths: only BLT models take patch lengths")
        if self.byte_level:
            check_inputs(ids_BxN)
        return (ids_BxN,)

    def codec(self, workdir: str | pathlib.Path) -> Codec:
        return ByteCodec()

    # -- FLOPs (paper formulas, forward) ------------------------------------------------------

    def forward_flops(self, model_cfg: ml_collections.ConfigDict, n_ctx: int,
                      bytes_per_patch: float | None = None,
                      patcher_cfg: ml_collections.ConfigDict | None = None
                      ) -> tuple[float, float]:
        """(model, frozen patcher) forward FLOPs per trained position."""
        return flops.transformer_flops_per_token(model_cfg, n_ctx), 0.0

    def inference_flops(self, model_cfg: ml_collections.ConfigDict, n_ctx: int,
                        bytes_per_patch: float | None, bytes_per_token: float | None,
                        patcher_cfg: ml_collections.ConfigDict | None = None
                        ) -> dict[str, float]:
        """Inference FLOPs per byte (BLT: with and without its patcher)."""
        return {"flops_per_byte": flops.transformer_flops_per_token(model_cfg, n_ctx)}


class Blt(Kind):
    name, model_kind, module = "blt", "blt", BLT
    decoder = "patches"
    takes_patcher = True

    def resume(self, cfg: ml_collections.ConfigDict, stored: ml_collections.ConfigDict
               ) -> ml_collections.ConfigDict:
        """A BLT keeps the workdir's threshold (calibrated once) and its frozen entropy model."""
        recorded = {"entropy.workdir": stored.get("entropy", {}).get("workdir", "")}
        stored_patching = stored.get("model", {}).get("patching")
        if stored_patching is not None:
            recorded["model.patching.threshold"] = stored_patching.threshold
        if cfg.data.p_max == 0:  # the buffer measured at the first start
            recorded["data.p_max"] = stored.get("data", {}).get("p_max", 0)
        return config.replaced(cfg, recorded)

    def summary(self, cfg: ml_collections.ConfigDict, p_max: int) -> dict[str, Any]:
        return {"p_max": p_max, "threshold": cfg.model.patching.threshold}

    def check(self, cfg: ml_collections.ConfigDict) -> None:
        super().check(cfg)
        if cfg.data.packing != "patches":
            return
        if cfg.data.p_max < 2:
            raise UserError("data.p_max: packing by patches needs the patches per row, e.g. "
                            "--config.data.p_max=3640 for 16384-byte rows at 4.5 bytes/patch")
        if self.patch_rule(cfg.model).needs_entropies and cfg.data.source != "preprocessed":
            raise UserError(f"data.packing: 'patches' with {cfg.model.patching.mode!r} patching "
                            "reads stored entropies: use data.source='preprocessed' (blt-jax "
                            "preprocess), or data.packing='bytes'")

    def packing(self, cfg: ml_collections.ConfigDict) -> Packing | None:
        if cfg.data.packing != "patches":
            return None
        return Packing(self.patch_rule(cfg.model), cfg.data.p_max, cfg.data.seq_len)

    def batch_spec(self, cfg: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], Any]]:
        spec = super().batch_spec(cfg)
        if self.packing(cfg) is not None:
            spec["patch_lengths"] = ((cfg.data.batch_size, cfg.data.p_max), jnp.int32)
        return spec

    def patch_rule(self, model_cfg: ml_collections.ConfigDict) -> patching.PatchRule:
        return config.patching_rule(model_cfg.patching)

    def p_max(self, cfg: ml_collections.ConfigDict) -> int:
        """data.p_max, else (a config no run has measured: compile-check, a fresh Scorer) 1.5x
        the expected patches of a row (+2). Training measures it first (`sizes_buffer`)."""
        if cfg.data.p_max > 0:
            return int(cfg.data.p_max)
        rule, n = cfg.model.patching, cfg.data.seq_len + 1
        est = {"byte": 1.0, "static": float(rule.patch_size)}.get(
            rule.mode, cfg.entropy.target_bytes_per_patch or 2.0)
        return int(min(n, max(2, math.ceil(1.5 * n / est) + 2)))

    def uses_patcher(self, cfg: ml_collections.ConfigDict) -> bool:
        # space/static/byte patching needs no entropy model unless one is given (e.g. for eval)
        return self.patch_rule(cfg.model).needs_entropies or bool(cfg.entropy.workdir)

    def calibrates(self, cfg: ml_collections.ConfigDict) -> bool:
        return self.patch_rule(cfg.model).needs_entropies and cfg.entropy.target_bytes_per_patch > 0

    def sizes_buffer(self, cfg: ml_collections.ConfigDict) -> bool:
        return cfg.data.p_max == 0  # (packing by patches requires it given)

    def patcher_dir(self, cfg: ml_collections.ConfigDict) -> str:
        return cfg.entropy.workdir

    def patches(self, batch: dict[str, jax.Array], rule: patching.PatchRule, patcher: Any,
                p_max: int) -> patching.PatchBuffer:
        """Given patch lengths, else stored entropies (preprocessed data), else the patcher.

        A batch may carry ``patch_lengths`` (B, P) summing to N + 1 per row (include-next, first
        patch 1): the step then trains on exactly those patches (benchmarks, external patchers).
        """
        if "patch_lengths" in batch:
            lengths = batch["patch_lengths"].astype(jnp.int32)
            patch_ids, decoder_ids = patching.patch_ids_from_lengths(lengths, batch["ids"].shape[1])
            return patching.PatchBuffer(lengths, patch_ids, decoder_ids,
                                        jnp.zeros(lengths.shape[:1], jnp.int32))
        if rule.needs_entropies and "entropies" not in batch and patcher is not None:
            batch = dict(batch, entropies=jax.lax.stop_gradient(entropies(patcher, batch["ids"])))
        if "entropies" in batch and rule.needs_entropies:
            return patching.patch_buffer(p_max=p_max, ids=batch["ids"],
                                         entropies=batch["entropies"], rule=rule)
        return patch_from_ids(rule, patcher, batch["ids"], p_max)

    def forward(self, model: Any, batch: dict[str, jax.Array], *, patcher: Any = None,
                p_max: int = 0, rule: patching.PatchRule | None = None
                ) -> tuple[jax.Array, Counts]:
        ids = batch["ids"]
        buf = self.patches(batch, rule, patcher, p_max)
        logits = model(ids, buf.lengths)
        n = ids.shape[1]
        starts = jnp.cumsum(buf.lengths, axis=-1) - buf.lengths
        # a patch counts if it starts on a real byte (not the virtual position, not padding 0)
        start_ids = jnp.take_along_axis(ids, jnp.clip(starts, 0, n - 1), axis=1)
        real = (buf.lengths > 0) & (starts < n) & (start_ids != 0)
        return logits, {"n_patches": real.sum().astype(jnp.float32),
                        "n_positions": (ids != 0).sum().astype(jnp.float32),
                        "n_slots": jnp.float32(buf.lengths.size),
                        "overflow_rows": (buf.overflow > 0).sum().astype(jnp.float32),
                        "n_rows": jnp.float32(ids.shape[0])}

    def model_inputs(self, ids_BxN: np.ndarray, patch_lengths: Any,
                     patcher: Callable[[np.ndarray], np.ndarray]) -> tuple[Any, ...]:
        if patch_lengths is None:
            patch_lengths = patcher(ids_BxN)
        lengths = np.atleast_2d(np.asarray(patch_lengths, np.int32))
        check_inputs(ids_BxN, lengths)
        width = max(2, 1 << (lengths.shape[1] - 1).bit_length())  # fewer recompiles across calls
        lengths = np.pad(lengths, ((0, 0), (0, width - lengths.shape[1])))
        return jnp.asarray(ids_BxN), jnp.asarray(lengths)

    def forward_flops(self, model_cfg: ml_collections.ConfigDict, n_ctx: int,
                      bytes_per_patch: float | None = None,
                      patcher_cfg: ml_collections.ConfigDict | None = None
                      ) -> tuple[float, float]:
        fl = flops.blt_flops_per_byte(model_cfg, max(bytes_per_patch or 1.0, 1.0), n_ctx,
                                      patcher_cfg)
        return fl["blt"], fl.get("entropy_model", 0.0)

    def inference_flops(self, model_cfg: ml_collections.ConfigDict, n_ctx: int,
                        bytes_per_patch: float | None, bytes_per_token: float | None,
                        patcher_cfg: ml_collections.ConfigDict | None = None
                        ) -> dict[str, float]:
        fl = flops.blt_flops_per_byte(model_cfg, bytes_per_patch or 1.0, n_ctx, patcher_cfg)
        return {"flops_per_byte": fl["blt"], "flops_per_byte_with_entropy": fl["total"]}


def entropies(entropy_model: Transformer, ids_BxN: jax.Array) -> jax.Array:
    """A patcher's entropies (B, N), fp32: every patching path scores through here.

    With ``entropy_context`` (its model config) > 0, the context restarts every that many ids
    of a row, as the reference scores independent 8,192-id chunks (its tail padded with id 0,
    which causal attention never lets an earlier position see); unset or 0 (blt-jax's
    default): one context per row, limited only by the attention window.
    """
    every = int(entropy_model.cfg.get("entropy_context") or 0)
    b, n = ids_BxN.shape
    if every <= 0 or n <= every:
        return transformer.entropies(entropy_model, ids_BxN)
    pad = -n % every
    chunks = jnp.pad(ids_BxN, ((0, 0), (0, pad))).reshape(b * (n + pad) // every, every)
    return transformer.entropies(entropy_model, chunks).reshape(b, n + pad)[:, :n]


class EntropyModel(Kind):
    name, model_kind, module = "entropy", "transformer", Transformer
    scores_entropies = True


class TokenBaseline(Kind):
    name, model_kind, module = "bpe", "transformer", Transformer
    byte_level = False
    decoder = "tokens"
    trains_tokenizer = True

    def batch_spec(self, cfg: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], Any]]:
        b, n = cfg.data.batch_size, cfg.data.seq_len
        return super().batch_spec(cfg) | {"nbytes": ((b, n), jnp.int32)}

    def codec(self, workdir: str | pathlib.Path) -> Codec:
        return TokenCodec(bpe.load(workdir))

    def inference_flops(self, model_cfg: ml_collections.ConfigDict, n_ctx: int,
                        bytes_per_patch: float | None, bytes_per_token: float | None,
                        patcher_cfg: ml_collections.ConfigDict | None = None
                        ) -> dict[str, float]:
        per_token = flops.transformer_flops_per_token(model_cfg, n_ctx)
        return {"flops_per_byte": per_token / (bytes_per_token or 1.0),
                "bytes_per_token": bytes_per_token}


KINDS: dict[str, Kind] = {k.name: k for k in (Blt(), EntropyModel(), TokenBaseline())}
assert tuple(KINDS) == config.KINDS
MODULES: dict[str, type[nnx.Module]] = {k.model_kind: k.module for k in KINDS.values()}


def of(cfg: ml_collections.ConfigDict) -> Kind:
    """The kind of a run config (``cfg.kind``)."""
    kind = KINDS.get(cfg.kind)
    if kind is None:
        raise UserError(f"kind: must be one of {config.KINDS}, got {cfg.kind!r}")
    return kind


def module_class(model_cfg: ml_collections.ConfigDict) -> type[nnx.Module]:
    """The network class of a model config (``model.kind``: blt | transformer)."""
    cls = MODULES.get(model_cfg.kind)
    if cls is None:
        raise UserError(f"kind: 'blt' or 'transformer', got {model_cfg.kind!r}")
    return cls


def steps_for_flops(cfg: ml_collections.ConfigDict, budget: float,
                    bytes_per_patch: float | None = None, minimum: int = 1) -> int:
    """Training steps of cfg that spend `budget` model FLOPs (3 x forward, paper formulas)."""
    n, b = cfg.data.seq_len, cfg.data.batch_size
    fwd, _ = of(cfg).forward_flops(cfg.model, n, bytes_per_patch)
    return max(minimum, round(budget / (3 * b * n * fwd)))
