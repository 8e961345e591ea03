"""Checks of a training run that need no workdir, run before anything is written: a user
mistake (sizes, data, mesh, entropy model, init_from) leaves the filesystem as it was."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from blt_jax import config, paths
from blt_jax.errors import UserError
from blt_jax.model import factory, kinds
from blt_jax.pipeline import data
from blt_jax.scale import sharding
from blt_jax.training import warmstart

ENTROPY_DIR = "entropy_model"


def check(cfg: ml_collections.ConfigDict, workdir: paths.Path
          ) -> tuple[Any, Any, jax.sharding.Mesh, Any]:
    """(train docs, validation docs, mesh, init_from source) of a valid run config."""
    config.validate_run(cfg)
    config.validate(cfg.model)
    try:  # the kind's checks read only the user's config: their ValueErrors are user mistakes
        kinds.of(cfg).check(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    docs = data.documents(cfg.data, "train")
    eval_docs = data.documents(cfg.data, "validation")
    data.check_enough(docs, cfg.data.seq_len, "train")
    try:
        mesh = sharding.make_mesh(tuple(cfg.mesh.shape), dcn_shape=tuple(cfg.mesh.dcn_shape))
    except ValueError as e:  # make_mesh checks only the user's mesh sizes against the devices
        raise UserError(f"mesh: {e}; pick sizes whose product is {jax.device_count()}") from None
    if jax.device_count() % mesh.size or cfg.data.batch_size % (mesh.shape["data"] *
                                                                mesh.shape["fsdp"]):
        raise UserError(f"mesh: {dict(mesh.shape)} must divide the {jax.device_count()} devices "
                        f"and data.batch_size {cfg.data.batch_size} (data x fsdp); change "
                        "mesh.shape")
    if kinds.of(cfg).uses_patcher(cfg) and not (workdir / ENTROPY_DIR / "config.json").exists():
        entropy_source(cfg)
    return docs, eval_docs, mesh, warmstart.source(cfg)


def entropy_source(cfg: ml_collections.ConfigDict) -> paths.Path:
    """The entropy workdir to freeze (checked before the run writes anything)."""
    src = paths.path(cfg.entropy.workdir)
    if not cfg.entropy.workdir or not (src / "config.json").exists():
        raise UserError(f"entropy: no trained entropy model at {cfg.entropy.workdir!r}; train "
                        "one first (experiments/entropy_tiny.py) and pass "
                        "--config.entropy.workdir=DIR")
    src_cfg = factory.read_config(src)
    if not kinds.of(src_cfg).scores_entropies:
        raise UserError(f"entropy: {src} holds a {src_cfg.kind} model, not an entropy model")
    return src
