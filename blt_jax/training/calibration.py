"""What a BLT run measures on its own training rows before step 1: the entropy threshold that
gives the target bytes per patch, and the static patch buffer P_max.

P_max is the latent transformer's sequence length, so every slot beyond a row's patches is
padded compute; too few slots merge a row's last patches (overflow). Sizing it from the
patches-per-row distribution of real rows (a quantile, not a multiple of the mean) keeps both
small: see `data.p_max_overflow`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections
import numpy as np

from blt_jax import config
from blt_jax.model import kinds
from blt_jax.pipeline import data
from blt_jax.text import patching

Entropies = Callable[[np.ndarray], np.ndarray]


def calibration_rows(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """(R, N) ids of `entropy.calibration_docs` training rows (a seeded pass of the stream)."""
    docs = data.documents(cfg.data, "train")
    it = data.batches(docs, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                      seed=cfg.seed + 1, train=True)
    rows: list[np.ndarray] = []
    while len(rows) < cfg.entropy.calibration_docs:
        rows.extend(np.asarray(next(it)["ids"]))
    return np.stack(rows)


def first_start(cfg: ml_collections.ConfigDict, entropies: Entropies | None
                ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(config fields to record, reports by file name) of a run's first start: the calibrated
    threshold (threshold.json) where `entropy.target_bytes_per_patch` asks for one, then P_max
    (patch_buffer.json) where `data.p_max` is 0. One read of the rows and their entropies."""
    kind = kinds.of(cfg)
    calibrate, size = kind.calibrates(cfg), kind.sizes_buffer(cfg)
    if not (calibrate or size):
        return {}, {}
    rule = kind.patch_rule(cfg.model)
    ids = calibration_rows(cfg)
    h = np.asarray(entropies(ids)) if rule.needs_entropies and entropies is not None else None
    fields: dict[str, Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    if calibrate:
        reports["threshold.json"] = calibrate_threshold(cfg, h)
        fields["model.patching.threshold"] = reports["threshold.json"]["threshold"]
        rule = rule.replace(threshold=fields["model.patching.threshold"])
    if size:
        reports["patch_buffer.json"] = size_patch_buffer(patches_per_row(rule, ids, h),
                                                         cfg.data.p_max_overflow)
        fields["data.p_max"] = reports["patch_buffer.json"]["p_max"]
    return fields, reports


def calibrate_threshold(cfg: ml_collections.ConfigDict, h_RxN: np.ndarray) -> dict[str, float]:
    """Threshold giving `target_bytes_per_patch` on rows of real entropies (bisection)."""
    target = cfg.entropy.target_bytes_per_patch
    rows = list(h_RxN)
    rule = config.patching_rule(cfg.model.patching)
    theta = patching.threshold_for_target_patch_size(
        rows, target, mode="monotonic" if rule.mode == "monotonic" else "global",
        max_patch_length=rule.max_patch_length)
    rule = rule.replace(threshold=float(theta))
    n = sum(len(patching.patch_lengths(None, r, rule, include_next=False)) for r in rows)
    return {"target_bytes_per_patch": target, "threshold": float(theta),
            "measured_bytes_per_patch": sum(len(r) for r in rows) / n, "rows": len(rows)}


def patches_per_row(rule: patching.PatchRule, ids_RxN: np.ndarray,
                    h_RxN: np.ndarray | None = None) -> np.ndarray:
    """(R,) patch starts of each row as the device patcher counts them (N + 1 positions, the
    virtual next-byte patch included): the P_max a row needs to fit without overflow."""
    r, n = ids_RxN.shape
    starts = patching.start_mask(np, rule, length=n, include_next=True, ids=ids_RxN,
                                 entropies=h_RxN, batch=r)
    return np.asarray(starts).sum(-1)


def size_patch_buffer(counts_R: np.ndarray, overflow: float) -> dict[str, Any]:
    """The smallest P_max that at most a fraction `overflow` of the rows exceeds, with the
    share of slots left empty and of rows overflowing under it."""
    counts = np.sort(np.asarray(counts_R))
    r = len(counts)
    k = min(r - 1, max(0, math.ceil(r - 1 - overflow * r - 1e-9)))  # <= overflow*r rows above
    p_max = max(2, int(counts[k]))
    return {"p_max": p_max, "rows": r, "overflow_target": float(overflow),
            "mean_patches": float(counts.mean()), "max_patches": int(counts[-1]),
            "padding": float(1.0 - np.minimum(counts, p_max).mean() / p_max),
            "overflow_rows": float((counts > p_max).mean())}
