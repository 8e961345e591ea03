"""The fair bits-per-byte harness (`blt-jax eval`): BLT, its entropy model as a byte LM, and the
BPE baseline scored on the same documents, the same bytes and the same context policy.

Byte counting (spec §10): documents form one stream BOS bytes EOS BOS bytes EOS ...; every stream
position after the first is scored exactly once, and EOS/BOS targets count as one byte each. A
BPE model scores its token stream of the same documents; each token target counts the text bytes
it stands for (<bos>/<eos>: one), so both divide by the same total.

Context policies. With `context_bytes=C` (what `compare` uses) every model gets the same left
context in bytes: a window's inputs hold at most C bytes, token windows are cut where the byte
budget ends, and the result records the budget and the measured mean/max context in bytes.
Without it, windows are in each model's own units (bytes for BLT and the entropy model, tokens
for BPE; the model's `data.seq_len` unless given). Either way:
- `stride=None` (default): non-overlapping windows; position j of a window sees the j earlier
  positions of its window.
- `stride=S < N`: sliding windows advancing S (bytes with context_bytes); the first window
  scores all its targets, every later one only the targets not scored yet, so each target sees
  at least N - S earlier positions (less at most one token's bytes for BPE).
BLT windows are patched exactly (a patch buffer of N + 1 slots, so no overflow merging).
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any, Iterator, Sequence

import numpy as np

from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.inference import api
from blt_jax.model import factory
from blt_jax.pipeline import data
from blt_jax.scale import sharding
from blt_jax.training.objective import LN2
from blt_jax.training.scorer import Scorer


def stream(model: api.Model, docs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's id stream over `docs`, and the text bytes each id stands for (BPE only)."""
    return model.codec.stream([d[0] if isinstance(d, tuple) else d for d in docs])


