"""Input pipelines (grain): documents -> ids (BOS ... EOS) -> fixed-length rows -> batches.

Sources share one interface, a random-access sequence of documents: the embedded corpus, local
text files / globs, JSONL (`text_field`), TFDS via `tfds.data_source` (ArrayRecord, no
TensorFlow), and ArrayRecord shards written by `blt-jax preprocess` (bytes + float16 entropies).

Packing (default for every model): **by bytes** (`data.packing="bytes"`). The document stream is concatenated and cut
into rows of N + 1 ids (x = row[:N], y = row[1:]); BLT patches are computed inside the jitted
step from the frozen entropy model (or the stored entropies) into a static P_max buffer. Why
bytes, not the paper's fixed patches per row: patches then never need to be known on the host
(no offline entropy pass is required), every row has the same shape for XLA, and byte padding
is nil. The cost moves to the patch buffer: unused P_max slots (reported as `patch_padding`)
and rows needing more than P_max patches (merged into the last patch, reported as `overflow`).
Each row starts mid-document with a fresh context, as in the reference's training rows.
`data.packing="patches"` (training BLTs) is the paper's packing instead: see patch_packing.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from blt_jax.errors import UserError
from blt_jax import paths
from blt_jax.pipeline import corpus
from blt_jax.pipeline.patch_packing import DocumentPatches, Packing, PatchRows
from blt_jax.text import tokenizer

HOLDOUT_EVERY = 20  # text/jsonl sources without a validation path hold out every 20th document


# ---------------------------------------------------------------------------------------------
# Documents


class TfdsDocuments(Sequence):
    """Random access to a TFDS split's `text` feature as bytes (str under mock_data)."""

    def __init__(self, name: str, split: str, data_dir: str | None, field: str):
        if data_dir:
            paths.scheme(data_dir)  # local or gs:// only, one line otherwise
        import tensorflow_datasets as tfds

        from blt_jax.pipeline import tfds_text  # noqa: F401  registers the local `blt_text` builder

        try:
            self.src = tfds.data_source(name, split=split, data_dir=data_dir or None)
        except Exception as e:  # TFDS raises many types for a missing dataset
            raise UserError(f"data: cannot open TFDS {name!r} split {split!r} in "
                             f"{data_dir or 'the default data_dir'}: {e}") from None
        self.field = field

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> bytes:
        value = self.src[i][self.field]
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def encode_record(text: bytes, entropies: np.ndarray) -> bytes:
    """Preprocessed record: u32 byte count, the bytes, then float16 entropies of BOS..EOS ids."""
    h = np.asarray(entropies, np.float16)
    if h.shape != (len(text) + 2,):
        raise UserError(f"entropies: need {len(text) + 2} values (BOS..EOS), got {h.shape}")
    return struct.pack("<I", len(text)) + text + h.tobytes()


def decode_record(record: bytes) -> tuple[bytes, np.ndarray]:
    (n,) = struct.unpack("<I", record[:4])
    return record[4: 4 + n], np.frombuffer(record[4 + n:], np.float16)


class PreprocessedDocuments(Sequence):
    """ArrayRecord shards from `blt-jax preprocess`: (bytes, entropies) per document."""

    def __init__(self, directory: str, split: str):
        files = paths.glob(str(paths.path(directory) / f"{split}-*.array_record"))
        if not files:
            raise UserError(f"data: no {split}-*.array_record shards in {directory!r}; run "
                             "`blt-jax preprocess` first")
        self.src = grain.sources.ArrayRecordDataSource(files)
        meta = paths.path(directory) / "preprocess.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[bytes, np.ndarray]:
        return decode_record(self.src[i])


