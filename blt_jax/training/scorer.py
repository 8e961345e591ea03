"""The jitted, sharded scoring step of one run config: summed NLL and counts over batches.

What training and evaluation share. It holds no optimizer: evaluation, the threshold sweep and
the compile check score with it alone; :class:`blt_jax.training.train.Trainer` adds the
optimizer and the update on top.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from blt_jax.model import factory, kinds
from blt_jax.pipeline import data
from blt_jax.scale import sharding
from blt_jax.training import objective


class Scorer:
    """Builds the model structure, the batch sharding and the jitted sums for one config."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 frozen: factory.Weights | tuple[Any, Any, ml_collections.ConfigDict] | None = None):
        """frozen: the entropy model as (graphdef, params, model config); params may be
        abstract (ShapeDtypeStructs with shardings) for AOT compilation."""
        self.cfg, self.mesh = cfg, mesh
        self.kind = kinds.of(cfg)
        self.p_max = self.kind.p_max(cfg)
        self.rule = self.kind.patch_rule(cfg.model)
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: factory.build_model(cfg.model,
                                                                                cfg.seed)))
        self.batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
        self.frozen_graphdef = self.frozen = self.frozen_cfg = None
        if frozen is not None:
            self.frozen_graphdef, params, self.frozen_cfg = frozen
            concrete = not isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
            # host copies first: device_put then works for meshes spanning processes
            self.frozen = jax.device_put(jax.tree.map(np.asarray, params),
                                         sharding.state_shardings(params, mesh)) \
                if concrete else params
        self.eval_step = jax.jit(self.sums)

    def sums(self, params: Any, batch: dict[str, jax.Array], frozen: Any) -> dict[str, jax.Array]:
        """The objective's sums of one batch (pure: params and the frozen patcher are inputs)."""
        model = nnx.merge(self.graphdef, params)
        ent = nnx.merge(self.frozen_graphdef, frozen) if frozen is not None else None
        return objective.sums(self.kind, model, batch, patcher=ent, p_max=self.p_max,
                              rule=self.rule)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in batch.items()}

    def evaluate(self, params: Any, batches: Iterable[dict[str, np.ndarray]], batch_size: int
                 ) -> dict[str, float]:
        """Scores the whole (global) evaluation stream; each process feeds its rows."""
        total: dict[str, float] = {}
        process = (jax.process_index(), jax.process_count())
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        batch_size = -(-batch_size // dp) * dp  # zero rows (mask False) fill the batch shards
        params = jax.device_put(params, sharding.state_shardings(params, self.mesh))
        with jax.set_mesh(self.mesh):
            for batch in batches:
                local = data.local_rows(data.pad_batch(batch, batch_size), process)
                s = jax.device_get(self.eval_step(params, self.put_batch(local), self.frozen))
                for k, v in s.items():
                    total[k] = total.get(k, 0.0) + float(v)
        if not total:
            raise ValueError("data: the validation split produced no batch")
        return {"eval_" + k: v for k, v in objective.summarize(total).items()} | {
            "eval_bytes": total["n_bytes"]}
