"""Packing by patches: rows of at most P patches over at most N + 1 ids, cut from the stream of
per-document patches. Checked against the stream itself: every id after the first is a target
exactly once and in order, rows start with the carried id, every other patch starts where the
host patcher starts a document patch, and a row holds fewer than P patches only when the next
patch would not fit. Resumes exactly from its state."""

import json

import grain
import numpy as np
import pytest

from blt_jax.pipeline import corpus, data
from blt_jax.pipeline.patch_packing import DocumentPatches, Packing, PatchRows
from blt_jax.text import patching, tokenizer

RULES = [patching.PatchRule(mode="space"), patching.PatchRule(mode="static", patch_size=3)]


def rows(docs, packing):
    ds = grain.MapDataset.source(docs).map(data.ByteIds()).map(DocumentPatches(packing.rule))
    it = iter(PatchRows(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)), packing))
    out = []
    while True:
        try:
            out.append(next(it))
        except StopIteration:
            return out


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.mode)
@pytest.mark.parametrize("p, n", [(6, 40), (12, 40), (4, 9)])
def test_rows_follow_the_stream_and_its_document_patches(rule, p, n):
    docs = corpus.documents("validation")[:12] + [b"x" * 30]  # a space patch longer than a row
    ids = [tokenizer.encode(d) for d in docs]
    stream = np.concatenate(ids)
    doc_starts, at = set(), 0
    for d in ids:
        lengths = patching.patch_lengths(d, None, rule, include_next=False)
        doc_starts |= set((at + np.cumsum(lengths) - lengths).tolist())
        at += len(d)
    got = rows(docs, Packing(rule, p, n))
    assert len(got) > 10
    pos, targets = 0, []
    for k, r in enumerate(got):
        lengths, real = r["patch_lengths"], int(r["mask"].sum())
        assert r["ids"].shape == (n,) and lengths.shape == (p,)
        assert lengths.sum() == n + 1 and lengths[0] == 1 and (lengths[lengths > 0].size <= p)
        np.testing.assert_array_equal(r["ids"][:real], stream[pos: pos + real])
        targets += r["targets"][:real].tolist()
        starts = pos + np.cumsum(lengths) - lengths
        used = lengths[lengths > 0].size
        inner = starts[1:used].tolist()
        split = [s for s in inner if s not in doc_starts]
        # only a patch longer than a row is split, and only into whole rows
        assert all(s - pos == 1 for s in split), (k, split)
        if used < p and k + 1 < len(got):  # the byte cap ended the row: the next patch is too long
            nxt = got[k + 1]["patch_lengths"][1]
            assert real + 1 + nxt > n + 1
        pos += real
    assert targets == stream[1: pos + 1].tolist()


def test_packed_training_iterator_resumes_exactly():
    docs = corpus.documents("validation")
    packing = Packing(RULES[0], 8, 48)
    it = data.batches(docs, seq_len=48, batch_size=4, seed=3, train=True, packing=packing)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(4)]
    fresh = data.batches(docs, seq_len=48, batch_size=4, seed=3, train=True, packing=packing)
    fresh.set_state(state)
    for w in want:
        b = next(fresh)
        for key in ("ids", "targets", "mask", "patch_lengths"):
            np.testing.assert_array_equal(b[key], w[key])
