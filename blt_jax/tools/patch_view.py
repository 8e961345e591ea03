"""`blt-jax patch`: show the patches of a text (and, with a trained model, its entropies)."""

from __future__ import annotations

import numpy as np

from blt_jax.text import patching, tokenizer


_SPECIAL = {tokenizer.BOE_ID: "<PAD>", tokenizer.BOS_ID: "<BOS>", tokenizer.EOS_ID: "<EOS>",
            tokenizer.BPE_DELIM_ID: "<D>"}


def _piece_text(piece: np.ndarray) -> str:
    parts, buf = [], bytearray()
    for i in piece.tolist():
        if i >= tokenizer.OFFSET:
            buf.append(i - tokenizer.OFFSET)
            continue
        parts += [buf.decode("utf-8", errors="replace"), _SPECIAL[i]]
        buf = bytearray()
    parts.append(buf.decode("utf-8", errors="replace"))
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in "".join(parts))


def show_patches(ids: np.ndarray, lengths: np.ndarray) -> str:
    """One line: patches between '|', specials spelled out, control characters escaped.

    A multi-byte character cut by a patch boundary shows as U+FFFD on both sides.
    """
    ends = np.cumsum(lengths[lengths > 0])
    return "|" + "|".join(_piece_text(ids[a:b]) for a, b in zip(np.r_[0, ends[:-1]], ends)) + "|"


def run(*, text: bytes, mode: str | None, threshold: float | None, max_patch_length: int | None,
        patch_size: float, workdir: str | None, plot: str | None) -> str:
    ids = tokenizer.encode(text, bos=True, eos=False)
    entropies, base = None, None
    if workdir is not None:
        from blt_jax.inference import api

        model = api.load(workdir)
        entropies = np.asarray(model.entropies(ids[None]))[0]
        # an entropy model alone patches by the global rule (reference default threshold)
        base = model.patching_rule or patching.PatchRule()
    mode = mode or (base.mode if base is not None else "space")
    if mode in patching.ENTROPY_MODES and entropies is None:
        raise ValueError(f"mode: entropy patching ({mode!r}) needs --workdir with a trained model")
    fields = {k: v for k, v in (("threshold", threshold), ("max_patch_length", max_patch_length))
              if v is not None}
    rule = patching.as_rule(base, mode=mode, patch_size=patch_size, **fields)
    lengths = patching.patch_lengths(ids, entropies, rule, include_next=False)
    n = int((lengths > 0).sum())
    lines = [show_patches(ids, lengths),
             f"{len(ids)} ids (BOS + {len(ids) - 1} bytes), {n} patches, "
             f"{len(ids) / n:.2f} bytes/patch, mode {mode}"]
    if plot is not None:
        if entropies is None:
            raise ValueError("plot: the entropy figure needs --workdir with a trained model")
        from blt_jax.evaluation import figures

        figures.entropy_figure(ids, entropies, lengths, rule.threshold, plot)
        lines.append(f"figure written to {plot}")
    return "\n".join(lines)
