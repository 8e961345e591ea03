import json

import numpy as np
import pytest

from blt_jax.text import tokenizer as tok
from conftest import DATA


def test_golden_fixture():
    d = json.loads((DATA / "tokenizer_data.json").read_text())
    for text, ids in zip(d["texts"], d["tokens"]):
        assert tok.encode(text).tolist() == ids
        assert tok.decode(ids) == text


def test_spec_golden_and_flags():
    ids = tok.encode("Let's check if these tokenizers match!")
    assert len(ids) == 40 and ids[0] == tok.BOS_ID and ids[-1] == tok.EOS_ID
    assert tok.encode("ab", bos=False, eos=False).tolist() == [ord("a") + 4, ord("b") + 4]
    assert tok.encode("", bos=True, eos=False).tolist() == [1]
    assert tok.VOCAB_SIZE == 260


def test_every_byte_sequence_round_trips():
    rng = np.random.default_rng(0)
    for n in [0, 1, 7, 300]:
        raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tok.decode_bytes(tok.encode(raw)) == raw
    everything = bytes(range(256))
    ids = tok.encode(everything, bos=False, eos=False)
    assert ids.min() == 4 and ids.max() == 259
    assert tok.decode_bytes(ids) == everything


def test_decode_never_raises_on_invalid_utf8():
    ids = tok.encode(b"ok \xff\xfe \xe2\x82")  # invalid start bytes and a truncated euro sign
    text = tok.decode(ids)
    assert text.startswith("ok ") and "\ufffd" in text


def test_multibyte_text_and_cut_at_eos():
    text = "naïve café – 日本語 🙂"
    assert tok.decode(tok.encode(text)) == text
    ids = np.concatenate([tok.encode("one"), tok.encode("two")])
    assert tok.decode(ids, cut_at_eos=True) == "one"


def test_lone_surrogates_are_dropped_like_the_reference():
    assert tok.decode_bytes(tok.encode("a\ud800b")) == b"ab"


def test_bad_ids_and_types():
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode([1, 300])
    with pytest.raises(TypeError):
        tok.encode(123)
