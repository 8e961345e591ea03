"""The small-scale paper table: BLT (entropy, space and static patching) vs the BPE baseline at
equal training FLOPs on the embedded corpus (`blt-jax compare`, experiments/compare_tiny.py).

Every model gets the same FLOP budget (paper formulas, model FLOPs; the entropy model's own
training and its patching forward are reported separately). A BLT's steps follow from its
expected bytes/patch on training rows (calibrated for entropy patching, measured for space,
exact for static); the baseline's from its FLOPs per token. Each run evaluates at four
points for the BPB-vs-FLOPs curve; the final table scores the whole validation split with the
same bytes for every model, plus the noised variants of the robustness suite.

Fairness of the final table is asserted, not assumed: every model gets the same left context in
bytes (`context_bytes`, default: the largest every model was trained at; token windows are cut
where the byte budget ends) and must score exactly the same number of bytes; compare.json
records both and the measured mean context of each model. The BPB-vs-FLOPs curves come from the
in-training evaluations, which patch exactly (P_max = N + 1) like the final scoring but run on
each model's own training rows (`curve_policy` in compare.json).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np

from blt_jax import config, paths
from blt_jax.evaluation import evaluate, robustness, tables
from blt_jax.inference import api
from blt_jax.model import kinds
from blt_jax.pipeline import data
from blt_jax.text import patching
from blt_jax.training import metrics, train


def _bytes_per_patch(run: ml_collections.ConfigDict) -> float:
    rule = run.model.patching
    if rule.mode == "static":
        return float(rule.patch_size)
    if rule.mode in patching.ENTROPY_MODES:
        return float(run.entropy.target_bytes_per_patch)
    rows = next(data.batches(data.documents(run.data, "train"), seq_len=run.data.seq_len,
                             batch_size=64, seed=run.seed + 1, train=True))["ids"]
    lengths = patching.patch_lengths(rows, mode=rule.mode, include_next=False)
    return float(rows.size / (lengths > 0).sum())


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, log=print) -> dict[str, Any]:
    root = paths.local_only(workdir, "workdir")
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ent = config.tiny_experiment("entropy")
    ent.train.update(steps=cfg.entropy_steps, eval_every=cfg.entropy_steps)
    log(f"[compare] entropy model ({cfg.entropy_steps} steps)")
    train.run(ent, root / "entropy")
    runs: dict[str, ml_collections.ConfigDict] = {}
    for name, mode in (("blt_entropy", "global"), ("blt_space", "space"),
                       ("blt_static", "static"), ("bpe", None)):
        r = config.tiny_experiment("bpe" if mode is None else "blt")
        bytes_per_patch = None
        if mode is not None:
            r.model.patching.update(mode=mode, patch_size=float(cfg.static_patch_size))
            r.entropy.workdir = str(root / "entropy")
            r.entropy.target_bytes_per_patch = float(cfg.target_bytes_per_patch)
            bytes_per_patch = _bytes_per_patch(r)
        steps = kinds.steps_for_flops(r, float(cfg.train_flops), bytes_per_patch, minimum=4)
        r.train.update(steps=steps, eval_every=max(1, steps // cfg.curve_points),
                       eval_batches=cfg.curve_eval_batches, progress=cfg.progress)
        r.checkpoint.update(every=steps, keep_best=0)
        runs[name] = r
    results: dict[str, Any] = {}
    for name, r in runs.items():
        log(f"[compare] {name}: {r.train.steps} steps")
        summary = train.run(r, root / name)
        curve = [(m["train_flops"], m["eval_bpb"]) for m in _curve(root / name)]
        results[name] = {"summary": summary, "curve": curve}
    docs = data.documents(config.tiny_experiment("bpe").data, "validation")
    noisy_docs = docs[: cfg.noise_docs]
    if cfg.eval_docs:
        docs = docs[: cfg.eval_docs]
    models = {name: api.load(root / name) for name in runs}
    context = int(cfg.get("context_bytes", 0)) or shared_context_bytes(models, docs)
    for name, model in models.items():
        results[name]["val"] = evaluate.score(model, docs, context_bytes=context)
    fairness = check_fair({n: r["val"] for n, r in results.items()})
    noise = robustness.noise_table(models, noisy_docs, rate=cfg.noise_rate, seed=cfg.seed,
                                   context_bytes=context)
    for row in noise:
        results[row["model"]]["noise"] = row
    table = format_table(results) + (
        f"\n\nEvery model scored the same {fairness['scored_bytes']:.0f} bytes with at most "
        f"{fairness['context_bytes']} bytes of left context (mean per scored byte: "
        + ", ".join(f"{n} {c:.0f}" for n, c in fairness["mean_context_bytes"].items()) + ").")
    from blt_jax.evaluation import figures

    plot = figures.bpb_vs_flops({n: r["curve"] for n, r in results.items()},
                                str(root / "bpb_vs_flops.png"))
    out = {"config": json.loads(cfg.to_json()), "wall_seconds": time.perf_counter() - t0,
           "table": table, "plot": plot, "fairness": fairness,
           "curve_policy": "in-training eval, exact patching (P_max = N + 1), each model's own "
                           "training rows (seq_len ids)", "results": results}
    (root / "compare.json").write_text(json.dumps(out, indent=2, default=str))
    (root / "compare.md").write_text(table + "\n")
    log(table)
    log(f"[compare] plot: {plot}; wall time {out['wall_seconds'] / 60:.1f} min")
    return out


def shared_context_bytes(models: dict[str, api.Model], docs: Any) -> int:
    """The largest left context in bytes every model was trained at: a byte model's seq_len,
    a token model's seq_len x its measured bytes/token on `docs` (rounded down)."""
    out = []
    for model in models.values():
        ids, nbytes = evaluate.stream(model, docs)
        per_id = 1.0 if nbytes is None else float(nbytes.sum()) / max(len(ids), 1)
        out.append(int(model.config.data.seq_len * per_id))
    return max(1, min(out))


