"""Every Orbax call lives here: checkpoint managers, preservation policies, pins, restores.

A workdir holds ``config.json`` (the experiment config) and ``checkpoints/<step>/`` with items
``params``, ``opt_state`` (training only), ``data`` (grain iterator state) and ``meta`` (JSON).
Pinned steps are listed in ``pins.json``; the preservation policy re-reads it before every
deletion decision, so `blt-jax ckpt pin` works while a run is going and survives restarts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import contextlib
import logging

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from blt_jax.errors import UserError
from blt_jax import paths

CHECKPOINTS = "checkpoints"
PINS = "pins.json"
BEST_METRIC = "eval_bpb"
COMMIT_FILE = "commit_success.txt"  # Orbax's marker of a finished save on GCS


def read_pins(workdir: str | os.PathLike) -> set[int]:
    path = paths.path(workdir) / PINS
    if not path.exists():
        return set()
    try:
        return {int(s) for s in json.loads(path.read_text())}
    except (ValueError, TypeError) as e:
        raise UserError(f"pins: {path} is not a JSON list of steps ({e})") from None


def _write_pins(workdir: str | os.PathLike, steps: set[int]) -> None:
    # a crash never leaves a half-written pins file (renamed on disk, one upload on GCS)
    paths.write_text_atomic(paths.path(workdir) / PINS, json.dumps(sorted(steps)))


@dataclasses.dataclass
class FilePins(cm.PreservationPolicy):
    """Keeps the steps listed in the workdir's pins.json (read at every decision)."""

    workdir: str

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        pins = read_pins(self.workdir)
        return [c.step in pins for c in checkpoints]


def manager(workdir: str | os.PathLike, *, save_every: int = 1, keep_latest: int = 3,
            keep_every: int | None = None, keep_best: int = 1, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
    """CheckpointManager keeping the latest N, every K-th step, the best eval BPB and pins."""
    policies: list[Any] = [cm.LatestN(keep_latest), FilePins(str(workdir))]
    if keep_every:
        policies.append(cm.EveryNSteps(keep_every))
    if keep_best:
        policies.append(cm.BestN(get_metric_fn=lambda m: -m[BEST_METRIC], n=keep_best,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only,
        best_fn=lambda m: m[BEST_METRIC], best_mode="min",  # makes Orbax store the metrics
        save_decision_policy=cm.AnySavePolicy([cm.FixedIntervalPolicy(max(save_every, 1)),
                                               cm.PreemptionCheckpointingPolicy()]),
        preservation_policy=cm.AnyPreservationPolicy(policies))
    return ocp.CheckpointManager(paths.path(workdir) / CHECKPOINTS, options=options)


def save(mngr: ocp.CheckpointManager, step: int, *, params: Any, opt_state: Any = None,
         data_iter: Any = None, meta: dict[str, Any] | None = None,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    items: dict[str, Any] = {"params": ocp.args.StandardSave(params),
                             "meta": ocp.args.JsonSave(meta or {})}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    if data_iter is not None:
        import grain

        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    with _quiet_absl():  # Orbax warns on every save that carries no eval metrics
        return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore(mngr: ocp.CheckpointManager, step: int, *, params: Any, opt_state: Any = None,
            data_iter: Any = None) -> dict[str, Any]:
    """Restores onto abstract targets (ShapeDtypeStructs with the shardings wanted now)."""
    if opt_state is not None and not (paths.path(mngr.directory) / str(step) / "opt_state").exists():
        raise UserError(f"workdir: step {step} under {mngr.directory} holds parameters only (an "
                        "import); train in a new workdir with --config.train.init_from=THAT_DIR")
    items: dict[str, Any] = {"params": ocp.args.StandardRestore(params),
                             "meta": ocp.args.JsonRestore()}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardRestore(opt_state)
    if data_iter is not None:
        import grain

        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return {k: out[k] for k in items}


def steps(workdir: str | os.PathLike) -> list[int]:
    """The saved steps. On disk an unfinished save is a ``*.orbax-checkpoint-tmp-*`` folder;
    on GCS (no atomic rename) Orbax saves into ``<step>/`` and writes ``commit_success.txt``
    last, so a step without it is an unfinished save, left out here as Orbax leaves it out
    (its next save of that step replaces it)."""
    root = paths.path(workdir) / CHECKPOINTS
    if not root.is_dir():
        return []
    remote = paths.is_remote(workdir)
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()
                  and (not remote or (p / COMMIT_FILE).exists()))


def problem(workdir: str | os.PathLike, step: int) -> str | None:
    """Why step's directory is not a complete checkpoint (None: it looks complete). A cheap
    look at the files Orbax writes last; `verify` also reads every array."""
    d = paths.path(workdir) / CHECKPOINTS / str(step)
    if not (d / "_CHECKPOINT_METADATA").exists():
        return "no _CHECKPOINT_METADATA (an unfinished save)"
    if not (d / "params").is_dir():
        return "no params/"
    for item in (p for p in d.iterdir() if p.is_dir() and p.name in ("params", "opt_state")):
        for name in ("_METADATA", "manifest.ocdbt"):
            if not (item / name).exists():
                return f"{item.name}/{name} missing"
    return None


def verify(workdir: str | os.PathLike, step: int) -> str | None:
    """`problem`, then a full read of the step's params (truncated or missing array files)."""
    why = problem(workdir, step)
    if why is not None:
        return why
    try:
        with _quiet_absl():
            ocp.PyTreeCheckpointer().restore(paths.path(workdir) / CHECKPOINTS / str(step) /
                                             "params")
    except Exception as e:  # any read failure marks the step bad; the message says which
        return f"unreadable params ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def first_intact(workdir: str | os.PathLike, attempt: Callable[[int], Any],
                 step: int | None = None) -> tuple[Any, int, list[str]]:
    """attempt(step) on the newest step that works -> (result, step, skipped notes).

    A step that is incomplete or fails to restore is skipped with a warning naming it; nothing
    is deleted. An explicit `step` is not replaced by another one; no intact step is a
    one-line UserError, never a silent fresh start.
    """
    available = steps(workdir)
    root = paths.path(workdir) / CHECKPOINTS
    if not available:
        raise UserError(f"checkpoint: no checkpoint under {root}")
    if step is not None and step not in available:
        raise UserError(f"checkpoint: step {step} not in {workdir} (have {available})")
    skipped: list[str] = []
    for s in ([step] if step is not None else available[::-1]):
        why = problem(workdir, s)
        if why is None:
            try:
                return attempt(s), s, skipped
            except UserError:  # a mismatch the user must fix, not a damaged step
                raise
            except Exception as e:  # a corrupt array file: Orbax/TensorStore raise many types
                why = f"restore failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        skipped.append(f"step {s} ({why})")
        logging.getLogger(__name__).warning("checkpoint: skipping step %d under %s: %s", s,
                                            root, why)
    raise UserError(f"checkpoint: no intact checkpoint under {root} (skipped {'; '.join(skipped)})"
                    "; restore the files, or use a new workdir")


def restore_params(workdir: str | os.PathLike, abstract_params: Any, step: int | None = None
                   ) -> tuple[Any, int]:
    """Params of `step` (default: the newest intact one) from a workdir, read-only."""
    def attempt(s: int) -> Any:
        with _quiet_absl(), manager(workdir, read_only=True, async_save=False) as mngr:
            return mngr.restore(s, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params)))["params"]
    params, step, skipped = first_intact(workdir, attempt, step)
    for note in skipped:
        print(f"blt-jax: warning: skipped checkpoint {note}; using step {step}", file=sys.stderr)
    return params, step


