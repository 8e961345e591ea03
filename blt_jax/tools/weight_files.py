"""Torch-free readers of released weight files: ``.safetensors`` and ``torch.save`` zip
checkpoints (``consolidated.pth``) -> float32 numpy arrays by tensor name.
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Any

import numpy as np


def _bf16(raw: bytes) -> np.ndarray:
    """bfloat16 bytes -> float32 (bf16 is the top half of an fp32)."""
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """float32 arrays from a .safetensors file (F32, F16, BF16)."""
    raw = pathlib.Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[base + a: base + b]
        dtype = info["dtype"]
        if dtype == "BF16":
            arr = _bf16(buf)
        elif dtype in ("F16", "F32", "F64"):
            arr = np.frombuffer(buf, {"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])
        else:
            raise ValueError(f"safetensors: {path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = arr.astype(np.float32).reshape(info["shape"])
    return out


_STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16,
                   "BFloat16Storage": "bf16", "DoubleStorage": np.float64,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                   "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def read_pth(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A torch.save zip file of tensors -> float32 numpy arrays, without importing torch.

    Reads the format's data.pkl with a restricted unpickler (only tensor rebuilds, storages and
    OrderedDict are allowed) and the raw little-endian storages beside it.
    """
    import pickle
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"weights: {path} is not a torch zip checkpoint (legacy .pth files "
                         "are not supported; re-save with torch >= 1.6)") from None
    pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
    if pkl is None:
        raise ValueError(f"weights: {path} has no data.pkl")
    prefix = pkl[: -len("data.pkl")]

    def load_storage(dtype: Any, key: str, numel: int) -> np.ndarray:
        raw = archive.read(f"{prefix}data/{key}")
        if dtype == "bf16":
            return _bf16(raw)
        return np.frombuffer(raw, dtype)[:numel]

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return _rebuild_tensor
            if module == "torch._utils" and name == "_rebuild_parameter":
                return lambda data, *_: data
            if module == "torch" and name in _STORAGE_DTYPES:
                return _STORAGE_DTYPES[name]
            if module == "collections" and name == "OrderedDict":
                import collections

                return collections.OrderedDict
            raise ValueError(f"weights: {path} holds an unsupported object {module}.{name}")

        def persistent_load(self, pid: Any) -> np.ndarray:
            _, dtype, key, _location, numel = pid
            return load_storage(dtype, key, numel)

    blob = Unpickler(archive.open(pkl)).load()
    sd = blob.get("model", blob) if isinstance(blob, dict) else blob
    return {k: np.asarray(v, np.float32) for k, v in sd.items() if isinstance(v, np.ndarray)}
