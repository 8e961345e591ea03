"""Bits-per-byte of a workdir's model (`blt-jax eval`).

Byte counting (spec §10): the document stream is BOS bytes EOS BOS bytes EOS ...; every stream
position after the first is a target exactly once (rows overlap by one id), and EOS/BOS targets
count as one byte each. BPE baselines divide their summed token NLL by the same byte count: each
token contributes the number of text bytes it stands for (<bos>/<eos>: one).
"""

from __future__ import annotations

import pathlib
from typing import Any

from blt_jax import api, data, sharding
from blt_jax.objective import LN2


def evaluate_workdir(workdir: str | pathlib.Path, *, step: int | None = None,
                     source: str | None = None, path: str | None = None,
                     split: str = "validation", max_batches: int | None = None,
                     mesh_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:
    from blt_jax.train import Trainer

    cfg = api.read_config(workdir)
    mesh = sharding.make_mesh(tuple(mesh_shape or cfg.mesh.shape))
    model = api.load(workdir, step, mesh=mesh)
    if source is not None:
        cfg.data.source = source
    if path is not None:
        cfg.data.path = path
    docs = data.documents(cfg.data, split)
    trainer = Trainer(cfg, mesh, model.entropy_model)
    batches = data.batches(docs, seq_len=cfg.data.seq_len, batch_size=cfg.data.eval_batch_size,
                           seed=0, train=False, bpe_tokenizer=model.tokenizer)
    out = trainer.evaluate(model.params, data.take(batches, max_batches),
                           cfg.data.eval_batch_size)
    result = {"workdir": str(workdir), "kind": model.kind, "step": model.step, "split": split,
              "source": cfg.data.source, "documents": len(docs),
              "bytes": out["eval_bytes"], "nats": out["eval_bpb"] * out["eval_bytes"] * LN2,
              "bpb": out["eval_bpb"]}
    if "eval_bytes_per_patch" in out:
        result["bytes_per_patch"] = out["eval_bytes_per_patch"]
    return result
