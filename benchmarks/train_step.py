"""Training speed of the bench shapes: BLT (space patching) vs the BPE baseline of the same
latent size, side by side in one process, through the real training loop (grain pipeline,
jitted sharded step, metrics) on the embedded corpus.

    python benchmarks/train_step.py [--steps 40] [--batch 8]

Figures per model: step time (forward + backward + update), bytes/s, and MFU against the
matmul peak measured on this machine in the same process (model FLOPs, paper formulas); then
the BLT/BPE ratios. The first logged interval (compilation) is excluded by the training loop.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import jax
import numpy as np

from blt_jax import config, metrics, train


def bench_config(kind: str, steps: int, batch: int, peak: float):
    cfg = config.load_experiment("experiments/bench.py") if kind == "blt" else \
        config.experiment_config("bpe", config.model_preset("bpe_bench"))
    if kind == "bpe":  # ~2048 bytes per row at the bench BPE's ~2 bytes/token
        cfg.data.update(seq_len=1024)
    cfg.data.update(batch_size=batch)
    cfg.train.update(steps=steps, log_every=1, eval_every=10 * steps, eval_batches=1,
                     peak_flops=peak, progress=False)
    cfg.checkpoint.update(every=10 * steps, async_save=False)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    peak = metrics.measured_peak_flops("float32")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; measured matmul "
          f"peak {peak / 1e9:.1f} GFLOP/s per device (float32)")
    rows = {}
    for kind in ("blt", "bpe"):
        cfg = bench_config(kind, args.steps, args.batch, peak)
        with tempfile.TemporaryDirectory() as work:
            s = train.run(cfg, work)
            logged = [r for r in metrics.read(work) if "step_time" in r][1:]  # not the compile
        med = {k: float(np.median([r[k] for r in logged])) for k in ("step_time", "bytes_per_s",
                                                                   "mfu")}
        rows[kind] = med | {"bytes_per_patch_or_token": s.get("bytes_per_patch",
                                                                s.get("bytes_per_token", 1.0))}
        print(f"{kind}: {json.dumps({k: round(v, 4) for k, v in rows[kind].items()})}")
    b, t = rows["blt"], rows["bpe"]
    print(f"BLT / BPE: bytes/s {b['bytes_per_s'] / t['bytes_per_s']:.2f}x, step time "
          f"{b['step_time'] / t['step_time']:.2f}x, MFU {b['mfu'] / t['mfu']:.2f}x")


if __name__ == "__main__":
    main()