def check_fair(vals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Raises unless every model scored the same bytes with the same byte context budget."""
    scored = {n: v["bytes"] for n, v in vals.items()}
    budget = {n: v.get("context_bytes") for n, v in vals.items()}
    if len(set(scored.values())) != 1:
        raise RuntimeError(f"compare: models scored different byte counts {scored}")
    if len(set(budget.values())) != 1 or None in budget.values():
        raise RuntimeError(f"compare: models had different byte contexts {budget}")
    over = {n: v["max_context_bytes"] for n, v in vals.items()
            if v["max_context_bytes"] > v["context_bytes"]}
    if over:
        raise RuntimeError(f"compare: context beyond the byte budget {over}")
    return {"scored_bytes": next(iter(scored.values())),
            "context_bytes": next(iter(budget.values())),
            "mean_context_bytes": {n: v["mean_context_bytes"] for n, v in vals.items()}}


def _curve(workdir: pathlib.Path) -> list[dict[str, float]]:
    """(training FLOPs, eval BPB) at every evaluation; older runs whose eval rows lack the FLOPs
    get them interpolated between the logged training rows."""
    rows = metrics.read(workdir)
    logged = sorted((r["step"], r["train_flops"]) for r in rows
                    if "train_flops" in r and "eval_bpb" not in r)
    out = []
    for r in rows:
        if "eval_bpb" not in r:
            continue
        fl = r.get("train_flops")
        if fl is None and logged:
            fl = float(np.interp(r["step"], [s for s, _ in logged], [f for _, f in logged]))
        if fl is not None:
            out.append({"train_flops": fl, "eval_bpb": r["eval_bpb"]})
    return out


def format_table(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results.items():
        v, s, nz = r["val"], r["summary"], r.get("noise", {})
        fl = f"{v['flops_per_byte']:.3g}"
        if "flops_per_byte_with_entropy" in v:
            fl += f" ({v['flops_per_byte_with_entropy']:.3g})"
        rows.append((name, f"{v['bpb']:.3f}", f"{tables.bytes_per_unit(v, v, math.nan):.2f}",
                     f"{s['train_flops']:.3g}", fl, f"{nz.get('noised_mean', math.nan):.3f}",
                     f"{nz.get('degradation_pct', math.nan):+.1f}%"))
    return tables.render(("model", "val BPB", "bytes/patch (token)", "training FLOPs",
                          "inference FLOPs/byte (+entropy)", "noised BPB (mean)", "degradation"),
                         rows, markdown=True)
