"""The one path type: local paths and ``gs://`` URLs through etils ``epath`` (Orbax and grain use
it too), so a bucket workdir is a bucket workdir and never a local ``./gs:/...`` folder.

``pathlib.Path('gs://b/x').absolute()`` is ``/cwd/gs:/b/x``: every path the project reads or
writes goes through `path()` instead. Other schemes (``file://``, ``s3://``, ``http://``...) are
refused with a one-line error: blt-jax is tested on local disks and on GCS only.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from typing import Union

from etils import epath

Path = epath.Path
PathLike = Union[str, os.PathLike]
SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MAGIC = re.compile(r"[*?\[]")

try:  # the reliability work's one-line user error, where it exists
    from blt_jax.errors import UserError as _Base  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the tree's state
    _Base = ValueError


class PathError(_Base):
    """A path blt-jax cannot use (unknown scheme); the message is one line."""


def scheme(p: PathLike) -> str | None:
    """'gs' for gs:// URLs, None for local paths (refusing unknown schemes)."""
    s = os.fspath(p)
    m = _SCHEME.match(s)
    if m is None:
        return None
    name = m.group(1).lower()
    if name not in SCHEMES:
        raise PathError(f"path: {s!r} uses {name}://, which blt-jax does not read or write; "
                        "use a local path or gs://BUCKET/...")
    return name


def path(p: PathLike) -> Path:
    """An epath.Path: gs:// stays a URL, local paths become absolute (Orbax needs that)."""
    if scheme(p) is not None:
        return epath.Path(os.fspath(p))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def is_remote(p: PathLike) -> bool:
    return scheme(p) is not None


def glob(pattern: PathLike) -> list[str]:
    """Sorted files matching a glob (``**`` recursive), local or gs://."""
    s = os.fspath(pattern)
    if not is_remote(s):
        return sorted(f for f in _glob.glob(os.path.expanduser(s), recursive=True)
                      if os.path.isfile(f))
    if not _MAGIC.search(s):  # no wildcard: the file itself
        return [s] if epath.Path(s).is_file() else []
    import fsspec  # epath's glob refuses `**` on GCS; gcsfs lists the prefix once instead

    found = fsspec.filesystem("gs").glob(s, detail=True)
    return sorted("gs://" + name for name, info in found.items() if info.get("type") == "file")


def append_text(p: PathLike, text: str) -> None:
    """Appends to a text file; object stores have no append, so there it is read + rewrite."""
    f = path(p)
    if not is_remote(p):
        with f.open("a") as fh:
            fh.write(text)
        return
    old = f.read_text() if f.exists() else ""
    f.write_text(old + text)


def copy_tree_file(src: PathLike, dst: PathLike) -> None:
    """Copies one file between any two supported locations (bytes, no metadata)."""
    path(dst).write_bytes(path(src).read_bytes())
