"""The small-scale paper table: BLT (entropy, space and static patching) vs the BPE baseline at
equal training FLOPs on the embedded corpus (`blt-jax compare`, experiments/compare_tiny.py).

Every model gets the same FLOP budget (paper formulas, model FLOPs; the entropy model's own
training and its patching forward are reported separately). A BLT's steps follow from its
expected bytes/patch on training rows (calibrated for entropy patching, measured for space,
exact for static); the baseline's from its tokenizer's bytes/token. Each run evaluates at four
points for the BPB-vs-FLOPs curve; the final table scores the whole validation split with the
same bytes for every model, plus the noised variants of the robustness suite.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np

from blt_jax.inference import api
from blt_jax.text import bpe, patching
from blt_jax import config
from blt_jax.pipeline import data
from blt_jax.evaluation import evaluate, robustness
from blt_jax.model import flops
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


def _steps(run: ml_collections.ConfigDict, budget: float, tok: bpe.BpeTokenizer | None) -> int:
    n, b = run.data.seq_len, run.data.batch_size
    if run.kind == "blt":
        per_step = 3 * b * n * flops.blt_flops_per_byte(run.model, _bytes_per_patch(run), n)["blt"]
    else:
        per_step = 3 * b * n * flops.transformer_flops_per_token(run.model, n)
    return max(4, round(budget / per_step))


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, log=print) -> dict[str, Any]:
    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ent = config.tiny_experiment("entropy")
    ent.train.update(steps=cfg.entropy_steps, eval_every=cfg.entropy_steps)
    log(f"[compare] entropy model ({cfg.entropy_steps} steps)")
    train.run(ent, root / "entropy")
    tok = None
    runs: dict[str, ml_collections.ConfigDict] = {}
    for name, mode in (("blt_entropy", "global"), ("blt_space", "space"),
                       ("blt_static", "static"), ("bpe", None)):
        r = config.tiny_experiment("bpe" if mode is None else "blt")
        if mode is not None:
            r.model.patching.update(mode=mode, patch_size=float(cfg.static_patch_size))
            r.entropy.workdir = str(root / "entropy")
            r.entropy.target_bytes_per_patch = float(cfg.target_bytes_per_patch)
        elif not (root / name / bpe.FILE).exists():
            (root / name).mkdir(parents=True, exist_ok=True)
            bpe.train(data.documents(r.data, "train"), r.model.vocab_size).save(root / name)
        if mode is None:
            tok = bpe.load(root / name)
        steps = _steps(r, float(cfg.train_flops), tok)
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
    for name, model in models.items():
        val = evaluate.score(model, docs)
        results[name]["val"] = val
    noise = robustness.noise_table(models, noisy_docs, rate=cfg.noise_rate, seed=cfg.seed)
    for row in noise:
        results[row["model"]]["noise"] = row
    table = format_table(results)
    from blt_jax.evaluation import figures

    plot = figures.bpb_vs_flops({n: r["curve"] for n, r in results.items()},
                                str(root / "bpb_vs_flops.png"))
    out = {"config": json.loads(cfg.to_json()), "wall_seconds": time.perf_counter() - t0,
           "table": table, "plot": plot, "results": results}
    (root / "compare.json").write_text(json.dumps(out, indent=2, default=str))
    (root / "compare.md").write_text(table + "\n")
    log(table)
    log(f"[compare] plot: {plot}; wall time {out['wall_seconds'] / 60:.1f} min")
    return out


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
    head = ("| model | val BPB | bytes/patch (token) | training FLOPs | inference FLOPs/byte "
            "(+entropy) | noised BPB (mean) | degradation |")
    lines = [head, "|" + "---|" * 7]
    for name, r in results.items():
        v, s, nz = r["val"], r["summary"], r.get("noise", {})
        unit = v.get("bytes_per_patch") or v.get("bytes_per_token") or math.nan
        fl = f"{v['flops_per_byte']:.3g}"
        if "flops_per_byte_with_entropy" in v:
            fl += f" ({v['flops_per_byte_with_entropy']:.3g})"
        lines.append(f"| {name} | {v['bpb']:.3f} | {unit:.2f} | {s['train_flops']:.3g} | {fl} | "
                     f"{nz.get('noised_mean', math.nan):.3f} | "
                     f"{nz.get('degradation_pct', math.nan):+.1f}% |")
    return "\n".join(lines)


def noise_detail(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["noise"] for r in results.values() if "noise" in r]


def curve_points(results: dict[str, Any]) -> dict[str, np.ndarray]:
    return {n: np.asarray(r["curve"]) for n, r in results.items()}
