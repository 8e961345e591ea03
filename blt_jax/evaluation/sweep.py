"""`blt-jax sweep-threshold`: one trained BLT evaluated at several entropy thresholds.

Per point: the threshold (given, or bisected on training rows to a target bytes/patch), the
measured mean bytes/patch on the evaluation text, inference FLOPs per byte with and without the
entropy model (paper formulas), and BPB. Larger patches cut the latent's FLOPs per byte; the
table shows what that costs in BPB for this checkpoint (it was trained at one threshold).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

from blt_jax.inference import api
from blt_jax.pipeline import data
from blt_jax.evaluation import evaluate
from blt_jax.scale import sharding


def run(workdir: str | pathlib.Path, *, thresholds: Sequence[float] = (),
        targets: Sequence[float] = (), split: str = "validation",
        max_batches: int | None = None, plot: str | None = None) -> list[dict[str, Any]]:
    from blt_jax.training.train import Trainer, calibrate_threshold, frozen_of

    if not thresholds and not targets:
        raise ValueError("sweep: give --thresholds or --targets")
    model = api.load(workdir)
    if model.kind != "blt" or model.entropy_model is None:
        raise ValueError(f"workdir: {workdir} is not a BLT with an entropy model")
    base = model.config
    mesh = sharding.make_mesh(tuple(base.mesh.shape))
    docs = data.documents(base.data, split)
    points: list[tuple[float, float | None]] = [(float(t), None) for t in thresholds]
    for target in targets:
        cfg = base.copy_and_resolve_references()
        cfg.entropy.target_bytes_per_patch = float(target)
        points.append((calibrate_threshold(cfg, model.entropy_model)["threshold"], float(target)))
    rows = []
    for theta, target in points:
        cfg = base.copy_and_resolve_references()
        cfg.model.patching.threshold = theta
        cfg.data.p_max = cfg.data.seq_len + 1  # no overflow: every patch is real
        trainer = Trainer(cfg, mesh, frozen_of(model.entropy_model))
        r = evaluate.score(model, docs, max_batches=max_batches, trainer=trainer)
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
