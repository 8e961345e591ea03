"""Noise robustness and character-level probes for any loaded model (BLT, entropy model, BPE).

Noise transforms follow the paper's noised-HellaSwag variants (§6.1, Table 3): AntSpeak (upper
case, characters separated by spaces), character drop, random case, character repeat and upper
case; each is seeded and (where it applies) takes a rate. The table reports bits-per-byte on the
clean text and on each noised version, and the relative degradation.

Probes in the spirit of CUTE (spelling, contains-char, substitute-char) are scored by
log-likelihood: an item counts as solved when the correct continuation is more likely than the
distractor given the same prompt; chance is 50%.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

import numpy as np

from blt_jax.inference import api


def _chars(text: bytes) -> str:
    return text.decode("utf-8", errors="replace")


def antspeak(text: bytes, rate: float, rng: random.Random) -> bytes:
    return " ".join(_chars(text).upper()).encode()


def drop(text: bytes, rate: float, rng: random.Random) -> bytes:
    return "".join(c for c in _chars(text) if c.isspace() or rng.random() >= rate).encode()


def random_case(text: bytes, rate: float, rng: random.Random) -> bytes:
    return "".join((c.upper() if rng.random() < 0.5 else c.lower()) if rng.random() < rate else c
                   for c in _chars(text)).encode()


def repeat(text: bytes, rate: float, rng: random.Random) -> bytes:
    return "".join(c * (1 + rng.randint(1, 3)) if not c.isspace() and rng.random() < rate else c
                   for c in _chars(text)).encode()


def upper(text: bytes, rate: float, rng: random.Random) -> bytes:
    return _chars(text).upper().encode()


NOISES: dict[str, Callable[[bytes, float, random.Random], bytes]] = {
    "antspeak": antspeak, "drop": drop, "random_case": random_case, "repeat": repeat,
    "upper": upper}


def noised(docs: Sequence[bytes], name: str, rate: float = 0.1, seed: int = 0) -> list[bytes]:
    if name not in NOISES:
        raise ValueError(f"noise: unknown {name!r}; choose from {sorted(NOISES)}")
    rng = random.Random(seed)
    return [NOISES[name](d, rate, rng) for d in docs]


def noise_table(models: dict[str, api.Model], docs: Sequence[bytes], *, rate: float = 0.1,
                seed: int = 0, noises: Sequence[str] = tuple(NOISES), **score_kw: Any
                ) -> list[dict[str, Any]]:
    """Rows per model: clean BPB, noised BPB per transform, relative degradation (%)."""
    from blt_jax.evaluation import evaluate

    rows = []
    variants = {"clean": list(docs)} | {n: noised(docs, n, rate, seed) for n in noises}
    for name, model in models.items():
        row: dict[str, Any] = {"model": name}
        for v, vdocs in variants.items():
            row[v] = evaluate.score(model, vdocs, **score_kw)["bpb"]
        row["noised_mean"] = float(np.mean([row[n] for n in noises]))
        row["degradation_pct"] = 100.0 * (row["noised_mean"] / row["clean"] - 1.0)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Character-level probes


def words_from(docs: Sequence[bytes], n: int, seed: int = 0) -> list[str]:
    words = sorted({w for d in docs for w in re.findall(r"\b[a-z]{4,9}\b", _chars(d))})
    rng = random.Random(seed)
    rng.shuffle(words)
    return words[:n]


def probe_items(words: Sequence[str], seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    """(prompt, correct continuation, distractor) per task."""
    rng = random.Random(seed)
    items: dict[str, list[tuple[str, str, str]]] = {"spelling": [], "contains_char": [],
                                                    "substitute_char": []}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for w in words:
        i = rng.randrange(len(w) - 1)
        swapped = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if swapped != w:
            items["spelling"].append((f"The spelling of {w} is", " " + " ".join(w) + ".",
                                      " " + " ".join(swapped) + "."))
        present = rng.random() < 0.5
        c = rng.choice(w) if present else rng.choice([x for x in letters if x not in w])
        yes, no = (" yes.", " no.") if present else (" no.", " yes.")
        items["contains_char"].append((f"Does {w} contain the letter {c}? Answer:", yes, no))
        old = rng.choice(sorted(set(w)))
        new = rng.choice([x for x in letters if x not in w])
        items["substitute_char"].append((f"Replace {old} with {new} in {w}:",
                                         " " + w.replace(old, new) + ".", " " + w + "."))
    return items


def loglik(model: api.Model, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    """log p(continuation | prompt) = log p(prompt + continuation) - log p(prompt)."""
    full = [_sequence_logprob(model, (p + c).encode()) for p, c in zip(prompts, continuations)]
    base = [_sequence_logprob(model, p.encode()) for p in prompts]
    return np.asarray(full) - np.asarray(base)


def _sequence_logprob(model: api.Model, text: bytes) -> float:
    ids = model.codec.prompt(text)
    n = len(ids)
    width = max(16, -(-n // 16) * 16)
    row = np.zeros((1, width), np.int32)
    row[0, :n] = ids
    logits = model.logits(row)[0, : n - 1]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(np.take_along_axis(logp, np.asarray(ids[1:])[:, None], -1).sum())


def probe_table(models: dict[str, api.Model], items: dict[str, list[tuple[str, str, str]]]
                ) -> list[dict[str, Any]]:
    rows = []
    for name, model in models.items():
        row: dict[str, Any] = {"model": name}
        for task, its in items.items():
            prompts = [p for p, _, _ in its]
            good = loglik(model, prompts, [c for _, c, _ in its])
            bad = loglik(model, prompts, [d for _, _, d in its])
            row[task] = float(np.mean(good > bad))
        rows.append(row)
    return rows
