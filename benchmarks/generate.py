"""Generation speed on the bench shape, side by side in one process: incremental BLT at batch
1/8/32 (aggregate bytes/s), its per-byte cost split, the naive full-recompute loop and the
KV-cached token baseline of the same latent size.

    python benchmarks/generate.py [--prompt-bytes 64] [--new-bytes 256] [--batches 1,8,32]
                                  [--trained runs/quickstart/blt] [--draft-len 32]

Models are the bench shapes with random weights (speed does not depend on training). BLT patches
with the static rule (one patch per 4 bytes after [BOS], close to the paper's 4.5 bytes/patch)
so the latent work per byte is controlled (`--entropy` patches with an entropy_tiny-shaped
entropy model instead). Greedy decoding. The split comes from two extra runs of the same model:
a patch size no generation reaches (local encoder + decoder only) and a patch per byte; the
latent step's cost is the difference per latent step. The reference's `generate_nocache` figure
(2.5 bytes/s, batch 1, 64 new bytes) is from ../shared/data/bench/README.md, measured on this
machine class.

Self-speculative decoding (BLT-S) is measured against plain incremental decoding, interleaved
(best of --repeats each), on the bench shape and, with --trained, on a trained BLT (the
quickstart's by default, when it exists): random weights draft badly, so only a trained model
says what speculation buys. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

import blt_jax  # noqa: E402
from blt_jax import config  # noqa: E402
from blt_jax.inference import generate  # noqa: E402
from blt_jax.pipeline import corpus  # noqa: E402
from blt_jax.testing import oracles  # noqa: E402
from blt_jax.text import bpe  # noqa: E402
from helpers import make_workdir  # noqa: E402

REFERENCE_NOCACHE_BPS = 2.5  # ../shared/data/bench/README.md


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one compile + warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def blt_model(tmp: pathlib.Path, name: str, entropy: bool, patch_size: int) -> object:
    cfg = config.model_preset("blt_bench")
    ent = None
    if entropy:
        ent = config.model_preset("entropy_tiny")
        ent.window = 512
    else:
        cfg.patching.update(mode="static", patch_size=patch_size)
    return blt_jax.load(make_workdir(tmp / name, "blt", cfg, ent))


def rate(model: object, prompts: list[bytes], opts: generate.Options, repeats: int
         ) -> tuple[float, object]:
    """(aggregate bytes/s, result)."""
    t, res = timed(lambda: model._generator.generate(prompts, opts), repeats)
    return sum(len(n) for n in res.new) / t, res


def speculation(model: object, prompts: list[bytes], new_bytes: int, draft_len: int,
                repeats: int) -> dict:
    """Plain vs speculative greedy decoding of each prompt (batch 1), interleaved, best of
    `repeats`: summed bytes/s, identical bytes, acceptance figures."""
    plain, spec = generate.Options(max_new=new_bytes), \
        generate.Options(max_new=new_bytes, draft_len=draft_len)
    gen = model._generator
    best = {"plain": [np.inf] * len(prompts), "spec": [np.inf] * len(prompts)}
    out: dict = {"plain": [], "spec": []}
    for i, p in enumerate(prompts):
        for name, o in (("plain", plain), ("spec", spec)):
            out[name].append(gen.generate([p], o))  # compile + warm-up
    for _ in range(repeats):
        for i, p in enumerate(prompts):
            for name, o in (("plain", plain), ("spec", spec)):
                t = time.perf_counter()
                gen.generate([p], o)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
    n = sum(len(r.new[0]) for r in out["plain"])
    figs = [r.speculation for r in out["spec"]]
    verifies = sum(f["verify_passes"] for f in figs)
    committed = sum(f["bytes_per_verify"] * f["verify_passes"] for f in figs)
    stale = sum(sum(f["stale_drafted"]) for f in figs)
    return {"plain_bytes_per_s": n / sum(best["plain"]),
            "spec_bytes_per_s": sum(len(r.new[0]) for r in out["spec"]) / sum(best["spec"]),
            "speedup": sum(best["plain"]) / sum(best["spec"]),
            "identical": all(a.new == b.new for a, b in zip(out["plain"], out["spec"])),
            "bytes_per_verify": committed / max(verifies, 1),
            "rounds": sum(f["rounds"] for f in figs), "verify_passes": verifies,
            "stale_acceptance": sum(sum(f["stale_accepted"]) for f in figs) / max(stale, 1),
            "latent_steps_plain": sum(r.latent_steps[0] for r in out["plain"]),
            "latent_runs_spec": sum(r.latent_runs for r in out["spec"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-bytes", type=int, default=64)
    ap.add_argument("--new-bytes", type=int, default=256)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--naive-bytes", type=int, default=32, help="bytes for the naive loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--entropy", action="store_true", help="entropy patching (entropy_tiny shape)")
    ap.add_argument("--trained", default="runs/quickstart/blt",
                    help="a trained BLT workdir for the speculation rows (skipped if missing)")
    ap.add_argument("--draft-len", type=int, default=32, help="speculation: most drafted bytes")
    ap.add_argument("--prompts", type=int, default=4, help="speculation: validation prompts")
    a = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp())
    prompt = b"".join(corpus.documents("validation"))[: a.prompt_bytes]
    opts = generate.Options(max_new=a.new_bytes)
    blt = blt_model(tmp, "blt", a.entropy, 4)

    rows = []
    first = None
    for b in (int(x) for x in a.batches.split(",")):
        bps, res = rate(blt, [prompt] * b, opts, a.repeats)
        first = first or res
        rows.append((f"BLT incremental, batch {b}", b, bps,
                     sum(res.latent_steps) / max(sum(len(n) for n in res.new), 1)))
    bps1 = rows[0][2]

    # per-byte split (batch 1): local-only bytes, then a latent step per byte
    local_bps, _ = rate(blt_model(tmp, "local", False, 1 << 20), [prompt], opts, a.repeats)
    every_bps, every = rate(blt_model(tmp, "every", False, 1), [prompt], opts, a.repeats)
    local_ms = 1e3 / local_bps
    per_byte_latent = every.latent_steps[0] / len(every.new[0])
    latent_ms = (1e3 / every_bps - local_ms) / per_byte_latent

    oracles.naive_generate(blt, prompt, generate.Options(max_new=2))  # compile
    t0 = time.perf_counter()
    naive_new, _, _ = oracles.naive_generate(blt, prompt, generate.Options(max_new=a.naive_bytes))
    naive_bps = len(naive_new) / (time.perf_counter() - t0)
    same = naive_new == first.new[0][: len(naive_new)]

    spec_rows = {"bench (random weights)": speculation(blt, [prompt], a.new_bytes, a.draft_len,
                                                       a.repeats)}
    text = b"".join(corpus.documents("validation"))
    starts = [len(text) * k // (a.prompts + 1) for k in range(1, a.prompts + 1)]
    prompts = [text[s: s + a.prompt_bytes] for s in starts]
    if pathlib.Path(a.trained).is_dir():
        spec_rows[f"trained {a.trained}"] = speculation(blt_jax.load(a.trained), prompts,
                                                        a.new_bytes, a.draft_len, a.repeats)
    else:
        print(f"[no trained BLT at {a.trained}: run `blt-jax quickstart` for its speculation row]")

    bcfg = config.model_preset("bpe_bench")
    bwork = make_workdir(tmp / "bpe", "bpe", bcfg)
    bpe.train(corpus.documents("train"), bcfg.vocab_size).save(bwork)
    tok_bps, _ = rate(blt_jax.load(bwork), [prompt], opts, a.repeats)

    print(f"prompt {len(prompt)} bytes, {a.new_bytes} new bytes, greedy, BLT bench "
          f"({'entropy' if a.entropy else 'static-4'} patching), {os.cpu_count()} CPUs")
    print(f"{'generator':<34}{'bytes/s':>10}{'latent/byte':>13}")
    for name, _, bps, lpb in rows:
        print(f"{name:<34}{bps:>10.1f}{lpb:>13.3f}")
    print(f"{'BLT naive full recompute':<34}{naive_bps:>10.1f}")
    print(f"{'token baseline (KV cache), batch 1':<34}{tok_bps:>10.1f}")
    print(f"per byte (batch 1): local encoder+decoder {local_ms:.2f} ms; one latent step "
          f"{latent_ms:.2f} ms; static-4 total {1e3 / bps1:.2f} ms")
    print(f"BLT batch 1 / reference generate_nocache ({REFERENCE_NOCACHE_BPS} B/s): "
          f"{bps1 / REFERENCE_NOCACHE_BPS:.0f}x   / naive: {bps1 / naive_bps:.1f}x   "
          f"/ token baseline: {bps1 / tok_bps:.2f}x   incremental == naive bytes: {same}")
    print(f"self-speculative decoding (batch 1, greedy, draft_len {a.draft_len}; the trained "
          f"model over {a.prompts} validation prompts)")
    print(f"{'model':<36}{'plain B/s':>10}{'spec B/s':>10}{'speedup':>9}{'bytes/verify':>14}"
          f"{'stale acc.':>12}{'same bytes':>12}")
    for name, r in spec_rows.items():
        print(f"{name[:35]:<36}{r['plain_bytes_per_s']:>10.0f}{r['spec_bytes_per_s']:>10.0f}"
              f"{r['speedup']:>8.2f}x{r['bytes_per_verify']:>14.2f}{r['stale_acceptance']:>12.3f}"
              f"{str(r['identical']):>12}")
    print(json.dumps({
        "bytes_per_s": {name: round(bps, 1) for name, _, bps, _ in rows},
        "naive_bytes_per_s": round(naive_bps, 2), "token_baseline_bytes_per_s": round(tok_bps, 1),
        "local_ms_per_byte": round(local_ms, 3), "latent_ms_per_step": round(latent_ms, 3),
        "latent_steps_per_byte": round(rows[0][3], 3),
        "vs_reference_nocache": round(bps1 / REFERENCE_NOCACHE_BPS, 1),
        "incremental_equals_naive": same,
        "speculation": {k: {f: round(v, 3) if isinstance(v, float) else v for f, v in r.items()}
                        for k, r in spec_rows.items()}}))


if __name__ == "__main__":
    main()
