"""What a run records about itself and where it ran: WORKDIR/run.json (one entry per start:
git revision, package versions, devices, mesh, command line, config fields changed on resume)
and the optional `train.profile_steps` trace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

import jax
import ml_collections

from blt_jax import paths

PACKAGES = ("blt-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "libtpu")


def _git_revision() -> str | None:
    """The source tree's commit (+ '-dirty'), None outside a git checkout."""
    here = paths.path(__file__).parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_fields(workdir: paths.Path, cfg: ml_collections.ConfigDict) -> dict[str, list[Any]]:
    """Run fields (outside `model`, which must match) that differ from the workdir's
    config.json: {field: [old, new]}; empty for a new workdir."""
    stored = workdir / "config.json"
    if not stored.exists():
        return {}
    old = _flat(json.loads(stored.read_text()))
    new = _flat(json.loads(cfg.to_json()))
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
            if not k.startswith("model.") and old.get(k) != new.get(k)}


def record_start(workdir: paths.Path, cfg: ml_collections.ConfigDict, mesh: Any, start: int,
                 changed: dict[str, list[Any]]) -> dict[str, Any]:
    """Appends this start to WORKDIR/run.json (process 0) and reports changed fields."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "start_step": start,
             "git": _git_revision(), "packages": _versions(),
             "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
             "process_count": jax.process_count(), "mesh": dict(mesh.shape),
             "command": sys.argv, "changed_on_resume": changed}
    path = workdir / "run.json"
    starts = json.loads(path.read_text())["starts"] if path.exists() else []
    paths.write_text_atomic(path, json.dumps({"starts": starts + [entry]}, indent=2, default=str))
    if changed:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:6])
        print(f"blt-jax train: note: resuming with changed settings: {shown}", file=sys.stderr)
    return entry


class Profiler:
    """A jax.profiler trace of steps [first, last] into WORKDIR/tb (TensorBoard's profile tab)."""

    def __init__(self, steps: Any, workdir: paths.Path):
        self.first, self.last = (tuple(steps) + (0, 0))[:2] if steps else (0, 0)
        self.dir, self.active = str(workdir / "tb"), False

    def before(self, step: int) -> None:
        if self.first and step == self.first:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after(self, step: int, state: Any) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
