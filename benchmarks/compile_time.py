"""Compile time of the bench BLT train step against latent depth, layers unrolled or scanned
(`model.scan_layers`): with the scan, compile time should not grow with depth.

    python benchmarks/compile_time.py [--depths 8,16,32]

Prints one line per (depth, layer loop) and one JSON line. Compiles only (no step is run).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from train_step import bench_batch, experiment  # noqa: E402  (the same bench config and batch)

from blt_jax.scale import sharding  # noqa: E402
from blt_jax.training.train import Trainer  # noqa: E402


def compile_seconds(depth: int, scan: bool, batch: dict) -> float:
    rows, seq_len = batch["ids"].shape
    cfg = experiment("blt", "float32", rows, seq_len, batch["patch_lengths"].shape[1],
                     extra=[f"--config.model.n_layers_global={depth}",
                            f"--config.model.scan_layers={scan}"])
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    trainer = Trainer(cfg, mesh)
    state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                         trainer.abstract, trainer.shardings)  # nothing allocated
    dev = trainer.put_batch(batch)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        trainer.train_step.lower(state, dev, None).compile()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="8,16,32")
    a = ap.parse_args()
    batch = bench_batch()
    out = []
    for depth in [int(d) for d in a.depths.split(",")]:
        for scan in (False, True):
            s = compile_seconds(depth, scan, batch)
            out.append({"latent_layers": depth, "scan_layers": scan, "compile_s": s})
            print(f"latent layers {depth:3d}  {'scanned' if scan else 'unrolled':8s} "
                  f"compile {s:6.1f} s", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
