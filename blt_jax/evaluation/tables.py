"""The result tables of `blt-jax quickstart` and `blt-jax compare`: one renderer for aligned text
and markdown, and the per-byte unit (bytes/patch or bytes/token) both report.
"""

from __future__ import annotations

from typing import Any, Sequence


def render(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Rows of cells under a header: space-aligned text, or a markdown table."""
    if markdown:
        line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
        return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])
    table = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)


def bytes_per_unit(patches: dict[str, Any], tokens: dict[str, Any], default: float) -> float:
    """Bytes per patch (a BLT's, from `patches`) else per token (a BPE model's, from `tokens`)."""
    return patches.get("bytes_per_patch") or tokens.get("bytes_per_token") or default
