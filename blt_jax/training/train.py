"""Training: `blt-jax train --config experiments/<name>.py --workdir DIR [--config.a.b=v ...]`.

The jitted step is pure: ``train_step(state, batch, frozen) -> (state, metrics)`` with the state
{params, opt, step} donated and sharded by the rules table, the batch sharded over (data, fsdp)
and `frozen` the entropy model's parameters (BLT only; patches are made inside the step). The
loop dispatches step t before fetching step t-1's metrics, so logging never stalls the device.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from blt_jax.errors import TrainingDiverged, UserError
from blt_jax import config, paths
from blt_jax.model import factory, kinds
from blt_jax.pipeline import data
from blt_jax.scale import distributed, sharding
from blt_jax.text import bpe
from blt_jax.training import (calibration, checkpoint, metrics, objective, optim, preflight,
                              provenance, warmstart)
from blt_jax.training.scorer import Scorer

ENTROPY_DIR = preflight.ENTROPY_DIR


# ---------------------------------------------------------------------------------------------
# Workdir and configuration


def prepare_workdir(cfg: ml_collections.ConfigDict, workdir: paths.Path
                    ) -> ml_collections.ConfigDict:
    """The config to run with, a copy of cfg: a resumed run takes what the workdir recorded
    (a BLT's calibrated threshold and frozen entropy model) and must hold the same model."""
    paths.makedirs(workdir)  # on GCS: the bucket must exist (never created by accident)
    if not ((workdir / "config.json").exists() and checkpoint.steps(workdir)):
        return config.replaced(cfg, {})
    stored = factory.read_config(workdir)
    resumed = kinds.of(cfg).resume(cfg, stored)
    diff = config.same_parameters(stored.model, resumed.model)
    if stored.kind != resumed.kind or diff:
        raise UserError(f"workdir: {workdir} holds a checkpoint of a different model "
                         f"({stored.kind} vs {cfg.kind}; fields {diff[:4]}); use a new "
                         "--workdir")
    return resumed


def _copy_entropy_model(cfg: ml_collections.ConfigDict, workdir: paths.Path) -> paths.Path:
    """Freezes the entropy model into WORKDIR/entropy_model (params only) on first start.

    Every process takes part (Orbax reads and writes are collective). The copy is written in
    place and its config.json last, the marker that it is complete: GCS has no atomic
    directory rename (gcsfs moves object by object), so a killed copy is a directory without
    config.json, which the next start removes and writes again.
    """
    dest = workdir / ENTROPY_DIR
    if (dest / "config.json").exists():
        return dest
    src = preflight.entropy_source(cfg)
    _, weights, step = factory.load_weights(src)
    lead = jax.process_index() == 0
    if lead and dest.exists():  # an unfinished copy (no config.json)
        dest.rmtree()
    distributed.barrier("entropy_copy_start")
    checkpoint.save_params_only(dest, jax.tree.map(np.asarray, weights.params),
                                meta={"source": str(src), "source_step": step})
    distributed.barrier("entropy_copy_saved")
    if lead:
        paths.copy_tree_file(src / "config.json", dest / "config.json")
    distributed.barrier("entropy_copy_done")
    return dest


def _bpe_tokenizer(cfg: ml_collections.ConfigDict, workdir: paths.Path, docs: Any
                   ) -> bpe.BpeTokenizer:
    """The workdir's BPE tokenizer: bpe.tokenizer_path, else trained once (process 0) on a
    bounded, seeded sample of the training split and cached in the workdir."""
    if jax.process_index() == 0:
        bpe.prepare(workdir, docs, cfg.model.vocab_size, cfg)
    distributed.barrier("bpe_tokenizer")
    tok = bpe.load(workdir)
    if tok.vocab_size != cfg.model.vocab_size:
        raise UserError(f"model.vocab_size: {cfg.model.vocab_size} but the workdir's "
                         f"tokenizer has {tok.vocab_size} ids")
    return tok


# ---------------------------------------------------------------------------------------------
# State and steps


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                        shardings)


