"""Train-step speed on the reference's bench config: BLT vs the token LM of the global size, fp32
and bf16, side by side in one process, with MFU against a matmul peak measured in the same
process and a per-component time split.

    python benchmarks/train_step.py                      # everything (about 10 min on 2 cores)
    python benchmarks/train_step.py --models blt --precisions float32 --no-split

The batch is the reference bench batch (benchmarks/data/bench_batch.npz: 4 rows x 2048 bytes of
CPython's pydoc topics, 455 given patches per row); the model is the bench shape (dims
256/512/256, layers 1/8/4, hash n-grams 3..8 x exactly 50,000 rows, window 512), 110,173,440
parameters; the step is the project's real train step (training.train.Trainer) on precomputed
patch lengths: forward, mean cross-entropy, backward, clip 10, AdamW (lr 4e-4, wd 0.1,
beta 0.9/0.95, eps 1e-8). The reference's figures on this machine class
(../shared/data/bench/README.md) are printed next to ours as ratios.

Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blt_jax import config, overrides
from blt_jax.model import flops
from blt_jax.scale import sharding
from blt_jax.training.train import Trainer

BATCH = pathlib.Path(__file__).parent / "data" / "bench_batch.npz"
# The PyTorch reference on this machine class (2 cores), seconds per step.
REFERENCE_S = {("blt", "float32"): 4.64, ("blt", "bfloat16"): 3.45,
               ("token", "float32"): 1.76, ("token", "bfloat16"): 0.95}
BENCH_PARAMS = 110_173_440


def bench_batch() -> dict[str, np.ndarray]:
    z = np.load(BATCH)
    tokens = z["tokens"].astype(np.int32)
    return {"ids": tokens[:, :-1], "targets": tokens[:, 1:],
            "mask": np.ones(tokens[:, 1:].shape, bool),
            "patch_lengths": z["patch_lengths_balanced"].astype(np.int32)}


def experiment(kind: str, precision: str, rows: int, seq_len: int, p_max: int,
               grad_accum: int = 1, extra: Sequence[str] = ()) -> Any:
    if kind == "blt":
        model = config.model_preset("blt_bench")
    else:  # the latent transformer's shape over byte ids
        model = config.transformer_config(dim=512, n_layers=8, n_heads=8, rope_theta=500000.0,
                                          vocab_size=260)
    model.update(dtype=precision, scan_layers=True)  # the paper recipe's layer loop
    c = config.experiment_config("blt" if kind == "blt" else "bpe", model)
    if kind == "blt":  # unused: the batch carries its patch lengths
        c.model.patching.update(mode="static", patch_size=4)
    c.data.update(seq_len=seq_len, batch_size=rows, p_max=p_max)
    c.optim.update(lr=4e-4, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip=10.0,
                   warmup_steps=0, schedule="constant")
    c.train.update(steps=1_000_000, grad_accum=grad_accum)
    return overrides.apply_overrides(c, list(extra))


def timeit(fn: Callable[[], Any], steps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def matmul_peak(dtype: Any, n: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of an n x n x n dot (bf16 inputs accumulate in f32), best of `repeats`."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a, b))
    best = min(timeit(lambda: f(a, b), repeats)[1])
    return 2 * n ** 3 / best


def executed_flops(cfg: Any, mesh: Any, state: Any, dev: Any, compiled: Any) -> float:
    """XLA's FLOP count of the step. Cost analysis counts a loop body once, so a step whose
    layers run as lax.scan is counted on its unrolled twin (same maths, compiled only)."""
    if cfg.model.scan_layers:
        cfg = config.replaced(cfg, {"model.scan_layers": False})
        with jax.set_mesh(mesh):
            compiled = Trainer(cfg, mesh).train_step.lower(state, dev, None).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def run_step(kind: str, precision: str, batch: dict[str, np.ndarray], steps: int,
             grad_accum: int = 1, extra: Sequence[str] = ()) -> dict[str, Any]:
    rows = batch["ids"].shape[0]
    if kind == "token":
        t = batch["patch_lengths"].shape[1]  # as many ids as the BLT has patches
        batch = {"ids": batch["ids"][:, :t], "targets": batch["targets"][:, :t],
                 "mask": batch["mask"][:, :t]}
    seq_len = batch["ids"].shape[1]
    cfg = experiment(kind, precision, rows, seq_len,
                     batch.get("patch_lengths", np.zeros((1, 0))).shape[1], grad_accum,
                     extra)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    trainer = Trainer(cfg, mesh)
    state = trainer.init_state()
    n_params = sum(int(x.size) for x in jax.tree.leaves(state["params"]))
    dev = trainer.put_batch(batch)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = trainer.train_step.lower(state, dev, None).compile()
    compile_s = time.perf_counter() - t0
    xla_flops = executed_flops(cfg, mesh, state, dev, compiled)
    holder = {"state": state}

    def step() -> Any:
        holder["state"], m = compiled(holder["state"], dev, None)
        return m

    first = jax.device_get(step())  # warm-up (loss before any update)
    median, times = timeit(step, steps)
    text_bytes = rows * (2048 if kind == "token" else seq_len)  # same text for both models
    if kind == "blt":
        bpp = (rows * (seq_len + 1)) / float((batch["patch_lengths"] > 0).sum())
        fwd = flops.blt_flops_per_byte(cfg.model, bpp, seq_len)["blt"] * rows * seq_len
    else:
        fwd = flops.transformer_flops_per_token(cfg.model, seq_len) * rows * seq_len
    return {"model": kind, "precision": precision, "params": n_params,
            "first_loss": float(first["nll"] / first["n_targets"]),
            "step_s": median, "steps_s": times, "compile_s": compile_s,
            "bytes_per_s": text_bytes / median, "model_flops": 3 * fwd, "xla_flops": xla_flops}


def component_split(precision: str, batch: dict[str, np.ndarray], steps: int
                    ) -> dict[str, float]:
    """Forward+backward seconds of each BLT component in isolation (its own jit), plus the loss
    and the optimizer update: where a step's time goes."""
    import optax

    from blt_jax.model import attention
    from blt_jax.model.factory import build_model
    from blt_jax.text import patching
    from blt_jax.text.tokenizer import EOS_ID
    from blt_jax.model.transformer import positions
    from blt_jax.training import optim

    cfg = experiment("blt", precision, *batch["ids"].shape, batch["patch_lengths"].shape[1])
    model = build_model(cfg.model)
    ids = jnp.asarray(batch["ids"])
    lengths = jnp.asarray(batch["patch_lengths"])
    b, n = ids.shape
    p = lengths.shape[1]
    patch_ids, dec_ids = patching.patch_ids_from_lengths(lengths, n)
    pos, seg = positions(b, n), attention.segments_from_eos(ids, EOS_ID)
    enc, lat, dec = model.local_encoder, model.global_transformer, model.local_decoder
    h, patches = enc(ids, pos, seg, patch_ids, p)
    g = lat(patches)
    logits = dec(h, g, pos, seg, dec_ids)

    consts = {"ids": ids, "pos": pos, "seg": seg, "patch_ids": patch_ids, "dec_ids": dec_ids}

    def fwd_bwd(module: nnx.Module, f: Callable[..., Any], *xs: jax.Array) -> float:
        """Median seconds of jit(grad) of f(module, consts, *xs) w.r.t. params and xs (the
        integer inputs are arguments, not constants, so XLA cannot fold them)."""
        gdef, params = nnx.split(module)

        def loss(prm: Any, c: dict[str, jax.Array], *a: jax.Array) -> jax.Array:
            out = f(nnx.merge(gdef, prm), c, *a)
            return sum(jnp.sum(o.astype(jnp.float32)) * 1e-3 for o in jax.tree.leaves(out))
        g_fn = jax.jit(jax.grad(loss, argnums=(0,) + tuple(range(2, 2 + len(xs)))))
        jax.block_until_ready(g_fn(params, consts, *xs))
        return timeit(lambda: g_fn(params, consts, *xs), steps)[0]

    out: dict[str, float] = {}
    out["embeddings (byte + hash)"] = fwd_bwd(enc, lambda m, c: m.embed(c["ids"]))
    out["local encoder"] = fwd_bwd(
        enc, lambda m, c: m(c["ids"], c["pos"], c["seg"], c["patch_ids"], p))
    e = enc.embed(ids)
    q0 = enc.init_queries(e, patch_ids, p)
    out["  of which encoder cross-attention"] = fwd_bwd(
        enc, lambda m, c, q, hh: m.cross_attend(m.cross_attn_layers[0], q, hh, c["patch_ids"]),
        q0, e)
    out["latent transformer"] = fwd_bwd(lat, lambda m, c, x: m(x), patches)
    out["local decoder (with logits)"] = fwd_bwd(
        dec, lambda m, c, hh, gg: m(hh, gg, c["pos"], c["seg"], c["dec_ids"]), h, g)
    z = dec.patch_rows(g)
    out["  of which decoder cross-attentions"] = len(dec.cross_attn_layers) * fwd_bwd(
        dec, lambda m, c, hh, zz: m.cross_attend(m.cross_attn_layers[0], hh, zz, c["dec_ids"]),
        h, z)
    from blt_jax.model.transformer import causal_attend, local_attend

    def attn_time(make: Callable[[dict[str, jax.Array]], Any], heads: int, dim: int,
                  length: int) -> float:
        x = jax.random.normal(jax.random.key(0), (b, length, heads, dim // heads))
        f = jax.jit(jax.grad(lambda c, q, k, v: jnp.sum(make(c)(q, k, v) * 1e-3),
                             argnums=(1, 2, 3)))
        jax.block_until_ready(f(consts, x, x, x))
        return timeit(lambda: f(consts, x, x, x), steps)[0]

    mc = cfg.model
    n_local = mc.n_layers_local_encoder + mc.n_layers_local_decoder
    out[f"  local self-attention kernels ({n_local} layers)"] = n_local * attn_time(
        lambda c: local_attend(mc, c["seg"], mc.local_attention_window_len),
        mc.n_heads_local_encoder, mc.dim_local_encoder, n)
    out[f"  latent self-attention kernels ({mc.n_layers_global} layers)"] = \
        mc.n_layers_global * attn_time(lambda c: causal_attend(mc, b, p), mc.n_heads_global,
                                       mc.dim_global, p)
    targets = jnp.asarray(batch["targets"])
    ce = jax.jit(jax.grad(lambda lg, y: -jnp.take_along_axis(
        jax.nn.log_softmax(lg, -1), y[..., None], -1).mean()))
    jax.block_until_ready(ce(logits, targets))
    out["loss (log-softmax + CE)"] = timeit(lambda: ce(logits, targets), steps)[0]
    params = nnx.state(model, nnx.Param)
    tx = optim.make(cfg.optim, cfg.train.steps)
    opt = tx.init(params)
    upd = jax.jit(lambda g_, o, p_: optax.apply_updates(p_, tx.update(g_, o, p_)[0]))
    jax.block_until_ready(upd(params, opt, params))
    out["optimizer (clip + AdamW)"] = timeit(lambda: upd(params, opt, params), steps)[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="blt,token")
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median) after warm-up")
    ap.add_argument("--no-split", action="store_true", help="skip the per-component split")
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches per step (same maths; smaller temporaries)")
    ap.epilog = ("Further --config.model.FIELD=VALUE arguments override the models' configs "
                 "(e.g. --config.model.scan_layers=false for the unrolled layer loop).")
    a, extra = ap.parse_known_args()
    batch = bench_batch()
    flags = set(pathlib.Path("/proc/cpuinfo").read_text().split()) if pathlib.Path(
        "/proc/cpuinfo").exists() else set()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
          f"[{' '.join(sorted(f for f in flags if f.startswith(('avx512_bf16', 'amx', 'avx2'))))}] "
          f"({jax.device_count()} device(s)); batch {batch['ids'].shape}, "
          f"{batch['patch_lengths'].shape[1]} patches/row")
    peaks = {"float32": matmul_peak(jnp.float32), "bfloat16": matmul_peak(jnp.bfloat16)}
    print("matmul peak (2048^3 dot): " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s"
                                                    for k, v in peaks.items()))
    runs = []
    for precision in a.precisions.split(","):
        for kind in a.models.split(","):
            r = run_step(kind, precision, batch, a.steps, a.grad_accum, extra)
            r["mfu"] = r["model_flops"] / r["step_s"] / peaks[precision]
            # what the step could reach if every FLOP XLA executes ran at the dot peak
            r["ceiling_bytes_per_s"] = r["bytes_per_s"] * r["step_s"] / (
                r["xla_flops"] / peaks[precision]) if r["xla_flops"] else None
            ref = REFERENCE_S.get((kind, precision))
            r["reference_step_s"] = ref
            r["speedup_vs_reference"] = ref / r["step_s"] if ref else None
            runs.append(r)
            print(f"{kind:6s} {precision:9s} step {r['step_s']:7.3f} s  "
                  f"{r['bytes_per_s']:8.0f} bytes/s  compile {r['compile_s']:5.1f} s  "
                  f"MFU {100 * r['mfu']:5.1f}%  XLA {r['xla_flops'] / 1e9:5.0f} GFLOP "
                  f"(ceiling {r['ceiling_bytes_per_s'] or 0:6.0f} bytes/s)  "
                  f"loss0 {r['first_loss']:.5f}  "
                  f"x{r['speedup_vs_reference']:.2f} vs reference ({ref} s)", flush=True)
    by = {(r["model"], r["precision"]): r for r in runs}
    for precision in a.precisions.split(","):
        if ("blt", precision) in by and ("token", precision) in by:
            ratio = by[("blt", precision)]["step_s"] / by[("token", precision)]["step_s"]
            print(f"BLT step / token step per byte of text, {precision}: {ratio:.2f}x "
                  f"(reference {REFERENCE_S[('blt', precision)] / REFERENCE_S[('token', precision)]:.2f}x)")
    if ("blt", "float32") in by and not extra:
        assert by[("blt", "float32")]["params"] == BENCH_PARAMS, by[("blt", "float32")]["params"]
    split = {}
    if not a.no_split:
        for precision in a.precisions.split(","):
            split[precision] = component_split(precision, batch, a.steps)
            print(f"per-component forward+backward, {precision} (isolated jits):")
            for k, v in split[precision].items():
                print(f"  {k:38s} {v:7.3f} s")
    print(json.dumps({"peaks_flops": peaks, "overrides": extra, "runs": runs,
                      "split_s": split}))


if __name__ == "__main__":
    main()
