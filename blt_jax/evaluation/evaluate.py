"""The fair bits-per-byte harness (`blt-jax eval`): BLT, its entropy model as a byte LM, and the
BPE baseline scored on the same documents, the same bytes and the same context policy.

Byte counting (spec §10): documents form one stream BOS bytes EOS BOS bytes EOS ...; every stream
position after the first is scored exactly once, and EOS/BOS targets count as one byte each. A
BPE model scores its token stream of the same documents; each token target counts the text bytes
it stands for (<bos>/<eos>: one), so both divide by the same total.

Context policies (in each model's own units: bytes for BLT and the entropy model, tokens for BPE;
the window length is the model's `data.seq_len` unless given):
- `stride=None` (default): non-overlapping windows; position j of a window sees the j earlier
  positions of its window.
- `stride=S < N`: sliding windows advancing S; the first window scores all its targets, every
  later one only its last S, so each target sees at least N - S earlier positions.
BLT windows are patched exactly (a patch buffer of N + 1 slots, so no overflow merging).
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator, Sequence

import numpy as np

from blt_jax import config
from blt_jax.inference import api
from blt_jax.model import factory
from blt_jax.pipeline import data
from blt_jax.scale import sharding
from blt_jax.training.objective import LN2
from blt_jax.training.scorer import Scorer


def stream(model: api.Model, docs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's id stream over `docs`, and the text bytes each id stands for (BPE only)."""
    return model.codec.stream([d[0] if isinstance(d, tuple) else d for d in docs])


def windows(ids: np.ndarray, nbytes: np.ndarray | None, n: int, stride: int | None,
            batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of windows of n inputs over the stream with their scoring masks."""
    stride = n if stride is None else stride
    if not 1 <= stride <= n:
        raise ValueError(f"stride: must be in [1, window {n}], got {stride}")
    rows: list[dict[str, np.ndarray]] = []
    total = len(ids)
    start = 0
    while True:
        chunk = ids[start: start + n + 1]
        row = np.zeros(n + 1, np.int32)
        row[: len(chunk)] = chunk
        score = np.zeros(n, bool)
        first = 0 if start == 0 else n - stride
        score[first: len(chunk) - 1] = True
        ex = {"ids": row[:-1], "targets": row[1:], "mask": score}
        if nbytes is not None:
            nb = np.zeros(n + 1, np.int32)
            nb[: len(chunk)] = nbytes[start: start + n + 1]
            ex["nbytes"] = nb[1:]
        rows.append(ex)
        if len(rows) == batch_size:
            yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
            rows = []
        if start + n + 1 >= total:
            break
        start += stride
    if rows:
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def score(model: api.Model, docs: Sequence[Any], *, seq_len: int | None = None,
          stride: int | None = None, batch_size: int | None = None, max_batches: int | None = None,
          mesh: Any = None, scorer: Scorer | None = None) -> dict[str, Any]:
    """BPB and friends of a loaded model on `docs` under one context policy.

    `scorer` replaces the one built from the model's config (the threshold sweep passes its
    own); the model and its config are left as they are.
    """
    cfg = model.config
    n = seq_len or cfg.data.seq_len
    bs = batch_size or cfg.data.eval_batch_size
    if scorer is None:
        # evaluation patches exactly: a buffer of N + 1 slots never overflows
        scorer = Scorer(config.replaced(cfg, {"data.seq_len": n, "data.p_max": n + 1}),
                        mesh or sharding.make_mesh(tuple(cfg.mesh.shape)), patcher_of(model))
    ids, nbytes = stream(model, docs)
    out = scorer.evaluate(model.params, data.take(windows(ids, nbytes, n, stride, bs),
                                                  max_batches), bs)
    n_bytes = out["eval_bytes"]
    result = {"kind": model.kind.name, "documents": len(docs), "context": n,
              "context_policy": "non-overlapping" if stride in (None, n) else f"sliding/{stride}",
              "bytes": n_bytes, "nats": out["eval_bpb"] * n_bytes * LN2, "bpb": out["eval_bpb"]}
    result.update(flops_per_byte(model, n, out.get("eval_bytes_per_patch"),
                                 _bytes_per_token(ids, nbytes)))
    if "eval_bytes_per_patch" in out:
        result.update(bytes_per_patch=out["eval_bytes_per_patch"],
                      patch_padding=out["eval_patch_padding"],
                      overflow_rate=out["eval_overflow_rate"])
    return result


def patcher_of(model: api.Model) -> factory.Weights | None:
    """The frozen entropy model a loaded BLT patches with (None: it patches without one)."""
    return model.entropy_model.weights if model.entropy_model is not None else None


def _bytes_per_token(ids: np.ndarray, nbytes: np.ndarray | None) -> float | None:
    return None if nbytes is None else float(nbytes.sum() / max(len(ids), 1))


def flops_per_byte(model: api.Model, n_ctx: int, bytes_per_patch: float | None,
                   bytes_per_token: float | None) -> dict[str, float]:
    """Inference FLOPs per byte by the paper's formulas (BLT with and without its patcher)."""
    patcher = patcher_of(model)
    return model.kind.inference_flops(model.model_config, n_ctx, bytes_per_patch,
                                      bytes_per_token, patcher.config if patcher else None)


def evaluate_workdir(workdir: str | pathlib.Path, *, step: int | None = None,
                     source: str | None = None, path: str | None = None,
                     split: str = "validation", max_batches: int | None = None,
                     mesh_shape: tuple[int, int, int] | None = None, seq_len: int | None = None,
                     stride: int | None = None) -> dict[str, Any]:
    cfg = factory.read_config(workdir)
    mesh = sharding.make_mesh(tuple(mesh_shape or cfg.mesh.shape))
    model = api.load(workdir, step, mesh=mesh)
    given = {"data.source": source, "data.path": path}
    data_cfg = config.replaced(model.config, {k: v for k, v in given.items() if v is not None}).data
    docs = data.documents(data_cfg, split)
    result = score(model, docs, seq_len=seq_len, stride=stride, max_batches=max_batches,
                   mesh=mesh)
    return {"workdir": str(workdir), "step": model.step, "split": split,
            "source": data_cfg.source} | result
