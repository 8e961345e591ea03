"""`blt-jax preprocess`: entropies computed once by a trained entropy model, stored as float16 in
ArrayRecord shards beside the text, reusable across BLT runs (`data.source=preprocessed`).

Each document is scored on its own row (BOS bytes EOS), padded to a power-of-two length so a
handful of compiled shapes cover every document; entropies of the padding are dropped.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from blt_jax import paths
from blt_jax.errors import UserError
from blt_jax.inference import api
from blt_jax.pipeline import data
from blt_jax.text import tokenizer


def _bucket(n: int) -> int:
    return max(64, 1 << (n - 1).bit_length())


def run(entropy_workdir: str, out: str, data_cfg: Any = None, shards: int = 1,
        max_docs: int = 0) -> dict[str, Any]:
    from array_record.python.array_record_module import ArrayRecordWriter

    out_p = paths.local_only(out, "out")  # before any work
    model = api.load(entropy_workdir)
    if not model.kind.scores_entropies:
        raise UserError(f"workdir: {entropy_workdir} holds a {model.kind} model; preprocess "
                         "needs an entropy model")
    data_cfg = data_cfg or model.config.data
    out_p.mkdir(parents=True, exist_ok=True)
    if any(out_p.glob("*.array_record")):
        raise UserError(f"out: {out} already holds shards; choose a new directory")
    counts = {}
    for split in ("train", "validation"):
        docs = data.documents(data_cfg, split)
        n = len(docs) if not max_docs else min(max_docs, len(docs))
        writers = [ArrayRecordWriter(str(out_p / f"{split}-{k:05d}-of-{shards:05d}.array_record"),
                                     "group_size:1") for k in range(shards)]
        for i in range(n):
            doc = docs[i]
            text = doc[0] if isinstance(doc, tuple) else doc
            ids = tokenizer.encode(text)
            padded = np.zeros((1, _bucket(len(ids))), np.int32)
            padded[0, : len(ids)] = ids
            h = model.entropies(padded)[0, : len(ids)]
            writers[i % shards].write(data.encode_record(text, h))
        for w in writers:
            w.close()
        counts[split] = n
    meta = {"entropy_workdir": str(pathlib.Path(entropy_workdir).absolute()),
            "entropy_step": model.step, "documents": counts, "dtype": "float16",
            "source": data_cfg.source}
    (out_p / "preprocess.json").write_text(json.dumps(meta, indent=2))
    return meta
