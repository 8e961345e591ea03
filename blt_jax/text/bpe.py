"""The token baseline's tokenizer: a byte-level BPE trained locally on the training split.

Ids: 0 <pad>, 1 <bos>, 2 <eos>, then the byte-level BPE vocabulary. Every token stands for a
known number of text bytes (byte-level pieces are one character per byte; <bos>/<eos> count as
one byte each, as BLT's BOS/EOS targets do), so bits-per-byte of the baseline divides by exactly
the same byte count as BLT. Text is given to the tokenizer as UTF-8 decoded with replacement.
"""

from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np

FILE = "bpe_tokenizer.json"
SPECIALS = ("<pad>", "<bos>", "<eos>")


class BpeTokenizer:
    def __init__(self, tok: "tokenizers.Tokenizer"):  # noqa: F821
        self.tok = tok
        vocab = tok.get_vocab()
        self.vocab_size = tok.get_vocab_size()
        self.nbytes = np.ones(self.vocab_size, np.int32)
        for piece, i in vocab.items():
            if piece not in SPECIALS:
                self.nbytes[i] = len(piece)  # byte-level alphabet: one character per byte
        self.bos, self.eos = vocab["<bos>"], vocab["<eos>"]

    def encode(self, text: bytes | str) -> np.ndarray:
        s = text.decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text
        return np.asarray(self.tok.encode(s).ids, np.int32)

    def encode_document(self, text: bytes | str) -> tuple[np.ndarray, np.ndarray]:
        """<bos> + tokens + <eos>, and the bytes each id stands for."""
        ids = np.concatenate([[self.bos], self.encode(text), [self.eos]]).astype(np.int32)
        return ids, self.nbytes[ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) >= len(SPECIALS)])

    def save(self, workdir: str | pathlib.Path) -> None:
        self.tok.save(str(pathlib.Path(workdir) / FILE))


def train(docs: Iterable[bytes], vocab_size: int) -> BpeTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"bpe vocab_size: needs at least {256 + len(SPECIALS)} (all bytes + "
                         f"specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((d.decode("utf-8", errors="replace") for d in docs), trainer)
    return BpeTokenizer(tok)


def load(workdir: str | pathlib.Path) -> BpeTokenizer:
    from tokenizers import Tokenizer

    path = pathlib.Path(workdir) / FILE
    if not path.is_file():
        raise ValueError(f"bpe: {path} is missing (train the baseline in this workdir first)")
    return BpeTokenizer(Tokenizer.from_file(str(path)))


def describe(tok: BpeTokenizer, docs: Sequence[bytes]) -> dict[str, float]:
    n_bytes = sum(len(d) for d in docs)
    n_tokens = sum(len(tok.encode(d)) for d in docs)
    return {"vocab_size": tok.vocab_size, "bytes_per_token": n_bytes / max(n_tokens, 1)}

