"""`train.init_from=DIR[:STEP]`: start a new run from another workdir's parameters (a trained
run or an imported release, whose only checkpoint is step 0) with a fresh optimizer state."""

from __future__ import annotations

from typing import Any

import ml_collections

from blt_jax import config, paths
from blt_jax.errors import UserError
from blt_jax.model import factory
from blt_jax.training import checkpoint


def source(cfg: ml_collections.ConfigDict) -> tuple[paths.Path, int | None] | None:
    """(workdir, step or None = newest intact) of train.init_from, checked against cfg.model
    before anything is written; None when unset."""
    spec = cfg.train.init_from
    if not spec:
        return None
    head, sep, tail = spec.rpartition(":")
    where, step = (head, int(tail)) if sep and tail.isdigit() else (spec, None)
    src = paths.path(where)
    if not (src / "config.json").is_file():
        raise UserError(f"train.init_from: {where!r} is not a blt-jax workdir (no config.json); "
                        "give a trained or imported workdir, optionally DIR:STEP")
    diff = config.same_parameters(factory.read_config(src).model, cfg.model)
    if diff:
        raise UserError(f"train.init_from: {where} holds a different model (fields {diff[:4]}); "
                        "use the same model config")
    if step is not None and step not in checkpoint.steps(src):
        raise UserError(f"train.init_from: no step {step} in {where} (have "
                        f"{checkpoint.steps(src)})")
    return src, step


def params(src: tuple[paths.Path, int | None], abstract_params: Any) -> tuple[Any, int]:
    """The source's parameters restored onto this run's shardings, and the step they came from."""
    return checkpoint.restore_params(src[0], abstract_params, src[1])
