"""The embedded default corpus: text every Python installation carries, no download needed.

Documents are the prose of `pydoc_data.topics` (the language reference topics behind `help()`)
and the standard library's own top-level modules (source code); both are cut at line boundaries
into pieces of at most 16 KiB. A stable CRC32 of each document's name puts ~5% of them in the
validation split. The corpus therefore depends on the local Python version; the names say
which (e.g. ``stdlib/json/__init__.py#0``).
"""

from __future__ import annotations

import functools
import pathlib
import sysconfig
import zlib

from blt_jax.errors import UserError

MAX_DOC_BYTES = 16 * 1024
VALIDATION_PERCENT = 5


def _pieces(name: str, data: bytes) -> list[tuple[str, bytes]]:
    out, start, k = [], 0, 0
    while start < len(data):
        end = min(len(data), start + MAX_DOC_BYTES)
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut > start else end
        out.append((f"{name}#{k}", data[start:end]))
        start, k = end, k + 1
    return out


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[tuple[str, bytes], ...]:
    import pydoc_data.topics

    docs = []
    for k, v in sorted(pydoc_data.topics.topics.items()):
        docs.extend(_pieces(f"pydoc/{k}", v.encode("utf-8")))
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            docs.extend(_pieces(f"stdlib/{path.name}", path.read_bytes()))
        except OSError:
            continue
    return tuple((n, d) for n, d in docs if d.strip())


def is_validation(name: str) -> bool:
    return zlib.crc32(name.encode()) % 100 < VALIDATION_PERCENT


def documents(split: str) -> list[bytes]:
    """The documents of `split` ("train" or "validation"), in a fixed order."""
    if split not in ("train", "validation"):
        raise UserError(f"split: the embedded corpus has 'train' and 'validation', not {split!r}")
    want = split == "validation"
    return [d for n, d in _all_documents() if is_validation(n) == want]


def names(split: str) -> list[str]:
    want = split == "validation"
    return [n for n, _ in _all_documents() if is_validation(n) == want]
