"""Build a model from its config, read a workdir's config: the one constructor that training,
inference, evaluation and the tools share (so none of them imports another to get a model).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from flax import nnx

from blt_jax import config
from blt_jax.model.blt import BLT
from blt_jax.model.transformer import Transformer


def build_model(model_cfg: ml_collections.ConfigDict, seed: int = 0) -> nnx.Module:
    """A freshly initialised BLT, entropy model or token LM (by ``model.kind``)."""
    config.validate(model_cfg)
    cls = BLT if model_cfg.kind == "blt" else Transformer
    return cls(model_cfg, rngs=nnx.Rngs(seed))


def abstract_model(model_cfg: ml_collections.ConfigDict, seed: int = 0
                   ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state) without allocating parameters."""
    return nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, seed)))


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The run config stored in a blt-jax workdir."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise ValueError(f"workdir: {workdir} has no config.json (not a blt-jax workdir)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))
