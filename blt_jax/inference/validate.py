"""Argument checks for the public inference API (and so the CLI): one-line UserErrors that name
the argument and the fix, raised before anything is compiled or run."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from blt_jax.errors import UserError


def ids(value: Any, vocab_size: int) -> np.ndarray:
    """(B, N) int32 ids in [0, vocab_size): 1-D or 2-D integers, at least one id per row."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"ids: need integer ids, got dtype {arr.dtype}; pass np.int32 ids "
                        "(tokenizer.encode gives them)")
    if arr.ndim not in (1, 2):
        raise UserError(f"ids: need a (N,) or (B, N) array, got shape {arr.shape}")
    arr = np.atleast_2d(arr)
    if arr.size == 0:
        raise UserError(f"ids: empty array (shape {arr.shape}); give at least one id per row")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        raise UserError(f"ids: values must be in [0, {vocab_size}), got [{lo}, {hi}]")
    return arr.astype(np.int32)


def generation(prompts: Sequence[bytes], max_new_bytes: Any, temperature: Any, top_k: Any,
               top_p: Any, max_context: int) -> None:
    """The sampling options and prompt sizes of generate()."""
    if not prompts:
        raise UserError("prompt: give at least one prompt")
    if not isinstance(max_new_bytes, int) or max_new_bytes < 1:
        raise UserError(f"max_new_bytes: must be an integer >= 1, got {max_new_bytes!r}")
    longest = max(len(p) for p in prompts)
    if longest > 64 * max_context:  # beyond any tokenizer's bytes per id (exact check: later)
        raise UserError(f"prompt: {longest} bytes cannot fit the context of {max_context} ids; "
                        "shorten the prompt")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature >= 0):
        raise UserError(f"temperature: must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k: must be an integer >= 1 (or unset), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise UserError(f"top_p: must be in (0, 1] (or unset), got {top_p!r}")


def generator(model: Any) -> None:
    """Only kinds with a decoder generate (BLT, BPE); an entropy model only scores."""
    if model.kind.decoder is None:
        raise UserError(f"generate: {model.workdir} holds a {model.kind} model, which does not "
                        "generate; use a BLT or BPE workdir")
