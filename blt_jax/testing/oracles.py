"""Slow, obviously-correct oracles the tests hold the fast paths to (not used by the package).

- :func:`naive_generate` recomputes the whole model for every new byte (spec §11 done right:
  per-row entropies, BOS kept, EOS stops); the incremental generator must match it byte for byte.
- :func:`hand_bpb` scores windows through ``model.logits`` with a numpy log-softmax.
- :func:`fit_to_capacity` is the host version of the device patch buffer's overflow policy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.evaluation.evaluate import stream, windows
from blt_jax.inference import sampling
from blt_jax.inference.generate import Options, check_options, cut_at_stop
from blt_jax.text import patching
from blt_jax.text.patching import _check_p_max


def naive_generate(loaded: Any, prompt: bytes, opts: Options, row: int = 0,
                   record_logits: bool = False) -> tuple[bytes, list[np.ndarray], int]:
    """One prompt -> (new bytes, per-step logits, patches closed while generating)."""
    check_options(opts)
    codec = loaded.codec
    ids = list(codec.prompt(prompt))
    n0 = len(ids)
    choose = jax.jit(lambda lg, k: sampling.choose(lg, k, opts.temperature, opts.top_k,
                                                   opts.top_p))
    logits_hist = []
    out: list[int] = []
    stops = [list(s) for s in codec.loop_stops(opts.stop)]  # BPE: cut from the text below
    n_bytes = 0
    for step in range(opts.max_new):  # every id spends at least one byte of the budget
        if n_bytes >= opts.max_new:
            break
        logits = _naive_logits(loaded, ids)
        if record_logits:
            logits_hist.append(logits)
        key = sampling.step_keys(opts.seed, row + 1, step)[row:row + 1]
        x = int(choose(jnp.asarray(logits)[None], key)[0])
        ids.append(x)
        out.append(x)
        n_bytes += int(codec.nbytes[x])
        if x == codec.eos or any(len(out) >= len(s) and out[-len(s):] == s for s in stops):
            break
    kept = out[:-1] if out and out[-1] == codec.eos else out
    new = cut_at_stop(codec.decode(kept), opts.stop)[: opts.max_new]
    closed = _closed_patches(loaded, ids) - _closed_patches(loaded, ids[:n0])
    return new, logits_hist, closed


def _pad_to(n: int) -> int:
    return max(16, -(-n // 16) * 16)


def _naive_logits(loaded: Any, ids: list[int]) -> np.ndarray:
    n = len(ids)
    row = np.zeros((1, _pad_to(n)), np.int32)
    row[0, :n] = ids
    if loaded.patching_rule is None:  # a token model
        return loaded.logits(row)[0, n - 1]
    lengths = _patch_lengths(loaded, ids)
    width = _pad_to(len(lengths) + 1)
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(lengths)] = lengths
    padded[0, len(lengths) - 1] += row.shape[1] - n  # padding joins the virtual last patch
    return loaded.logits(row, padded)[0, n - 1]


def _patch_lengths(loaded: Any, ids: list[int]) -> np.ndarray:
    """Host patching of exactly these ids (include-next), entropies of this row alone."""
    arr = np.asarray(ids, np.int32)
    h = None
    if loaded.patching_rule.needs_entropies:
        row = np.zeros((1, _pad_to(len(ids))), np.int32)
        row[0, : len(ids)] = arr
        h = loaded.entropies(row)[0, : len(ids)]
    return patching.patch_lengths(arr, h, loaded.patching_rule, include_next=True)


def _closed_patches(loaded: Any, ids: list[int]) -> int:
    """Patches closed after reading `ids`: all but the one holding the virtual position."""
    if loaded.patching_rule is None:
        return 0
    return int((_patch_lengths(loaded, ids) > 0).sum()) - 1


def hand_bpb(model: Any, docs: Sequence[Any], seq_len: int) -> float:
    """Reference computation for tests: per-window log-softmax sums through `model.logits`."""
    ids, nbytes = stream(model, docs)
    nats = total = 0.0
    for b in windows(ids, nbytes, seq_len, None, 1):
        logits = model.logits(b["ids"])
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True)
        picked = np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
        nats -= float((picked * b["mask"]).sum())
        total += float((b["nbytes"] * b["mask"]).sum()) if "nbytes" in b else float(b["mask"].sum())
    return nats / math.log(2) / total


def fit_to_capacity(lengths: np.ndarray, p_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Host version of the overflow policy: (B, P) -> (B, p_max) lengths and overflow counts."""
    _check_p_max(p_max)
    lengths = np.atleast_2d(lengths)
    out = np.zeros((lengths.shape[0], p_max), np.int32)
    width = min(p_max, lengths.shape[1])
    out[:, :width] = lengths[:, :width]
    out[:, p_max - 1] += lengths[:, p_max:].sum(axis=1) if lengths.shape[1] > p_max else 0
    overflow = np.maximum((lengths > 0).sum(axis=1) - p_max, 0).astype(np.int32)
    return out, overflow
