"""The baseline tokenizer: raw bytes kept exactly, given tokenizer.json files, bounded training."""

import json

import numpy as np
import pytest

from blt_jax.pipeline import corpus
from blt_jax.text import bpe

TRAIN = corpus.documents("train")[:40]
TEXTS = [b"plain ascii", "caf\u00e9 \u65e5\u672c \U0001f642".encode(), b"\xff\xfe\x80 lone bytes \xc3(",
         b"<eos> and <bos> are text here", b"", b"\xe2\x82"]


@pytest.fixture(scope="module")
def trained():
    return bpe.train(TRAIN, 400)


def test_byte_alphabet_is_the_tokenizers_one():
    from tokenizers import pre_tokenizers
    alpha = bpe.byte_alphabet()
    assert sorted(alpha) == list(range(256))
    assert set(alpha.values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_every_byte_kept_and_counted(trained):
    rng = np.random.default_rng(0)
    texts = TEXTS + [bytes(rng.integers(0, 256, 64, dtype=np.uint8)) for _ in range(20)]
    for t in texts:
        ids, nb = trained.encode_document(t)
        assert ids[0] == trained.bos and ids[-1] == trained.eos
        assert int(nb.sum()) == len(t) + 2  # <bos>/<eos> one byte each, like BLT
        assert trained.decode_bytes(ids) == t  # the exact bytes, invalid UTF-8 included
        assert (ids > 2).sum() == len(ids) - 2  # text never turns into special ids


def test_invalid_byte_is_one_token_of_one_byte(trained):
    ids = trained.encode(b"\xff")
    assert len(ids) == 1 and trained.nbytes[ids[0]] == 1 and trained.pieces[ids[0]] == b"\xff"
    # U+FFFD (what errors="replace" made of it) is 3 bytes; the raw byte stays 1
    assert trained.nbytes[trained.encode("\ufffd".encode())].sum() == 3


def hf_style_tokenizer(tmp_path, pad_first=False):
    """A Llama-3-shaped tokenizer.json: byte-level BPE, specials appended after the vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>"] if pad_first else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([d.decode("utf-8", "ignore") for d in TRAIN], trainer)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_0|>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path, tok


def test_given_tokenizer_json_maps_specials_and_shifts_off_pad(tmp_path):
    path, raw = hf_style_tokenizer(tmp_path)
    assert raw.id_to_token(0) == "!"  # a real token at id 0 ...
    tok = bpe.from_file(tmp_path)  # a folder holding tokenizer.json works too
    assert tok.shift == 1 and tok.vocab_size == raw.get_vocab_size() + 1
    assert tok.bos == raw.token_to_id("<|begin_of_text|>") + 1
    assert tok.eos == raw.token_to_id("<|end_of_text|>") + 1
    ids = tok.encode(b"!!")
    assert 0 not in ids.tolist()  # ... is never the pad id 0 the pipeline masks
    assert (ids - 1).tolist() == raw.encode("!!", add_special_tokens=False).ids
    for t in TEXTS + [b"<|end_of_text|> typed by a user"]:
        ids, nb = tok.encode_document(t)
        assert int(nb.sum()) == len(t) + 2 and tok.decode_bytes(ids) == t
    described = bpe.describe(tok, TRAIN[:5])
    want = sum(len(d) for d in TRAIN[:5]) / sum(len(raw.encode(d.decode()).ids) for d in TRAIN[:5])
    assert described["bytes_per_token"] == pytest.approx(want)  # measured on real text
    with pytest.raises(ValueError, match="stays where it is"):
        tok.save(tmp_path / "elsewhere")
    (tmp_path / "p").mkdir()
    path2, _ = hf_style_tokenizer(tmp_path / "p", pad_first=True)
    assert bpe.from_file(path2).shift == 0  # an id-0 pad token keeps the tokenizer's ids


def test_unusable_tokenizer_files_give_one_line_errors(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    wl = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.save(str(tmp_path / "wl.json"))
    with pytest.raises(ValueError, match="not a byte-level BPE"):
        bpe.from_file(tmp_path / "wl.json")
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        bpe.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable"):
        bpe.from_file(tmp_path / "bad.json")
    path, raw = hf_style_tokenizer(tmp_path)
    spec = json.loads(path.read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if "text" not in t["content"]]
    (tmp_path / "nobos.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="no bos token"):
        bpe.from_file(tmp_path / "nobos.json")


def test_training_sample_is_bounded_and_seeded():
    docs = [bytes([65 + i % 26]) * (10 + i) for i in range(200)]
    a = bpe.sample(docs, max_docs=20, seed=3)
    assert a == bpe.sample(docs, max_docs=20, seed=3) and len(a) == 20
    assert a != bpe.sample(docs, max_docs=20, seed=4)
    assert set(a) <= set(docs) and len(set(a)) == 20
    small = bpe.sample(docs, max_docs=200, max_bytes=500, seed=0)
    assert sum(len(d) for d in small) <= 500 and len(small) < 200


def test_prepare_trains_once_and_caches(tmp_path):
    cfg = {"bpe": {"sample_docs": 10, "seed": 1}}
    meta = bpe.prepare(tmp_path, TRAIN, 300, cfg)
    assert meta["trained_docs"] == 10 and meta["source"] == "trained"
    stamp = (tmp_path / bpe.FILE).stat().st_mtime_ns
    assert bpe.prepare(tmp_path, TRAIN, 300, cfg)["sample_sha256"] == meta["sample_sha256"]
    assert (tmp_path / bpe.FILE).stat().st_mtime_ns == stamp  # cached: not trained again
    assert bpe.load(tmp_path).vocab_size == 300
    bpe.prepare(tmp_path, TRAIN, 320, cfg)  # a different spec retrains
    assert bpe.load(tmp_path).vocab_size == 320
    path, raw = hf_style_tokenizer(tmp_path)
    given = tmp_path / "given"
    given.mkdir()
    meta = bpe.prepare(given, TRAIN, 0, {"bpe": {"tokenizer_path": str(path)}})
    assert meta["source"] == "file" and not (given / bpe.FILE).exists()
    assert bpe.load(given).vocab_size == raw.get_vocab_size() + 1