class Trainer(Scorer):
    """The scoring step plus the optimizer: sharded state and the jitted train step."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 frozen: factory.Weights | tuple[Any, Any, ml_collections.ConfigDict] | None = None):
        super().__init__(cfg, mesh, frozen)
        self.tx = optim.make(cfg.optim, cfg.train.steps)
        self.schedule = optim.schedule(cfg.optim, cfg.train.steps)

        def init() -> dict[str, Any]:
            params = nnx.state(factory.build_model(cfg.model, cfg.seed))
            return {"params": params, "opt": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}

        self.abstract = jax.eval_shape(init)
        self.shardings = sharding.state_shardings(self.abstract, mesh)
        self._init = jax.jit(init, out_shardings=self.shardings)
        self.train_step = jax.jit(self._train_step, donate_argnums=0,
                                  out_shardings=(self.shardings, None))

    def init_state(self) -> dict[str, Any]:
        with jax.set_mesh(self.mesh):
            return self._init()

    def abstract_params(self) -> Any:
        """The params' shapes with this run's shardings (restore targets)."""
        return _abstract(self.abstract["params"], self.shardings["params"])

    def abstract_opt(self) -> Any:
        return _abstract(self.abstract["opt"], self.shardings["opt"])

    def init_from(self, params: Any, source_step: int) -> dict[str, Any]:
        """State at step 0 with given params and a fresh optimizer state (init_from)."""
        with jax.set_mesh(self.mesh):
            opt = jax.jit(self.tx.init, out_shardings=self.shardings["opt"])(params)
        return {"params": params, "opt": opt, "step": jax.device_put(jnp.asarray(0, jnp.int32))}

    def _train_step(self, state: dict[str, Any], batch: dict[str, jax.Array], frozen: Any
                    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        accum = self.cfg.train.grad_accum

        def grads_and_sums(mb: dict[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
            def f(p: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
                s = self.sums(p, mb, frozen)
                return s["nll"], s
            (_, s), g = jax.value_and_grad(f, has_aux=True)(state["params"])
            return g, s

        if accum == 1:
            grads, total = grads_and_sums(batch)
        else:
            micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

            def body(carry: Any, mb: dict[str, jax.Array]) -> tuple[Any, None]:
                g, s = grads_and_sums(mb)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            zeros = jax.eval_shape(grads_and_sums, jax.tree.map(lambda x: x[0], micro))
            zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
            (grads, total), _ = jax.lax.scan(body, zeros, micro)
        grads = jax.tree.map(lambda g: g / jnp.maximum(total["n_targets"], 1.0), grads)
        updates, opt = self.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        out = dict(total, grad_norm=optax.tree.norm(grads), lr=self.schedule(state["step"]))
        new = {"params": params, "opt": opt, "step": state["step"] + 1}
        if self.cfg.train.nonfinite == "skip":  # a non-finite step leaves params and opt as-is
            ok = jnp.isfinite(total["nll"]) & jnp.isfinite(out["grad_norm"])
            new = {"params": jax.tree.map(lambda n, o: jnp.where(ok, n, o), params,
                                          state["params"]),
                   "opt": jax.tree.map(lambda n, o: jnp.where(ok, n, o), opt, state["opt"]),
                   "step": new["step"]}
        return new, out

    def flops_per_step(self, n_targets: float, bytes_per_patch: float | None
                       ) -> tuple[float, float]:
        """(model training FLOPs = 3 x forward, frozen patcher forward FLOPs) of one step,
        by the paper's formulas; BLT's global part uses the step's measured bytes/patch."""
        fwd, patcher = self.kind.forward_flops(self.cfg.model, self.cfg.data.seq_len,
                                               bytes_per_patch, self.frozen_cfg)
        return 3 * n_targets * fwd, n_targets * patcher


# ---------------------------------------------------------------------------------------------
# The run




