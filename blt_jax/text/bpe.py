"""The token baseline's tokenizer: a byte-level BPE, trained locally or read from a Hugging Face
``tokenizer.json`` (``bpe.tokenizer_path``, e.g. the Llama-3 tokenizer the paper compares to).

Ids: 0 is always padding (the pipeline masks id 0), then the tokenizer's own ids. A locally
trained tokenizer has <pad> <bos> <eos> at 0..2; a given one whose id 0 is not a pad token is
shifted up by one (model id = tokenizer id + 1) so none of its tokens is masked.

Bytes stay bytes: text is never decoded with replacement. Valid UTF-8 spans go through the
tokenizer; every byte of an invalid span becomes its own byte-level token (the byte alphabet
holds all 256 bytes), so a document's tokens stand for exactly its bytes and BPE bits-per-byte
divides by the same count as BLT (<bos>/<eos> count one byte each, as BLT's BOS/EOS targets).
Only byte-level BPE tokenizers qualify (GPT-2 / Llama-3 style): their pieces map back to bytes.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from blt_jax import paths
from blt_jax.errors import UserError

FILE = "bpe_tokenizer.json"
META = "bpe_tokenizer.meta.json"
SPECIALS = ("<pad>", "<bos>", "<eos>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")
_BOS_NAMES = ("<bos>", "<|begin_of_text|>", "<s>", "<|startoftext|>", "<|endoftext|>")
_EOS_NAMES = ("<eos>", "<|end_of_text|>", "</s>", "<|endoftext|>")
_INVALID = re.compile("[\udc80-\udcff]+")  # surrogateescape's stand-ins for undecodable bytes

# Bounded BPE training sample (the paper's 128K BPE need not see all of C4).
DEFAULT_SAMPLE_DOCS = 20_000
DEFAULT_SAMPLE_BYTES = 100_000_000


def byte_alphabet() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: byte -> the printable character standing for it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _is_byte_level(spec: Mapping[str, Any]) -> bool:
    def has(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        return node.get("type") == "ByteLevel" or any(has(n) for n in node.get("decoders") or ())
    return has(spec.get("decoder"))


class BpeTokenizer:
    """Model ids <-> bytes over a byte-level `tokenizers.Tokenizer` (see the module docstring)."""

    def __init__(self, tok: "tokenizers.Tokenizer", source: str = ""):  # noqa: F821
        spec = json.loads(tok.to_str())
        where = source or "the tokenizer"
        if not _is_byte_level(spec):
            raise UserError(f"bpe.tokenizer_path: {where} is not a byte-level BPE (decoder "
                            f"{(spec.get('decoder') or {}).get('type')}); only byte-level "
                            "tokenizers (GPT-2 / Llama-3 style) keep every byte countable")
        if spec.get("normalizer") is not None:
            raise UserError(f"bpe.tokenizer_path: {where} normalizes text "
                            f"({spec['normalizer'].get('type')}), so tokens would not stand for "
                            "the document's bytes")
        tok.encode_special_tokens = True  # "<eos>" inside a document is text, not a special id
        self.tok = tok
        vocab = tok.get_vocab()
        names = {i: p for p, i in vocab.items()}
        self.shift = 0 if names.get(0) in _PAD_NAMES else 1
        self.vocab_size = tok.get_vocab_size() + self.shift
        specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        self.bos = self._find(vocab, _BOS_NAMES, "bos", where)
        self.eos = self._find(vocab, _EOS_NAMES, "eos", where)
        alphabet = byte_alphabet()
        inverse = {c: b for b, c in alphabet.items()}
        missing = [b for b, c in alphabet.items() if c not in vocab]
        if missing:
            raise UserError(f"bpe.tokenizer_path: {where} lacks byte tokens for {len(missing)} "
                            "bytes, so invalid UTF-8 could not be kept as bytes")
        self.byte_ids = np.array([vocab[alphabet[b]] + self.shift for b in range(256)], np.int32)
        self.pieces: list[bytes] = [b""] * self.vocab_size
        self.nbytes = np.ones(self.vocab_size, np.int32)  # pad / specials: one byte (BOS, EOS)
        for piece, i in vocab.items():
            if piece in specials or piece in SPECIALS:
                continue
            if any(c not in inverse for c in piece):
                raise UserError(f"bpe.tokenizer_path: {where}: token {piece!r} is not made of "
                                "byte-level characters")
            self.pieces[i + self.shift] = bytes(inverse[c] for c in piece)
            self.nbytes[i + self.shift] = len(piece)

    def _find(self, vocab: Mapping[str, int], names: Sequence[str], what: str, where: str) -> int:
        for name in names:
            if name in vocab:
                return vocab[name] + self.shift
        raise UserError(f"bpe.tokenizer_path: {where} has no {what} token (looked for "
                        f"{', '.join(names)})")

    def encode(self, text: bytes | str) -> np.ndarray:
        """Model ids of the text's bytes (no <bos>/<eos>); invalid UTF-8 stays byte for byte."""
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        s = raw.decode("utf-8", errors="surrogateescape")
        out: list[np.ndarray] = []
        pos = 0
        for m in _INVALID.finditer(s):
            out.append(self._encode_valid(s[pos: m.start()]))
            out.append(self.byte_ids[np.frombuffer(m.group().encode("utf-8", "surrogateescape"),
                                                   np.uint8)])
            pos = m.end()
        out.append(self._encode_valid(s[pos:]))
        return np.concatenate(out).astype(np.int32)

    def _encode_valid(self, s: str) -> np.ndarray:
        if not s:
            return np.zeros(0, np.int32)
        return np.asarray(self.tok.encode(s, add_special_tokens=False).ids, np.int32) + self.shift

    def encode_document(self, text: bytes | str) -> tuple[np.ndarray, np.ndarray]:
        """<bos> + tokens + <eos>, and the bytes each id stands for (Σ = len(bytes) + 2)."""
        ids = np.concatenate([[self.bos], self.encode(text), [self.eos]]).astype(np.int32)
        nbytes = self.nbytes[ids]
        n = len(text.encode("utf-8") if isinstance(text, str) else text)
        if int(nbytes.sum()) != n + 2:  # e.g. a pre-tokenizer that drops or adds bytes
            raise UserError(f"bpe: tokens stand for {int(nbytes.sum()) - 2} bytes of a "
                            f"{n}-byte document; this tokenizer does not keep bytes")
        return ids, nbytes

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The exact bytes of the ids (pad, <bos>, <eos> and other specials drop out)."""
        return b"".join(self.pieces[int(i)] for i in ids if 0 <= int(i) < self.vocab_size)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, workdir: str | pathlib.Path) -> None:
        if self.shift:
            raise ValueError("bpe: a given tokenizer.json stays where it is (bpe.tokenizer_path)")
        (paths.path(workdir) / FILE).write_text(self.tok.to_str())  # gs:// too


def sample(docs: Sequence[Any], *, max_docs: int = DEFAULT_SAMPLE_DOCS,
           max_bytes: int = DEFAULT_SAMPLE_BYTES, seed: int = 0) -> list[bytes]:
    """A seeded random subset of the documents, at most max_docs and about max_bytes of text."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))[: max(int(max_docs), 1)]
    out, total = [], 0
    for i in sorted(order.tolist()):  # the corpus order, so the sample reads like the corpus
        d = docs[i]
        d = d[0] if isinstance(d, tuple) else d
        if out and total + len(d) > max_bytes:
            break
        out.append(d)
        total += len(d)
    return out