def _spans(cum: np.ndarray, budget: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(s, e, lo) per window: inputs ids[s:e], targets ids[s+1:e+1], scored targets lo+1..e.

    `cum` is the cumulative byte count (cum[k] = bytes of ids[:k]); a window's inputs hold at
    most `budget` bytes (at least one id), and every later window advances >= `stride` bytes.
    """
    total = len(cum) - 1
    stride = budget if stride is None else stride

    def end(s: int) -> int:
        e = int(np.searchsorted(cum, cum[s] + budget, side="right")) - 1
        return min(max(e, s + 1), total - 1)

    s, e = 0, end(0)
    out = [(0, e, 0)]
    while e < total - 1:
        # advance >= stride bytes, but keep input e so no target is skipped
        s2 = min(max(int(np.searchsorted(cum, cum[s] + stride, side="left")), s + 1), e)
        e2 = end(s2)
        if e2 > e:
            out.append((s2, e2, e))
            e = e2
        s = s2
    return out


def plan(ids: np.ndarray, nbytes: np.ndarray | None, n: int, stride: int | None,
         in_bytes: bool) -> tuple[list[tuple[int, int, int]], int]:
    """The windows' spans (see _spans) and the ids per row that holds the longest of them."""
    per_id = np.ones(len(ids), np.int64) if nbytes is None or not in_bytes else \
        np.asarray(nbytes, np.int64)
    spans = _spans(np.concatenate([[0], np.cumsum(per_id)]), n, stride)
    return spans, (max(e - s for s, e, _ in spans) if in_bytes else n)


def windows(ids: np.ndarray, nbytes: np.ndarray | None, n: int, stride: int | None,
            batch_size: int, *, in_bytes: bool = False, stats: dict[str, float] | None = None
            ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of windows over the stream with their scoring masks.

    in_bytes=False: windows of n ids advancing `stride` ids (each model's own units).
    in_bytes=True: windows of at most n bytes of inputs advancing >= `stride` bytes, token
    windows cut where the byte budget ends (the same left context in bytes for every model).
    `stats`, if given, receives the left context in bytes of the scored targets (per byte).
    """
    if not 1 <= (n if stride is None else stride) <= n:
        raise UserError(f"stride: must be in [1, window {n}], got {stride}")
    if len(ids) < 2:
        raise UserError("documents: the stream needs at least two ids to score")
    per_id = np.ones(len(ids), np.int64) if nbytes is None else np.asarray(nbytes, np.int64)
    spans, width = plan(ids, nbytes, n, stride, in_bytes)
    byte_cum = np.concatenate([[0], np.cumsum(per_id)])
    rows: list[dict[str, np.ndarray]] = []
    for s, e, lo in spans:
        k = e - s
        row = np.zeros(width + 1, np.int32)
        row[: k + 1] = ids[s: e + 1]
        score = np.zeros(width, bool)
        score[lo - s if lo > s else 0: k] = True
        ex = {"ids": row[:-1], "targets": row[1:], "mask": score}
        if nbytes is not None:
            nb = np.zeros(width, np.int32)
            nb[:k] = nbytes[s + 1: e + 1]
            ex["nbytes"] = nb
        if stats is not None:
            scored = np.flatnonzero(score)
            ctx = byte_cum[s + scored + 1] - byte_cum[s]  # bytes of inputs s..s+j
            w = per_id[s + scored + 1]
            stats["context_byte_sum"] = stats.get("context_byte_sum", 0.0) + float((ctx * w).sum())
            stats["scored_bytes"] = stats.get("scored_bytes", 0.0) + float(w.sum())
            stats["max_context_bytes"] = max(stats.get("max_context_bytes", 0.0),
                                             float(ctx.max(initial=0)))
        rows.append(ex)
        if len(rows) == batch_size:
            yield {key: np.stack([r[key] for r in rows]) for key in rows[0]}
            rows = []
    if rows:
        yield {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def score(model: api.Model, docs: Sequence[Any], *, seq_len: int | None = None,
          stride: int | None = None, batch_size: int | None = None, max_batches: int | None = None,
          mesh: Any = None, scorer: Scorer | None = None, context_bytes: int | None = None
          ) -> dict[str, Any]:
    """BPB and friends of a loaded model on `docs` under one context policy.

    context_bytes: every window holds at most this many bytes of inputs (stride in bytes too),
    so models with different units see the same left context; otherwise windows are `seq_len`
    ids of the model (its data.seq_len unless given). `scorer` replaces the one built from the
    model's config (the threshold sweep passes its own); the model is left as it is.
    """
    cfg = model.config
    bs = batch_size or cfg.data.eval_batch_size
    ids, nbytes = stream(model, docs)
    in_bytes = context_bytes is not None
    if in_bytes and int(context_bytes) < 1:
        raise UserError(f"context_bytes: must be >= 1, got {context_bytes}")
    n = int(context_bytes) if in_bytes else (seq_len or cfg.data.seq_len)
    stats: dict[str, float] = {}
    width = plan(ids, nbytes, n, stride, in_bytes)[1]
    batches = itertools.islice(windows(ids, nbytes, n, stride, bs, in_bytes=in_bytes,
                                       stats=stats), max_batches)
    if scorer is None:
        # evaluation patches exactly: a buffer of N + 1 slots never overflows
        scorer = Scorer(config.replaced(cfg, {"data.seq_len": width, "data.p_max": width + 1}),
                        mesh or sharding.make_mesh(tuple(cfg.mesh.shape)), patcher_of(model))
    out = scorer.evaluate(model.params, batches, bs)
    n_bytes = out["eval_bytes"]
    unit = "bytes" if in_bytes or nbytes is None else "tokens"
    policy = "non-overlapping" if stride in (None, n) else f"sliding/{stride}"
    result = {"kind": model.kind.name, "documents": len(docs), "context": n,
              "context_unit": unit, "context_policy": policy,
              "context_bytes": n if unit == "bytes" else None,
              "mean_context_bytes": stats["context_byte_sum"] / max(stats["scored_bytes"], 1.0),
              "max_context_bytes": stats["max_context_bytes"],
              "bytes": n_bytes, "nats": out["eval_bpb"] * n_bytes * LN2, "bpb": out["eval_bpb"]}
    if max_batches is None and stats["scored_bytes"] != n_bytes:
        raise RuntimeError(f"evaluate: windows cover {stats['scored_bytes']:.0f} bytes but the "
                           f"scorer counted {n_bytes:.0f}")
    per_token = _bytes_per_token(ids, nbytes)
    # the attention term sees the context a window holds, not the padded buffer: a byte budget
    # holds n / (bytes per token) tokens (`width` is the longest such window, up to n ids)
    n_ctx = n / per_token if in_bytes and per_token else width
    result.update(flops_per_byte(model, n_ctx, out.get("eval_bytes_per_patch"), per_token))
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


def flops_per_byte(model: api.Model, n_ctx: float, bytes_per_patch: float | None,
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
