"""Byte tokenizer: UTF-8 bytes <-> BLT ids (spec §1).

Ids: 0 BOE/pad, 1 BOS, 2 EOS, 3 BPE delimiter, byte b -> b + 4. Vocabulary 260.
Raw `bytes` round-trip exactly through `encode` / `decode_bytes`, invalid UTF-8 included.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

BOE_ID = 0  # padding id in batches; never a real target
BOS_ID = 1
EOS_ID = 2
BPE_DELIM_ID = 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET


def to_bytes(text_or_bytes: str | bytes | bytearray) -> bytes:
    """UTF-8 encodes `str` (unencodable lone surrogates dropped, as the reference does)."""
    if isinstance(text_or_bytes, str):
        return text_or_bytes.encode("utf-8", errors="ignore")
    if isinstance(text_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(text_or_bytes)
    raise TypeError(f"text must be str or bytes, got {type(text_or_bytes).__name__}")


def encode(text_or_bytes: str | bytes, bos: bool = True, eos: bool = True) -> np.ndarray:
    """Returns int32 ids: [BOS] + (byte + 4 for each byte) + [EOS]."""
    raw = np.frombuffer(to_bytes(text_or_bytes), dtype=np.uint8).astype(np.int32) + OFFSET
    parts = [np.array([BOS_ID], np.int32)] if bos else []
    parts.append(raw)
    if eos:
        parts.append(np.array([EOS_ID], np.int32))
    return np.concatenate(parts)


def _check_ids(ids: Iterable[int]) -> np.ndarray:
    arr = np.asarray(list(ids) if not hasattr(ids, "__array__") else ids)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"ids must lie in [0, {VOCAB_SIZE}); got min {arr.min()} max {arr.max()}")
    return arr.reshape(-1).astype(np.int64)


def decode_bytes(ids: Iterable[int], cut_at_eos: bool = False) -> bytes:
    """The exact bytes behind `ids`; special ids (< 4) are dropped."""
    arr = _check_ids(ids)
    if cut_at_eos:
        eos_at = np.flatnonzero(arr == EOS_ID)
        if eos_at.size:
            arr = arr[: eos_at[0] + 1]
    return (arr[arr >= OFFSET] - OFFSET).astype(np.uint8).tobytes()


def decode(ids: Iterable[int], cut_at_eos: bool = False) -> str:
    """Text behind `ids`. Never raises on invalid UTF-8: bad bytes become U+FFFD.

    (The reference drops them with errors="ignore"; replacement keeps the damage visible.)
    """
    return decode_bytes(ids, cut_at_eos=cut_at_eos).decode("utf-8", errors="replace")