def train(docs: Iterable[bytes], vocab_size: int) -> BpeTokenizer:
    """A byte-level BPE with <pad> <bos> <eos> at ids 0..2, trained on the given documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIALS):
        raise UserError(f"bpe vocab_size: needs at least {256 + len(SPECIALS)} (all bytes + "
                        f"specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # invalid bytes are encoded byte by byte; the merges are learnt from the valid text
    tok.train_from_iterator((d.decode("utf-8", errors="ignore") for d in docs), trainer)
    return BpeTokenizer(tok)


def settings(cfg: Any) -> dict[str, Any]:
    """The run's `bpe` config section with defaults (older workdirs have none)."""
    given = dict(cfg.get("bpe") or {}) if hasattr(cfg, "get") else {}
    return {"tokenizer_path": str(given.get("tokenizer_path") or ""),
            "sample_docs": int(given.get("sample_docs") or DEFAULT_SAMPLE_DOCS),
            "sample_bytes": int(given.get("sample_bytes") or DEFAULT_SAMPLE_BYTES),
            "seed": int(given.get("seed") or 0)}


def from_file(path: str | pathlib.Path) -> BpeTokenizer:
    """Any Hugging Face byte-level `tokenizer.json` (a file, or a folder holding one)."""
    from tokenizers import Tokenizer

    p = paths.path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"bpe.tokenizer_path: {path} is not a tokenizer.json file")
    try:
        tok = Tokenizer.from_str(p.read_text())
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise UserError(f"bpe.tokenizer_path: {p} is not a readable tokenizer.json ({e})") from e
    return BpeTokenizer(tok, str(p))