def run(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) and returns the final summary; writes everything under workdir."""
    workdir = paths.path(workdir)
    # every check that needs no workdir comes first: a mistake writes nothing
    docs, eval_docs, mesh, init_src = preflight.check(cfg, workdir)
    cfg = prepare_workdir(cfg, workdir)  # a copy: the caller's config is never changed
    kind = kinds.of(cfg)
    lead = jax.process_index() == 0

    patcher = tok = None
    extra: dict[str, Any] = {}
    process = (jax.process_index(), jax.process_count())
    if kind.uses_patcher(cfg):
        ent_dir = _copy_entropy_model(cfg, workdir)
        _, patcher, _ = factory.load_weights(ent_dir)
        cfg = config.replaced(cfg, {"entropy.workdir": ENTROPY_DIR})  # a self-contained workdir
    if not checkpoint.steps(workdir):  # same on every process
        fields, reports = calibration.first_start(
            cfg, factory.entropy_fn(patcher) if patcher is not None else None)
        cfg = config.replaced(cfg, fields)
        for name, report in reports.items():
            if lead:
                (workdir / name).write_text(json.dumps(report, indent=2))
    if kind.trains_tokenizer:
        tok = _bpe_tokenizer(cfg, workdir, docs)
        extra = bpe.describe(tok, eval_docs)

    trainer = Trainer(cfg, mesh, patcher)
    # in-training eval patches exactly (P_max = N + 1) like final scoring: one eval policy
    evaluator = Scorer(config.replaced(cfg, {"data.p_max": cfg.data.seq_len + 1}), mesh, patcher) \
        if kind.patch_rule(cfg.model) is not None else trainer
    train_it = data.train_batches(docs, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                                  seed=cfg.seed, loader_shards=cfg.data.loader_shards,
                                  process=process, bpe_tokenizer=tok,
                                  num_workers=cfg.data.num_workers, packing=kind.packing(cfg))
    ck = cfg.checkpoint
    mngr = checkpoint.manager(workdir, save_every=ck.every, keep_latest=ck.keep_latest,
                              keep_every=ck.keep_every or None, keep_best=ck.keep_best,
                              async_save=ck.async_save)
    if ck.pinned_steps and lead:
        checkpoint.add_pins(workdir, [int(s) for s in ck.pinned_steps])
    state = trainer.init_state()
    train_flops = 0.0
    start = 0
    if checkpoint.steps(workdir):
        abstract = {"params": trainer.abstract_params(), "opt": trainer.abstract_opt()}
        out, start, skipped = checkpoint.first_intact(workdir, lambda s: checkpoint.restore(
            mngr, s, params=abstract["params"], opt_state=abstract["opt"], data_iter=train_it))
        for note in skipped:  # moved aside (not deleted) so this run can save those steps anew
            if lead:
                dest = checkpoint.quarantine(workdir, int(note.split()[1]))
                print(f"blt-jax train: warning: skipped checkpoint {note}; moved it to {dest}; "
                      f"resuming from step {start}", file=sys.stderr)
        if skipped:
            distributed.barrier("quarantine")
            mngr.reload()
        state = {"params": out["params"], "opt": out["opt_state"],
                 "step": jax.device_put(jnp.asarray(start, jnp.int32))}
        train_flops = float(out["meta"].get("train_flops", 0.0))
    elif init_src is not None:  # a new run from other parameters, with a fresh optimizer
        state = trainer.init_from(*warmstart.params(init_src, trainer.abstract_params()))
    if lead:  # after the restore: a workdir that cannot resume is left as it was
        provenance.record_start(workdir, cfg, mesh, start, provenance.changed_fields(workdir, cfg))
        (workdir / "config.json").write_text(cfg.to_json(indent=2))
    last_saved = start

    writer = metrics.Writer(workdir, enabled=lead)
    progress = metrics.Progress(cfg.train.steps, start, cfg.train.log_every,
                                enabled=lead and cfg.train.progress, label=f"[{cfg.kind}] ")
    peak = metrics.peak_flops(cfg.train.peak_flops, cfg.model.dtype)
    profiler = provenance.Profiler(cfg.train.profile_steps, workdir)
    stop = {"flag": False}
    preempted = 0
    # one process: our handler; several: JAX's preemption service catches SIGTERM and Orbax's
    # reached_preemption() makes every process stop (and save) at the same step
    old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True)) \
        if jax.process_count() == 1 else None
    history: list[dict[str, float]] = []
    last_eval: dict[str, float] = {}
    t_last = time.perf_counter()
    pending = None

    skipped_steps = 0

    def fetch(pending: tuple[int, Any]) -> None:
        nonlocal t_last, train_flops, skipped_steps
        step, dev = pending
        m = {k: float(v) for k, v in jax.device_get(dev).items()}
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if not (math.isfinite(m["nll"]) and math.isfinite(m["grad_norm"])):
            skipped_steps += 1
            if cfg.train.nonfinite == "stop" or skipped_steps > cfg.train.max_skipped:
                raise TrainingDiverged(
                    f"train: loss {m['nll']} / grad norm {m['grad_norm']} at step {step} "
                    f"({skipped_steps} non-finite step(s)); not saved, last good checkpoint: "
                    f"{last_saved or 'none'}; lower optim.lr, check the data, or set "
                    "--config.train.nonfinite=skip")
            if lead:  # "skip": the step's update was discarded inside the step
                print(f"blt-jax train: warning: non-finite loss at step {step}; update skipped "
                      f"({skipped_steps}/{cfg.train.max_skipped})", file=sys.stderr)
            return
        row = objective.summarize(m) | {"lr": m["lr"], "grad_norm": m["grad_norm"],
                                        "bytes_per_s": m["n_bytes"] / dt, "step_time": dt}
        if "n_patches" in m:
            row["patches_per_s"] = m["n_patches"] / dt
        fl, patcher_fl = trainer.flops_per_step(m["n_targets"], row.get("bytes_per_patch"))
        train_flops += fl
        row["mfu"] = (fl + patcher_fl) / dt / (peak * jax.device_count())
        row["train_flops"] = train_flops
        history.append(row | {"step": step})
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            writer.write(step, row)
        progress.update(step, f"loss {row['loss']:.3f} bpb {row['bpb']:.3f} "
                              f"{row['bytes_per_s']:.3g} B/s")

    try:
        with jax.set_mesh(mesh):
            for step in range(start + 1, cfg.train.steps + 1):
                batch = trainer.put_batch(next(train_it))
                if step == start + 1 and jax.process_count() > 1:
                    # compile everywhere first, then start together: CPU (gloo) collectives give
                    # up if peers reach the first one more than 30 s apart
                    trainer.train_step.lower(state, batch, trainer.frozen).compile()
                    distributed.rendezvous("first_step")
                profiler.before(step)
                state, dev_metrics = trainer.train_step(state, batch, trainer.frozen)
                profiler.after(step, state)
                if pending is not None:
                    fetch(pending)
                pending = (step, dev_metrics)
                eval_metrics = None
                if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                    fetch(pending)
                    pending = None
                    eval_it = data.batches(eval_docs, seq_len=cfg.data.seq_len,
                                           batch_size=cfg.data.eval_batch_size, seed=0,
                                           train=False, bpe_tokenizer=tok)
                    eval_metrics = evaluator.evaluate(
                        state["params"], data.take(eval_it, cfg.train.eval_batches or None),
                        cfg.data.eval_batch_size) | {"eval_p_max": evaluator.p_max}
                    last_eval = eval_metrics
                    writer.write(step, eval_metrics | {"train_flops": train_flops})
                if mngr.should_save(step) or step == cfg.train.steps or stop["flag"]:
                    if pending is not None:  # the NaN guard sees a step before it is saved
                        fetch(pending)
                        pending = None
                    checkpoint.save(mngr, step, params=state["params"], opt_state=state["opt"],
                                    data_iter=train_it,
                                    meta={"step": step, "train_flops": train_flops},
                                    metrics={checkpoint.BEST_METRIC: eval_metrics["eval_bpb"]}
                                    if eval_metrics else None, force=True)
                    last_saved = step
                if stop["flag"] or mngr.reached_preemption(step):
                    preempted = step
                    break
            if pending is not None:
                fetch(pending)
    finally:
        profiler.close()
        mngr.wait_until_finished()
        mngr.close()
        writer.close()
        progress.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    summary = {"kind": cfg.kind, "workdir": str(workdir), "steps": history[-1]["step"]
               if history else start, "train_flops": train_flops} | last_eval | extra
    summary.update(metrics.summarize_history(history))
    summary.update(kind.summary(cfg, trainer.p_max))
    if preempted:
        summary["preempted_at"] = preempted
        if lead:
            print(f"blt-jax train: stopped by SIGTERM after step {preempted} (checkpoint saved); "
                  "rerun the same command to resume", file=sys.stderr)
    if lead:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    distributed.barrier("run_done")  # processes leave together: jax.distributed's shutdown waits
    return summary
