"""Packing by patches (paper §4.3; the reference's loader): every training row holds the same
number of patches, so the latent transformer has no padded slots; bytes vary per row and are
padded up to the byte cap `data.seq_len`.

Patches are cut per document on the host (stored entropies for the entropy rules, ids alone
for space/static/byte) and rows are cut from the stream of patches, crossing documents at
patch boundaries. Row k starts with row k-1's last id as a one-byte patch (the first patch is
always length 1), so rows overlap by one id and every id after the first is a target exactly
once, as in packing by bytes. A row ends when it holds `p` patches or the next patch would pass
`n + 1` ids; a patch longer than a whole row is split. Nothing is dropped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import grain
import numpy as np

from blt_jax.text import patching


class Packing(NamedTuple):
    rule: patching.PatchRule
    patches: int  # P: patches per row (the latent length)
    bytes: int  # N: ids per row (x), the byte cap


class DocumentPatches(grain.transforms.Map):
    """{"ids"(, "entropies")} of a document -> {"ids", "lengths"} (Σ lengths = len(ids))."""

    def __init__(self, rule: patching.PatchRule):
        self.rule = rule

    def map(self, doc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lengths = patching.patch_lengths(doc["ids"], doc.get("entropies"), self.rule,
                                         include_next=False)
        return {"ids": doc["ids"], "lengths": lengths[lengths > 0].astype(np.int64)}


class PatchRowsIterator(grain.DatasetIterator):
    """Rows of at most P patches over at most N + 1 ids -> examples with `patch_lengths`.

    The state is the parent's state before the current document, the patch and the ids of
    that document already used (a split patch leaves a partial one), and the carried id.
    """

    def __init__(self, parent: grain.DatasetIterator, packing: Packing):
        super().__init__(parent)
        self.p, self.n = packing.patches, packing.bytes
        self.doc: dict[str, np.ndarray] | None = None
        self.doc_state = parent.get_state()
        self.patch = self.used = 0  # next patch of the document; its ids already taken
        self.offset = 0  # ids of the document before that patch
        self.carry: int | None = None

    def _advance(self) -> None:
        self.doc_state = self._parent.get_state()
        self.doc = next(self._parent)
        self.patch = self.used = self.offset = 0

    def __next__(self) -> dict[str, np.ndarray]:
        ids: list[np.ndarray] = []
        lengths: list[int] = []
        if self.carry is not None:
            ids.append(np.asarray([self.carry]))
            lengths.append(1)
        size = len(lengths)
        while len(lengths) < self.p:
            if self.doc is None or self.patch == len(self.doc["lengths"]):
                self._advance()
                continue
            rest = int(self.doc["lengths"][self.patch]) - self.used
            room = self.n + 1 - size
            if not lengths and rest > 1:
                rest = 1  # a row's first patch is one id
            elif rest > room:
                if len(lengths) > 1:
                    break  # the next patch would pass the byte cap: the row ends here
                rest = room  # a patch longer than a row: split it
            start = self.offset + self.used
            ids.append(self.doc["ids"][start: start + rest])
            lengths.append(rest)
            size += rest
            self.used += rest
            if self.used == int(self.doc["lengths"][self.patch]):
                self.offset += self.used
                self.patch, self.used = self.patch + 1, 0
        row = np.concatenate(ids).astype(np.int32)
        self.carry = int(row[-1])
        real = len(row) - 1
        lengths[-1] += self.n - real  # byte padding joins the last patch: Σ = N + 1
        x = np.zeros(self.n, np.int32)
        y = np.zeros(self.n, np.int32)
        x[:real], y[:real] = row[:-1], row[1:]
        out_lengths = np.zeros(self.p, np.int32)
        out_lengths[:len(lengths)] = lengths
        return {"ids": x, "targets": y, "mask": np.arange(self.n) < real,
                "patch_lengths": out_lengths}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self.doc_state, "patch": self.patch, "used": self.used,
                "offset": self.offset, "carry": self.carry, "started": self.doc is not None}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.doc_state, self.doc, self.carry = state["parent"], None, state["carry"]
        self.patch, self.used, self.offset = state["patch"], state["used"], state["offset"]
        if state["started"]:
            self.doc = next(self._parent)


class PatchRows(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, packing: Packing):
        super().__init__(parent)
        self.packing = packing

    def __iter__(self) -> PatchRowsIterator:
        return PatchRowsIterator(self._parent.__iter__(), self.packing)