def _split_holdout(docs: list[bytes], split: str) -> list[bytes]:
    if len(docs) < 2:
        return docs
    keep_val = split != "train"
    return [d for i, d in enumerate(docs) if (i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == keep_val]


def _read_files(pattern: str) -> list[str]:
    files = paths.glob(pattern)  # local or gs://
    if not files:
        raise UserError(f"data: path {pattern!r} matches no file")
    return files


def documents(data: ml_collections.ConfigDict, split: str) -> Sequence[Any]:
    """The documents of `split` ("train" / "validation") for a data config."""
    source = data.source
    if source == "embedded":
        docs: Sequence[Any] = corpus.documents(split)
    elif source in ("text", "jsonl"):
        if not data.path:
            raise UserError(f"data: source {source!r} needs --config.data.path")
        docs = []
        for f in _read_files(data.path):
            raw = paths.path(f).read_bytes()
            if not raw.strip():
                raise UserError(f"data: {f} is empty; remove it or point data.path elsewhere")
            if b"\x00" in raw[:8192]:
                raise UserError(f"data: {f} looks binary (NUL bytes); data.source "
                                f"{source!r} reads UTF-8 text files")
            if source == "text":
                docs.append(raw)
                continue
            for lineno, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    docs.append(json.loads(line)[data.text_field].encode("utf-8"))
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"data: {f}:{lineno} is not JSON with a "
                                     f"{data.text_field!r} string field") from None
        docs = _split_holdout(docs, split)
    elif source == "tfds":
        if not data.tfds_name:
            raise UserError("data: source 'tfds' needs --config.data.tfds_name")
        tfds_split = data.tfds_split if split == "train" else data.tfds_eval_split
        docs = TfdsDocuments(data.tfds_name, tfds_split, data.tfds_data_dir, data.text_field)
    elif source == "preprocessed":
        docs = PreprocessedDocuments(data.path, split)
    else:
        raise UserError(f"data: unknown source {source!r} (embedded, text, jsonl, tfds, "
                         "preprocessed)")
    if len(docs) == 0:
        raise UserError(f"data: the {split} split of source {source!r} is empty")
    return docs


def check_enough(docs: Sequence[Any], seq_len: int, split: str) -> None:
    """An in-memory corpus shorter than one row cannot fill a batch; say so before training."""
    if isinstance(docs, list) and sum(len(d) for d in docs) < seq_len:
        raise UserError(f"data: the {split} split holds {sum(len(d) for d in docs)} bytes, less "
                        f"than one row (data.seq_len={seq_len}); add data or lower data.seq_len")


# ---------------------------------------------------------------------------------------------
# Rows


class ByteIds(grain.transforms.Map):
    """A document -> {"ids": BOS + bytes + EOS} (+ aligned float32 "entropies")."""

    def map(self, doc: Any) -> dict[str, np.ndarray]:
        if isinstance(doc, tuple):
            text, h = doc
            return {"ids": tokenizer.encode(text), "entropies": np.asarray(h, np.float32)}
        return {"ids": tokenizer.encode(doc)}


class TokenIds(grain.transforms.Map):
    """A document -> BPE {"ids", "nbytes"}: nbytes[j] = text bytes token j stands for."""

    def __init__(self, bpe_tokenizer: Any):
        self.tok = bpe_tokenizer

    def map(self, doc: Any) -> dict[str, np.ndarray]:
        text = doc[0] if isinstance(doc, tuple) else doc
        ids, nbytes = self.tok.encode_document(text)
        return {"ids": ids, "nbytes": nbytes}


class StreamRowsIterator(grain.DatasetIterator):
    """Cuts the concatenated document stream into rows of N + 1 ids that overlap by one id.

    Row k covers stream positions kN .. kN + N, so x = row[:N], y = row[1:] scores every
    position after the first exactly once (the training and evaluation byte counts are exact).
    The state is the parent's state before the current document plus an offset into it.
    """

    def __init__(self, parent: grain.DatasetIterator, length: int, pad_last: bool):
        super().__init__(parent)
        self.length, self.pad_last = length, pad_last
        self.doc: dict[str, np.ndarray] | None = None
        self.doc_state = parent.get_state()
        self.offset = 0

    def _advance(self) -> None:
        self.doc_state = self._parent.get_state()
        self.doc = next(self._parent)
        self.offset = 0

    def __next__(self) -> dict[str, np.ndarray]:
        pieces: list[dict[str, np.ndarray]] = []
        need = self.length
        while need:
            if self.doc is None or self.offset == len(self.doc["ids"]):
                try:
                    self._advance()
                except StopIteration:
                    if pieces and self.pad_last and sum(len(p["ids"]) for p in pieces) > 1:
                        break
                    raise
                continue
            take = min(need, len(self.doc["ids"]) - self.offset)
            pieces.append({k: v[self.offset: self.offset + take] for k, v in self.doc.items()})
            self.offset += take
            need -= take
        self.offset -= 1  # the last id of this row is the first of the next
        row = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        return {k: np.pad(v, (0, self.length - len(v))) for k, v in row.items()}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self.doc_state, "offset": self.offset, "started": self.doc is not None}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.doc_state, self.doc, self.offset = state["parent"], None, 0
        if state["started"]:
            self.doc = next(self._parent)
            self.offset = state["offset"]


