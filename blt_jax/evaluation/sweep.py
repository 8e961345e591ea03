"""`blt-jax sweep-threshold`: one trained BLT evaluated at several entropy thresholds.

Per point: the threshold (given, or bisected on training rows to a target bytes/patch), the
measured mean bytes/patch on the evaluation text, inference FLOPs per byte with and without the
entropy model (paper formulas), and BPB. Larger patches cut the latent's FLOPs per byte; the
table shows what that costs in BPB for this checkpoint (it was trained at one threshold).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.evaluation import evaluate
from blt_jax.inference import api
from blt_jax.pipeline import data
from blt_jax.scale import sharding
from blt_jax.training.scorer import Scorer
from blt_jax.training.calibration import calibrate_threshold, calibration_rows


def run(workdir: str | pathlib.Path, *, thresholds: Sequence[float] = (),
        targets: Sequence[float] = (), split: str = "validation",
        max_batches: int | None = None, plot: str | None = None) -> list[dict[str, Any]]:
    if not thresholds and not targets:
        raise UserError("sweep: give --thresholds or --targets")
    model = api.load(workdir)
    if model.entropy_model is None:  # only a BLT patching with an entropy model has one
        raise UserError(f"workdir: {workdir} is not a BLT with an entropy model")
    base = model.config
    mesh = sharding.make_mesh(tuple(base.mesh.shape))
    docs = data.documents(base.data, split)
    points: list[tuple[float, float | None]] = [(float(t), None) for t in thresholds]
    for target in targets:
        cfg = config.replaced(base, {"entropy.target_bytes_per_patch": float(target)})
        h = np.asarray(model.entropy_model.entropies(calibration_rows(cfg)))
        points.append((calibrate_threshold(cfg, h)["threshold"], float(target)))
    rows = []
    for theta, target in points:
        # no overflow: every patch is real
        cfg = config.replaced(base, {"model.patching.threshold": theta,
                                     "data.p_max": base.data.seq_len + 1})
        scorer = Scorer(cfg, mesh, evaluate.patcher_of(model))
        r = evaluate.score(model, docs, max_batches=max_batches, scorer=scorer)
        rows.append({"threshold": theta, "target_bytes_per_patch": target,
                     "bytes_per_patch": r["bytes_per_patch"], "bpb": r["bpb"],
                     "flops_per_byte": r["flops_per_byte"],
                     "flops_per_byte_with_entropy": r["flops_per_byte_with_entropy"],
                     "bytes": r["bytes"]})
    if plot:
        from blt_jax.evaluation import figures

        figures.sweep_figure(rows, plot)
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'threshold':>10}{'target':>8}{'bytes/patch':>13}{'BPB':>8}{'FLOPs/byte':>13}" \
           f"{'+entropy':>13}"
    lines = [head]
    for r in rows:
        t = f"{r['target_bytes_per_patch']:.2f}" if r["target_bytes_per_patch"] else "-"
        lines.append(f"{r['threshold']:>10.4f}{t:>8}{r['bytes_per_patch']:>13.2f}{r['bpb']:>8.3f}"
                     f"{r['flops_per_byte']:>13.4g}{r['flops_per_byte_with_entropy']:>13.4g}")
    return "\n".join(lines)
