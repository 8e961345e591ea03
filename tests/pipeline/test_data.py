"""Data: embedded corpus, exact byte counting, resumable iterators, sharding, BPE byte counts,
JSONL/text/TFDS/preprocessed sources."""

import json

import numpy as np
import pytest

from blt_jax.text import bpe, tokenizer
from blt_jax import config
from blt_jax.pipeline import corpus, data


def data_cfg(**kw):
    c = config.experiment_config("entropy", config.model_preset("entropy_tiny")).data
    c.update(kw)
    return c


def test_embedded_corpus_is_deterministic_and_split():
    train, val = corpus.documents("train"), corpus.documents("validation")
    assert len(train) > 100 and len(val) > 5
    assert sum(map(len, train)) > 1_000_000  # enough text for the tiny runs
    assert not set(corpus.names("train")) & set(corpus.names("validation"))
    assert corpus.documents("validation") == val  # stable
    assert max(map(len, train)) <= corpus.MAX_DOC_BYTES


def test_every_stream_position_is_scored_exactly_once():
    docs = [b"ab", b"", "é🙂".encode(), b"x" * 50, b"last doc"]
    stream = np.concatenate([tokenizer.encode(d) for d in docs])
    for seq_len, batch in [(7, 3), (16, 2), (100, 4)]:
        got = []
        for b in data.batches(docs, seq_len=seq_len, batch_size=batch, seed=0, train=False):
            got += b["targets"][b["mask"]].tolist()
            np.testing.assert_array_equal(b["ids"][:, 1:], b["targets"][:, :-1])
        assert got == stream[1:].tolist()


def test_training_iterator_resumes_exactly():
    docs = corpus.documents("validation")
    it = data.batches(docs, seq_len=64, batch_size=4, seed=3, train=True)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able, as checkpoints store it
    want = [next(it)["ids"] for _ in range(5)]
    fresh = data.batches(docs, seq_len=64, batch_size=4, seed=3, train=True)
    fresh.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(fresh)["ids"], w)
    other = data.batches(docs, seq_len=64, batch_size=4, seed=4, train=True)
    assert not np.array_equal(next(other)["ids"], next(data.batches(
        docs, seq_len=64, batch_size=4, seed=3, train=True))["ids"])  # the seed shuffles


def test_process_shards_are_disjoint_and_complete():
    docs = [f"doc {i} ".encode() * 3 for i in range(9)]
    seen = []
    for index in range(2):
        for b in data.batches(docs, seq_len=512, batch_size=1, seed=0, train=False,
                              shard=(index, 2)):
            seen.append(tokenizer.decode(b["ids"][0]))
    text = "".join(seen)
    assert all(text.count(f"doc {i} ") == 3 for i in range(9))


def test_bpe_counts_each_text_byte_once():
    tok = bpe.train(corpus.documents("train")[:50], 300)
    for text in ["plain ascii", "naïve café — 日本語 🙂", "zxqj vvvwww ŧħïš ŵäš ñëvër šëëñ",
                 "\x00\x01\x7f control"]:
        raw = text.encode("utf-8")
        ids, nbytes = tok.encode_document(raw)
        assert ids[0] == tok.bos and ids[-1] == tok.eos
        assert nbytes.sum() == len(raw) + 2  # <bos>, <eos> count one byte each, like BLT
        assert tok.decode(ids) == text
    docs = [b"first document", "second — d\xc3\xa9j\xc3\xa0".encode()]
    n = 0
    for b in data.batches(docs, seq_len=8, batch_size=2, seed=0, train=False, bpe_tokenizer=tok):
        n += int(b["nbytes"][b["mask"]].sum())
    assert n == sum(len(d) + 2 for d in docs) - 1  # the same count as BLT over these bytes


def test_text_and_jsonl_sources(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello\nworld\n")
    (tmp_path / "b.txt").write_bytes(b"second file")
    docs = data.documents(data_cfg(source="text", path=str(tmp_path / "*.txt")), "train")
    assert list(docs) == [b"hello\nworld\n", b"second file"]
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(40)] + [""]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    cfg = data_cfg(source="jsonl", path=str(tmp_path / "d.jsonl"))
    train, val = data.documents(cfg, "train"), data.documents(cfg, "validation")
    assert len(train) == 38 and len(val) == 2 and b"doc 19" in val
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not JSON with a 'text'"):
        data.documents(data_cfg(source="jsonl", path=str(tmp_path / "bad.jsonl")), "train")
    with pytest.raises(ValueError, match="matches no file"):
        data.documents(data_cfg(source="text", path=str(tmp_path / "none*.txt")), "train")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        data.documents(data_cfg(source="jsonl", path=str(tmp_path / "empty.jsonl")), "train")


def test_tfds_source_offline(tmp_path):
    from blt_jax.pipeline import tfds_text
    for split, texts in [("train", ["alpha beta", "gamma", "ünïcode"]), ("validation", ["delta"])]:
        d = tmp_path / split
        d.mkdir()
        for i, t in enumerate(texts):
            (d / f"{i}.txt").write_text(t)
    tfds_text.prepare(str(tmp_path / "tfds"), {"train": str(tmp_path / "train/*.txt"),
                                                "validation": str(tmp_path / "validation/*.txt")})
    cfg = data_cfg(source="tfds", tfds_name="blt_text", tfds_data_dir=str(tmp_path / "tfds"))
    train = data.documents(cfg, "train")
    assert sorted(train[i] for i in range(len(train))) == sorted(
        t.encode() for t in ["alpha beta", "gamma", "ünïcode"])
    assert data.documents(cfg, "validation")[0] == b"delta"
    with pytest.raises(ValueError, match="cannot open TFDS"):
        data.documents(data_cfg(source="tfds", tfds_name="blt_text",
                                tfds_data_dir=str(tmp_path / "nowhere")), "train")


def test_preprocessed_records_round_trip(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter
    h = np.linspace(0, 5, 7).astype(np.float16)
    w = ArrayRecordWriter(str(tmp_path / "train-00000-of-00001.array_record"), "group_size:1")
    w.write(data.encode_record(b"hello", h))
    w.close()
    docs = data.PreprocessedDocuments(str(tmp_path), "train")
    text, got = docs[0]
    assert text == b"hello" and np.array_equal(got, h)
    b = next(data.batches(docs, seq_len=4, batch_size=1, seed=0, train=False))
    np.testing.assert_allclose(b["entropies"][0], h[:4].astype(np.float32))
    with pytest.raises(ValueError, match="need 7 values"):
        data.encode_record(b"hello", h[:3])
