"""`train.init_from=DIR[:STEP]`: start a new run from another workdir's parameters (a trained
run or an imported release, whose only checkpoint is step 0) with a fresh optimizer state."""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from blt_jax import paths
from blt_jax.errors import UserError
from blt_jax.model import factory
from blt_jax.training import checkpoint

# model fields that change how the model runs, not which parameters it has
_RUNTIME_FIELDS = {"dtype", "attention_impl", "remat", "attention_chunk", "local_attention_block"}


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
    have = json.loads(factory.read_config(src).model.to_json())
    want = json.loads(cfg.model.to_json())
    diff = sorted(k for k in set(have) | set(want)
                  if k not in _RUNTIME_FIELDS and have.get(k) != want.get(k))
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