class StreamRows(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, length: int, pad_last: bool):
        super().__init__(parent)
        self.length, self.pad_last = length, pad_last

    def __iter__(self) -> StreamRowsIterator:
        return StreamRowsIterator(self._parent.__iter__(), self.length, self.pad_last)


class MakeExample(grain.transforms.Map):
    """A row of N + 1 ids -> inputs, targets and the target mask (0 = padding)."""

    def map(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = row["ids"].astype(np.int32)
        out = {"ids": ids[:-1], "targets": ids[1:], "mask": ids[1:] != 0}
        if "entropies" in row:
            out["entropies"] = row["entropies"][:-1].astype(np.float32)
        if "nbytes" in row:
            out["nbytes"] = row["nbytes"][1:].astype(np.int32)
        return out


def batches(docs: Sequence[Any], *, seq_len: int, batch_size: int, seed: int, train: bool,
            bpe_tokenizer: Any = None, shard: tuple[int, int] = (0, 1),
            num_workers: int = 0, packing: Packing | None = None) -> grain.DatasetIterator:
    """A checkpointable grain iterator of {"ids", "targets", "mask", ...} batches (B, seq_len).

    train: shuffled with `seed`, repeated forever, full batches only. Otherwise one ordered pass
    whose last row and batch are zero-padded (mask False), so every byte is scored once.
    `packing` (training BLTs): rows of a fixed number of patches, with their `patch_lengths`.
    """
    index, count = shard
    ds = grain.MapDataset.source(docs)[index::count]
    if train:
        ds = ds.seed(seed).shuffle().repeat(None)
    ds = ds.map(ByteIds() if bpe_tokenizer is None else TokenIds(bpe_tokenizer))
    if packing is not None:
        it = PatchRows(ds.map(DocumentPatches(packing.rule)).to_iter_dataset(
            grain.ReadOptions(num_threads=0)), packing)
    else:
        it = StreamRows(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)), seq_len + 1,
                        pad_last=not train).map(MakeExample())
    it = it.batch(batch_size, drop_remainder=train)
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


class ConcatBatches(grain.DatasetIterator):
    """Rows of several loader shards side by side, in shard order.

    The global batch is the concatenation of `loader_shards` shard batches whichever process
    loads them, so a run gives the same batches on 1 process or on many (each process loads its
    contiguous range of shards). The state lists every shard's state.
    """

    def __init__(self, parents: list[grain.DatasetIterator]):
        super().__init__(parents)

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(p) for p in self._parents]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[str, Any]:
        return {"shards": [p.get_state() for p in self._parents]}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["shards"]) != len(self._parents):
            raise UserError(f"data: checkpoint holds {len(state['shards'])} loader shards for "
                             f"this process, the run has {len(self._parents)}")
        for p, s in zip(self._parents, state["shards"]):
            p.set_state(s)


def train_batches(docs: Sequence[Any], *, seq_len: int, batch_size: int, seed: int,
                  loader_shards: int, process: tuple[int, int], bpe_tokenizer: Any = None,
                  num_workers: int = 0, packing: Packing | None = None) -> grain.DatasetIterator:
    """This process's rows of every global training batch (see ConcatBatches)."""
    index, count = process
    shards = loader_shards or count
    if shards % count or batch_size % shards:
        raise UserError(f"data.loader_shards: {shards} must be a multiple of the {count} "
                         f"processes and divide data.batch_size {batch_size}")
    per = shards // count
    its = [batches(docs, seq_len=seq_len, batch_size=batch_size // shards, seed=seed, train=True,
                   bpe_tokenizer=bpe_tokenizer, shard=(k, shards), num_workers=num_workers,
                   packing=packing)
           for k in range(index * per, (index + 1) * per)]
    return its[0] if len(its) == 1 else ConcatBatches(its)


def local_rows(batch: dict[str, np.ndarray], process: tuple[int, int]) -> dict[str, np.ndarray]:
    """This process's slice of a global batch (every process reads the same evaluation stream)."""
    index, count = process
    n = len(batch["ids"]) // count
    return {k: v[index * n: (index + 1) * n] for k, v in batch.items()}


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Zero rows (mask False) up to batch_size, so a short last eval batch keeps its shape."""
    n = len(batch["ids"])
    if n == batch_size:
        return batch
    return {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
            for k, v in batch.items()}


def take(iterator: Iterator[dict[str, np.ndarray]], n: int | None) -> Iterator[dict[str, np.ndarray]]:
    for i, batch in enumerate(iterator):
        if n is not None and i >= n:
            return
        yield batch
