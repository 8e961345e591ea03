"""The one path type: local paths and ``gs://`` URLs through etils ``epath`` (Orbax and grain use
it too), so a bucket workdir is a bucket workdir and never a local ``./gs:/...`` folder.

``pathlib.Path('gs://b/x').absolute()`` is ``/cwd/gs:/b/x``: every path the project reads or
writes goes through `path()` instead. Other schemes (``file://``, ``s3://``, ``http://``...) are
refused with a one-line error: blt-jax is tested on local disks and on GCS only.

GCS has no directories and no atomic rename (gcsfs's ``mv`` is copy + delete, object by
object), but a single object upload is atomic: it appears whole or not at all. So the writers
here rename on local disks and write in place on GCS (`write_text_atomic`), and whatever must
look complete writes its marker object last (Orbax's ``commit_success.txt``, the entropy model's
``config.json``).
"""

from __future__ import annotations

import glob as _glob
import os
import pathlib
import re
from typing import Union

import fsspec
from etils import epath

from blt_jax.errors import UserError

Path = epath.Path
PathLike = Union[str, os.PathLike]
SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)")
_MAGIC = re.compile(r"[*?\[]")

# gcsfs caches directory listings per process forever by default: a step another process (or
# tensorstore, which bypasses gcsfs) wrote would stay invisible to `iterdir`. Listings are cheap
# next to what a run does between them, so every listing asks the bucket.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


class PathError(UserError):
    """A path blt-jax cannot use (unknown scheme, missing bucket); the message is one line."""


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
    if not m.group(2):
        raise PathError(f"path: {s!r} names no bucket; use gs://BUCKET/...")
    try:
        import gcsfs  # noqa: F401  epath reaches GCS through fsspec's gcsfs
    except ImportError:
        raise PathError(f"path: {s!r} needs gcsfs to reach GCS; pip install gcsfs "
                        "google-cloud-storage") from None
    return name


def path(p: PathLike) -> Path:
    """An epath.Path: gs:// stays a URL, local paths become absolute (Orbax needs that)."""
    if scheme(p) is not None:
        return epath.Path(os.fspath(p))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def is_remote(p: PathLike) -> bool:
    return scheme(p) is not None


def local_only(p: PathLike, what: str) -> pathlib.Path:
    """A local folder for commands that write through the local filesystem only; a gs:// (or
    other) URL is a one-line error instead of silently becoming a ./gs:/... folder."""
    if _SCHEME.match(os.fspath(p)):
        raise PathError(f"{what}: {os.fspath(p)!r} is not a local path; this command writes "
                        "locally (copy the result with `gcloud storage cp -r` afterwards)")
    return pathlib.Path(os.path.expanduser(os.fspath(p)))


def _gcs() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("gs")


def makedirs(p: PathLike) -> Path:
    """A directory to write under: created on disk; on GCS (no directories) the bucket must
    exist. Checked here because gcsfs's makedirs, which Orbax calls, would create a missing
    bucket in the default project instead of saying the name is wrong."""
    f = path(p)
    if not is_remote(p):
        f.mkdir(parents=True, exist_ok=True)
        return f
    bucket = os.fspath(p).split("://", 1)[1].split("/", 1)[0]
    try:
        found = _gcs().exists(bucket)
    except OSError as e:  # no credentials, no network: the first line says which
        raise PathError(f"path: cannot reach gs://{bucket} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'})") from None
    if not found:
        raise PathError(f"path: bucket gs://{bucket} does not exist (or this account cannot "
                        f"see it); create it (gcloud storage buckets create gs://{bucket}) "
                        "or fix the name")
    return f


def glob(pattern: PathLike) -> list[str]:
    """Sorted files matching a glob (``**`` recursive), local or gs://."""
    s = os.fspath(pattern)
    if not is_remote(s):
        return sorted(f for f in _glob.glob(os.path.expanduser(s), recursive=True)
                      if os.path.isfile(f))
    if not _MAGIC.search(s):  # no wildcard: the file itself
        return [s] if epath.Path(s).is_file() else []
    # epath's glob refuses `**` on GCS; gcsfs lists the prefix once instead
    found = _gcs().glob(s, detail=True)
    return sorted("gs://" + name for name, info in found.items() if info.get("type") == "file")


def write_text_atomic(p: PathLike, text: str) -> None:
    """Replaces a small file so readers see the old or the new text, never a torn one: a
    temporary file renamed over it on disk; on GCS one object upload (atomic by itself)."""
    f = path(p)
    if is_remote(p):
        f.write_text(text)
        return
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(f)


def append_text(p: PathLike, text: str) -> None:
    """Appends to a text file; object stores have no append, so there it is read + rewrite
    (one upload: a kill leaves the old or the new file)."""
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


def move_tree(src: PathLike, dst: PathLike) -> Path:
    """Moves a directory: a rename on disk; on GCS every object is copied, then the source is
    removed (not atomic: a kill midway leaves both, never neither)."""
    s, d = path(src), path(dst)
    if is_remote(src) != is_remote(dst):
        raise ValueError(f"move_tree: {src} and {dst} must both be local or both on GCS")
    if not is_remote(src):
        d.parent.mkdir(parents=True, exist_ok=True)
        s.rename(d)
        return d
    root = os.fspath(s).rstrip("/")
    for name in sorted(_gcs().find(root)):  # every object under the prefix
        rel = name.split(root.split("://", 1)[1] + "/", 1)[1]
        copy_tree_file("gs://" + name, d / rel)
    s.rmtree()
    return d