def quarantine(workdir: str | os.PathLike, step: int) -> paths.Path:
    """Moves a bad step out of Orbax's sight (never deleted) so training can save it anew
    (a rename on disk; on GCS a copy, then the step's objects are removed)."""
    dest = paths.path(workdir) / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
    return paths.move_tree(paths.path(workdir) / CHECKPOINTS / str(step), dest)


@contextlib.contextmanager
def _quiet_absl():
    """Read-only managers warn that they are read-only; that is the point here."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def save_params_only(workdir: str | os.PathLike, params: Any, step: int = 0,
                     meta: dict[str, Any] | None = None) -> None:
    """A params-only checkpoint (imports, exported entropy models), written synchronously."""
    with manager(workdir, async_save=False) as mngr:
        save(mngr, step, params=params, meta=meta, force=True)
        mngr.wait_until_finished()


def pin(workdir: str | os.PathLike, step: int) -> None:
    if step not in steps(workdir):
        raise UserError(f"pin: no checkpoint at step {step} in {workdir} (have {steps(workdir)})")
    _write_pins(workdir, read_pins(workdir) | {step})


def add_pins(workdir: str | os.PathLike, steps_to_pin: Sequence[int]) -> None:
    """Pins steps ahead of time (config `checkpoint.pinned_steps`): kept once saved."""
    _write_pins(workdir, read_pins(workdir) | {int(s) for s in steps_to_pin})


def unpin(workdir: str | os.PathLike, step: int) -> None:
    pins = read_pins(workdir)
    if step not in pins:
        raise UserError(f"unpin: step {step} is not pinned in {workdir} (pinned: {sorted(pins)})")
    _write_pins(workdir, pins - {step})


def describe(workdir: str | os.PathLike, full: bool = False) -> list[dict[str, Any]]:
    """One row per checkpoint: step, pinned, its saved metrics and what is wrong with it
    (`problem`, or with full=True `verify`, which reads every array)."""
    pins = read_pins(workdir)
    rows = []
    for step in steps(workdir):
        metrics_file = paths.path(workdir) / CHECKPOINTS / str(step) / "metrics" / "metrics"
        metrics = {}
        if metrics_file.exists():
            try:
                metrics = json.loads(metrics_file.read_text())
            except ValueError:
                metrics = {}
        rows.append({"step": step, "pinned": step in pins, "metrics": metrics,
                     "bad": (verify if full else problem)(workdir, step)})
    return rows
