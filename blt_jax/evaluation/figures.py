"""Figures (matplotlib, written as PNG): the paper's entropy/patch plot (Figure 4 style),
bits-per-byte vs training FLOPs, and the threshold sweep."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from blt_jax.text import tokenizer


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(i: int) -> str:
    if i == tokenizer.BOS_ID:
        return "<"
    if i == tokenizer.EOS_ID:
        return ">"
    if i < tokenizer.OFFSET:
        return "·"
    b = i - tokenizer.OFFSET
    return "_" if b == 32 else chr(b) if 32 < b < 127 else f"\\x{b:02x}"


def entropy_figure(ids: np.ndarray, entropies: np.ndarray, lengths: np.ndarray,
                   threshold: float | None, path: str, title: str = "") -> str:
    """Entropy of each next byte (H[i] sits under byte i + 1, the byte it is about), the
    threshold line, and a vertical rule at every patch start, bytes along the x axis."""
    plt = _plt()
    ids, h = np.asarray(ids), np.asarray(entropies, np.float32)
    n = len(ids)
    fig, ax = plt.subplots(figsize=(max(8, n * 0.16), 3.2))
    x = np.arange(1, n)
    ax.plot(x, h[: n - 1], marker="o", ms=3, lw=1.2, color="#1f77b4", label="entropy H(x_i)")
    if threshold is not None:
        ax.axhline(threshold, color="#d62728", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    starts = np.cumsum(np.concatenate([[0], lengths[lengths > 0]]))[:-1]
    for s in starts:
        if s < n:
            ax.axvline(s - 0.5, color="#7f7f7f", lw=0.6, alpha=0.7)
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels([_label(int(i)) for i in ids], fontsize=7, family="monospace")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylabel("entropy (nats)")
    ax.set_title(title or f"{len(starts)} patches, {n / max(len(starts), 1):.2f} bytes/patch")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bpb_vs_flops(curves: dict[str, Sequence[tuple[float, float]]], path: str) -> str:
    """One line per model: (training FLOPs, validation BPB) points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    xs = [p[0] for pts in curves.values() for p in pts]
    if xs and max(xs) > 30 * min(xs):
        ax.set_xscale("log")
    else:  # a narrow range reads better on a linear axis with one exponent
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_figure(rows: Sequence[dict[str, float]], path: str) -> str:
    """Mean patch size vs inference FLOPs/byte (with and without the entropy model) and BPB."""
    plt = _plt()
    rows = sorted(rows, key=lambda r: r["bytes_per_patch"])
    x = [r["bytes_per_patch"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(x, [r["flops_per_byte"] for r in rows], marker="o", label="BLT FLOPs/byte")
    ax1.plot(x, [r["flops_per_byte_with_entropy"] for r in rows], marker="s",
             label="+ entropy model")
    ax1.set_xlabel("mean bytes per patch")
    ax1.set_ylabel("inference FLOPs per byte")
    ax2 = ax1.twinx()
    ax2.plot(x, [r["bpb"] for r in rows], color="#d62728", marker="^", label="BPB")
    ax2.set_ylabel("bits per byte", color="#d62728")
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