def prepare(workdir: str | pathlib.Path, docs: Sequence[Any], vocab_size: int,
            cfg: Any = None) -> dict[str, Any]:
    """Makes the workdir's tokenizer available (process 0 calls this once); what it used.

    A given tokenizer_path is recorded (not copied); otherwise a BPE is trained on a bounded,
    seeded sample and saved. Either is reused while the recorded spec matches (the cache).
    """
    s = settings(cfg)
    work = paths.path(workdir)
    meta_path = work / META
    if s["tokenizer_path"]:
        meta = {"source": "file", "tokenizer_path": str(paths.path(s["tokenizer_path"]))}
        from_file(meta["tokenizer_path"])  # fails early, with the path, if unusable
    else:
        meta = {"source": "trained", "vocab_size": int(vocab_size), "seed": s["seed"],
                "sample_docs": s["sample_docs"], "sample_bytes": s["sample_bytes"]}
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if (work / FILE).is_file() and (old is None or _same_spec(old, meta)):
            return old or meta  # cached (older workdirs have the file without the record)
        chosen = sample(docs, max_docs=s["sample_docs"], max_bytes=s["sample_bytes"],
                        seed=s["seed"])
        digest = hashlib.sha256()
        for d in chosen:
            digest.update(hashlib.sha256(d).digest())
        train(chosen, vocab_size).save(work)
        meta.update(trained_docs=len(chosen), trained_bytes=sum(len(d) for d in chosen),
                    sample_sha256=digest.hexdigest())
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def _same_spec(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return all(old.get(k) == v for k, v in new.items())


def load(workdir: str | pathlib.Path) -> BpeTokenizer:
    """The workdir's tokenizer: the recorded tokenizer.json, else the trained one."""
    work = paths.path(workdir)
    meta_path = work / META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("source") == "file":
            return from_file(meta["tokenizer_path"])
    from tokenizers import Tokenizer

    path = work / FILE
    if not path.is_file():
        raise UserError(f"bpe: {path} is missing (train the baseline in this workdir first)")
    return BpeTokenizer(Tokenizer.from_str(path.read_text()), str(path))


def describe(tok: BpeTokenizer, docs: Sequence[Any]) -> dict[str, float]:
    """Vocabulary size and measured text bytes per token (specials excluded) on `docs`."""
    texts = [d[0] if isinstance(d, tuple) else d for d in docs]
    n_bytes = sum(len(d) for d in texts)
    n_tokens = sum(len(tok.encode(d)) for d in texts)
    return {"vocab_size": tok.vocab_size, "bytes_per_token": n_bytes / max(n_tokens, 1)}
