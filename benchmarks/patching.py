"""Patcher throughput: jitted static-shape device patcher vs the numpy host patcher.

    python benchmarks/patching.py [--batch 8] [--length 8192]

Both run in this process on the same random entropies; figures are bytes/s (median of 5).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.text import patching


def median_seconds(fn, repeats=5):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--p-max", type=int, default=None, help="default: length // 2")
    a = ap.parse_args()
    p_max = a.p_max or a.length // 2
    rng = np.random.default_rng(0)
    h = rng.gamma(1.2, 1.2, (a.batch, a.length)).astype(np.float32)
    n_bytes = a.batch * a.length
    h_dev = jnp.asarray(h)
    print(f"devices: {jax.devices()[0].platform} x{jax.device_count()}, batch {a.batch} x "
          f"{a.length} bytes, P_max {p_max}")
    rows = []
    for name, kw in [("global", {}), ("global+max8", {"max_patch_length": 8}),
                     ("monotonic", {"mode": "monotonic", "threshold": 0.5})]:
        dev = jax.jit(lambda x, kw=kw: patching.patch_buffer(p_max=p_max, entropies=x, **kw))
        t_dev = median_seconds(lambda: jax.block_until_ready(dev(h_dev)))
        t_host = median_seconds(lambda: patching.patch_lengths(None, h, **kw))
        rows.append((name, n_bytes / t_dev, n_bytes / t_host))
    print(f"{'rule':<14}{'device bytes/s':>16}{'numpy bytes/s':>16}{'ratio':>8}")
    for name, d, host in rows:
        print(f"{name:<14}{d:>16.3e}{host:>16.3e}{d / host:>8.2f}")


if __name__ == "__main__":
    main()
