"""Build a model from its config, read a workdir's config, restore a workdir's weights: the one
constructor that training, inference, evaluation and the tools share (so none of them imports
another to get a model).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from flax import nnx

from blt_jax import config, paths
from blt_jax.errors import UserError
from blt_jax.model import kinds
from blt_jax.model.blt import check_inputs
from blt_jax.scale import sharding
from blt_jax.training import checkpoint


class Weights(NamedTuple):
    """A model's structure, parameters and model config: how a frozen entropy model travels
    (the parameters may be abstract, sharded ShapeDtypeStructs for AOT compilation)."""

    graphdef: nnx.GraphDef
    params: Any
    config: ml_collections.ConfigDict


def build_model(model_cfg: ml_collections.ConfigDict, seed: int = 0) -> nnx.Module:
    """A freshly initialised BLT, entropy model or token LM (by ``model.kind``)."""
    config.validate(model_cfg)
    return kinds.module_class(model_cfg)(model_cfg, rngs=nnx.Rngs(seed))


def abstract_model(model_cfg: ml_collections.ConfigDict, seed: int = 0
                   ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state) without allocating parameters."""
    return nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, seed)))


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The run config stored in a blt-jax workdir."""
    path = paths.path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"workdir: {workdir} has no config.json (not a blt-jax workdir)")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    if "model" in cfg:
        config.with_runtime_defaults(cfg.model)
    return cfg


def load_weights(workdir: str | pathlib.Path, step: int | None = None,
                 mesh: jax.sharding.Mesh | None = None, model_overrides: dict | None = None
                 ) -> tuple[ml_collections.ConfigDict, Weights, int]:
    """(run config, weights, step) of a workdir's checkpoint (the latest unless `step`).

    With `mesh` the parameters are restored straight into its shards; without, as one whole
    copy on this process's first device (meaningful with many processes). `model_overrides`
    replace model-config fields that leave the parameters as they are (e.g. entropy_context)
    before the network is built, so every path that merges the graph sees them.
    """
    cfg = read_config(workdir)
    cfg.model.update(model_overrides or {})
    graphdef, abstract = abstract_model(config.validate(cfg.model))
    if mesh is not None:
        shardings = sharding.state_shardings(abstract, mesh)
    else:
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: local, abstract)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    params, step = checkpoint.restore_params(workdir, abstract, step)
    return cfg, Weights(graphdef, params, cfg.model), step


def entropy_fn(weights: Weights) -> Callable[[Any], np.ndarray]:
    """Host ids (B, N) -> next-byte entropies (B, N) in nats under an entropy model."""
    jitted = jax.jit(lambda p, ids: kinds.entropies(nnx.merge(weights.graphdef, p), ids))

    def fn(ids: Any) -> np.ndarray:
        ids = np.atleast_2d(np.asarray(ids, np.int32))
        check_inputs(ids)
        return np.asarray(jitted(weights.params, ids))

    return fn
