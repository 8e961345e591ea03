"""An lm-evaluation-harness model for blt-jax workdirs (BLT, entropy model, BPE baseline), so the
harness's tasks (the paper's ARC, HellaSwag, PIQA, MMLU, ...) score them as they score HF models.

    python -m blt_jax.evaluation.lm_eval_adapter --model blt-jax \\
        --model_args workdir=runs/blt,batch_size=8 --tasks arc_easy

The command is ``lm_eval`` itself with this module imported first: lm-eval finds models only in
its registry, and importing this module registers ``blt-jax``. From Python: import this module,
then ``lm_eval.simple_evaluate(model="blt-jax", model_args={"workdir": ...}, tasks=[...])``.

Units. A log-likelihood is a sum over the model's own ids: bytes for BLT and the entropy model
(BLT patches each window with its entropy model, as ``blt-jax eval`` does), tokens for BPE. Both
score the same text: trailing spaces of a context move to its continuation (lm-eval's rule),
and a BPE continuation is the tokens of context + continuation after the context's tokens.
Windows hold at most ``max_length`` input ids (the model's ``data.seq_len`` unless given):
longer contexts lose their left part; longer continuations and rolling documents are scored in
chunks of ``max_length`` targets, each with a full window of context (lm-eval's rolling rule).
``generate_until`` counts ``max_gen_toks`` in bytes for every kind, cuts prompts on the left to
fit, and stops at ``until`` strings or EOS. One process (one host) scores everything.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from blt_jax.errors import UserError
from blt_jax.inference import api

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # an optional extra
    raise UserError("lm_eval_adapter: lm-eval is not installed; pip install 'blt-jax[lm-eval]'"
                    ) from e

NAME = "blt-jax"
DEFAULT_BATCH = 8
GEN_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "seed")


def chunks(ids: np.ndarray, first: int, n: int) -> list[tuple[np.ndarray, int]]:
    """Rows that score targets ids[first:]: (row, m) scores row[1:]'s last m ids from row[:-1].

    Chunks of at most n targets; each row holds at most n inputs, as many as precede its chunk.
    """
    out = []
    for a in range(max(first, 1), len(ids), n):
        b = min(a + n, len(ids))
        out.append((ids[max(0, b - 1 - n): b], b - a))
    return out


def _bucket(length: int, cap: int) -> int:
    """Padded row length: a power of two (>= 8) up to the window, so few shapes compile."""
    return min(cap, max(8, 1 << (length - 1).bit_length()))


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise UserError(f"batch_size: expected an integer >= 1 or 'auto', got {value!r}")
    return size


@register_model(NAME, "blt_jax")
class BltJaxLM(LM):
    """lm-eval's three request types on a loaded blt-jax workdir (any kind)."""

    def __init__(self, workdir: str, step: int | None = None, batch_size: Any = None,
                 max_length: int | None = None, max_gen_bytes: int = 256, seed: int = 0,
                 entropy_context: int | None = None, max_batch_size: Any = None,
                 device: Any = None, **unknown: Any):
        """`max_batch_size` and `device` come from lm-eval's command line; JAX picks devices."""
        super().__init__()
        if unknown:
            raise UserError(f"model_args: {NAME} does not take {sorted(unknown)}; use workdir, "
                            "step, batch_size, max_length, max_gen_bytes, seed, entropy_context")
        if workdir is None or workdir == "":
            raise UserError(f"model_args: give workdir=DIR (a blt-jax workdir) to {NAME}")
        for name, value in (("max_length", max_length), ("max_gen_bytes", max_gen_bytes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{name}: expected an integer >= 1, got {value!r}")
        self.batch_size = _batch_size(batch_size)
        cfg = api.read_config(workdir)
        self.max_length = max_length or int(cfg.data.seq_len)
        self.max_gen_bytes, self.seed = max_gen_bytes, int(seed)
        self.model = api.load(workdir, step, max_context=self.max_length + max_gen_bytes,
                              entropy_context=entropy_context)
        self.codec = self.model.codec

    # -- scoring ------------------------------------------------------------------------------

    def _ids(self, text: str) -> np.ndarray:
        """BOS + the text's ids, no EOS: what a continuation is scored after."""
        return np.asarray(self.codec.prompt(text.encode("utf-8")), np.int32)

    def _pair(self, context: str, continuation: str) -> tuple[np.ndarray, int]:
        """The ids of context + continuation and the first continuation id."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._ids(context + continuation)
        return whole, min(len(self._ids(context)), len(whole) - 1) if continuation else len(whole)

    def score(self, requests: Sequence[tuple[np.ndarray, int]]) -> list[tuple[float, bool]]:
        """(sum of log p(ids[first:]), every target the argmax) per (ids, first), batched."""
        rows = [(i, row, m) for i, (ids, first) in enumerate(requests)
                for row, m in chunks(ids, first, self.max_length)]
        rows.sort(key=lambda r: -len(r[1]))  # similar lengths share a batch
        logp = np.zeros(len(requests))
        greedy = np.ones(len(requests), bool)
        for k in range(0, len(rows), self.batch_size):
            part = rows[k: k + self.batch_size]
            width = _bucket(len(part[0][1]) - 1, self.max_length)
            batch = np.zeros((self.batch_size, width + 1), np.int32)
            for j in range(self.batch_size):  # spare rows repeat the first (fixed shapes)
                row = part[j if j < len(part) else 0][1]
                batch[j, : len(row)] = row
            logits = self.model.logits(batch[:, :-1]).astype(np.float64)
            top = logits.max(-1, keepdims=True)
            lp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
            for j, (i, row, m) in enumerate(part):
                pos = np.arange(len(row) - 1 - m, len(row) - 1)  # inputs predicting the targets
                logp[i] += lp[j, pos, row[pos + 1]].sum()
                greedy[i] &= bool((logits[j, pos].argmax(-1) == row[pos + 1]).all())
        return [(float(a), bool(b)) for a, b in zip(logp, greedy)]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        out = self.score([self._pair(*r.args) for r in requests])
        for r, o in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, o)
        return out

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        out = [lp for lp, _ in self.score([(self._ids(r.args[0]), 1) for r in requests])]
        for r, o in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, o)
        return out

    # -- generation ---------------------------------------------------------------------------

    def _options(self, kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """lm-eval's gen_kwargs as `Model.generate` keywords (greedy unless do_sample)."""
        kw = dict(kwargs or {})
        unknown = sorted(set(kw) - set(GEN_KEYS))
        if unknown:
            raise UserError(f"gen_kwargs: {NAME} does not take {unknown}; use {', '.join(GEN_KEYS)}")
        until = kw.get("until") or []
        temperature = float(kw.get("temperature") or 0.0)
        sample = kw.get("do_sample")
        if sample is False:
            temperature = 0.0
        elif sample and temperature == 0.0:
            temperature = 1.0
        return dict(max_new_bytes=int(kw.get("max_gen_toks") or self.max_gen_bytes),
                    temperature=temperature, top_k=kw.get("top_k"), top_p=kw.get("top_p"),
                    seed=int(kw.get("seed", self.seed)),
                    stop=[until] if isinstance(until, str) else list(until))

    def _fit(self, context: str, max_new: int) -> bytes:
        """The context's bytes, cut on the left until BOS + its ids + max_new fit the caches."""
        budget = self.model.max_context - max_new
        if budget < 2:
            raise UserError(f"max_gen_toks: {max_new} new bytes leave no room for a prompt in "
                            f"{self.model.max_context} ids; raise max_gen_bytes in model_args")
        data = context.encode("utf-8")
        while (over := len(self.codec.prompt(data)) - budget) > 0:
            data = data[over:]
        return data

    def generate_until(self, requests: list[Any]) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        opts = [self._options(r.args[1] if len(r.args) > 1 else None) for r in requests]
        for i, o in enumerate(opts):  # one call per batch of equal options
            groups.setdefault(repr(sorted(o.items())), []).append(i)
        for members in groups.values():
            o = opts[members[0]]
            for k in range(0, len(members), self.batch_size):
                part = members[k: k + self.batch_size]
                prompts = [self._fit(requests[i].args[0], o["max_new_bytes"]) for i in part]
                for i, new in zip(part, self.model.generate(prompts, **o)):
                    out[i] = new.decode("utf-8", errors="replace")
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return [s or "" for s in out]

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results next to the scores."""
        return {"workdir": str(self.model.workdir), "step": self.model.step,
                "kind": self.model.kind.name, "max_length": self.max_length}


def main(argv: Sequence[str] | None = None) -> None:
    """`lm_eval` with the blt-jax model registered (same arguments)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
