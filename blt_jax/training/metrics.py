"""Run metrics: JSONL + TensorBoard event files (tensorboardX, no TensorFlow), a progress line
with ETA, and the measured matmul peak of this machine for MFU."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax import paths


class Writer:
    """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tb (process 0 only)."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = paths.path(workdir) / "metrics.jsonl"
        self._remote_text: str | None = None  # GCS: the file as last uploaded (no appends)
        self.tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(paths.path(workdir) / "tb"))  # gs:// too

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        line = json.dumps({"step": step, **clean}) + "\n"
        if paths.is_remote(self.path):  # one upload per row, each the whole file (atomic)
            if self._remote_text is None:
                self._remote_text = self.path.read_text() if self.path.exists() else ""
            self._remote_text += line
            self.path.write_text(self._remote_text)
        else:
            paths.append_text(self.path, line)
        for k, v in clean.items() if self.tb is not None else ():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read(workdir: str | os.PathLike) -> list[dict[str, float]]:
    path = paths.path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Progress:
    """One status line on stderr: rewritten in place on a terminal, printed every `every` else."""

    def __init__(self, total: int, start: int, every: int, enabled: bool = True, label: str = ""):
        self.total, self.start, self.every, self.enabled = total, start, max(every, 1), enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.label = label

    def update(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        line = f"{self.label}step {step}/{self.total} {text} ETA {_fmt(eta)}"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(100))
            sys.stderr.flush()
        elif step % self.every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


# Dense bf16 matmul peak per chip (FLOP/s) by device_kind; TPUs run float32 matmuls through the
# same units. Data-sheet figures; MFU against a timed matmul would overstate on these chips.
PEAK_FLOPS = (("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
              ("TPU v5", 459e12), ("TPU v4", 275e12), ("H200", 989e12), ("H100", 989e12),
              ("A100", 312e12), ("L4", 121e12), ("V100", 125e12))


def table_peak_flops(device_kind: str) -> float | None:
    """The chip's peak from PEAK_FLOPS (first matching name), None for an unlisted chip."""
    for name, peak in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def peak_flops(override: float, dtype: str) -> float:
    """train.peak_flops if set, else the chip's table peak, else a timed matmul (CPUs)."""
    return override or table_peak_flops(jax.devices()[0].device_kind) or \
        measured_peak_flops(dtype)


@functools.lru_cache(maxsize=None)
def measured_peak_flops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n matmul on the first device (median of `repeats`).

    bfloat16 inputs accumulate in float32, as the model's matmuls do.
    """
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / sorted(times)[len(times) // 2]


def summarize_history(history: list[dict[str, float]]) -> dict[str, float]:
    """Run summary fields from the logged rows: medians of speed (the first, compiling step
    left out), the final loss, means of the patch statistics."""
    if not history:
        return {}
    rest = history[1:] or history[:1]
    out = {"bytes_per_s": float(np.median([h["bytes_per_s"] for h in rest])),
           "mfu": float(np.median([h["mfu"] for h in rest])), "final_loss": history[-1]["loss"]}
    for k in ("bytes_per_patch", "patch_padding", "overflow_rate"):
        if k in history[-1]:
            out[k] = float(np.mean([h[k] for h in history]))
    return out
