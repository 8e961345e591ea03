"""`blt-jax quickstart`: the end-to-end main job on the embedded corpus, sized for 2 CPU cores.

1. train the tiny entropy model; 2. train the tiny BLT patching with it (threshold calibrated to
4 bytes/patch); 3. train the byte-level BPE baseline whose transformer is BLT's latent shape,
for the same training FLOPs as the BLT (paper formulas); 4. score both on the whole validation
split with the same byte count; 5. print the table and where checkpoints and logs are.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import blt_jax
from blt_jax import config, paths
from blt_jax.evaluation import evaluate, tables
from blt_jax.model import kinds
from blt_jax.training import train

PROMPT = "The return value of "


def run(workdir: str = "runs/quickstart", steps: int = 0, log=print) -> dict[str, Any]:
    root = paths.local_only(workdir, "workdir")
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}

    ent = config.tiny_experiment("entropy")
    blt = config.tiny_experiment("blt")
    base = config.tiny_experiment("bpe")
    if steps:
        for c in (ent, blt):
            c.train.update(steps=steps, eval_every=steps)
            c.checkpoint.every = steps
    log(f"[1/4] entropy model -> {root / 'entropy'}")
    results["entropy"] = train.run(ent, root / "entropy")
    log(f"[2/4] BLT (patching with the entropy model) -> {root / 'blt'}")
    blt.entropy.workdir = str(root / "entropy")
    results["blt"] = train.run(blt, root / "blt")

    # Same training FLOPs as the BLT (model FLOPs; the frozen patcher's forward is extra).
    base.train.steps = kinds.steps_for_flops(base, results["blt"]["train_flops"])
    base.train.eval_every = base.train.steps
    base.checkpoint.every = base.train.steps
    log(f"[3/4] BPE baseline, {base.train.steps} steps for the BLT's training FLOPs -> "
        f"{root / 'bpe'}")
    results["bpe"] = train.run(base, root / "bpe")

    log("[4/4] bits-per-byte on the whole validation split (same bytes for every model)")
    for name in ("entropy", "blt", "bpe"):
        results[name]["val"] = evaluate.evaluate_workdir(root / name)
    table = format_table(results)
    samples = {}
    for name in ("blt", "bpe"):
        model = blt_jax.load(root / name)
        t = time.perf_counter()
        new = model.generate(PROMPT, max_new_bytes=96)
        samples[name] = {"text": new.decode("utf-8", errors="replace"),
                         "seconds": time.perf_counter() - t}
        if model.patching_rule is not None:  # a BLT: one latent step per closed patch
            samples[name]["latent_steps"] = model.last_generation.latent_steps[0]
    summary = {"workdir": str(root), "wall_seconds": time.perf_counter() - t0,
               "table": table, "results": results, "samples": samples}
    (root / "quickstart.json").write_text(json.dumps(summary, indent=2, default=str))
    log(table)
    for name, sample in samples.items():
        extra = f", {sample['latent_steps']} latent steps" if "latent_steps" in sample else ""
        log(f"{name} continues {PROMPT!r} -> {sample['text']!r} ({sample['seconds']:.1f} s "
            f"incl. compile{extra})")
    log(f"checkpoints: {root}/{{entropy,blt,bpe}}/checkpoints   "
        f"TensorBoard: tensorboard --logdir {root}   "
        f"wall time: {summary['wall_seconds']:.0f} s")
    return summary


def format_table(results: dict[str, dict[str, Any]]) -> str:
    names = {"entropy": "entropy model (byte LM)", "blt": "BLT", "bpe": "BPE baseline"}
    rows = [(names[name], f"{r['val']['bpb']:.3f}",
             f"{tables.bytes_per_unit(r.get('val', {}), r, 1.0):.2f}",
             f"{r['train_flops']:.3g}", f"{r.get('bytes_per_s', math.nan):.3g}",
             f"{100 * r.get('mfu', math.nan):.1f}%") for name, r in results.items()]
    return tables.render(("model", "val BPB", "bytes/patch|token", "train FLOPs",
                          "train bytes/s", "MFU"), rows)
