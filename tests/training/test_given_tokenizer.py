"""A BPE baseline trains on a given Hugging Face tokenizer.json (issue 13, point 4)."""

import json

from blt_jax import config
from blt_jax.pipeline import corpus
from blt_jax.text import bpe
from blt_jax.training import train


def test_baseline_trains_with_a_given_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([d.decode("utf-8", "ignore") for d in corpus.documents("train")[:40]],
                            trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    c = config.tiny_experiment("bpe")
    c.model.vocab_size = tok.get_vocab_size() + 1  # id 0 is "!" here: shifted off the pad id
    c.bpe.tokenizer_path = str(path)
    c.data.update(seq_len=32, batch_size=4, eval_batch_size=4)
    c.train.update(steps=2, eval_every=2, eval_batches=1, progress=False, log_every=1)
    c.mesh.shape = (1, 1, 1)
    summary = train.run(c, tmp_path / "run")
    assert summary["steps"] == 2 and summary["eval_bpb"] > 0
    meta = json.loads((tmp_path / "run" / bpe.META).read_text())
    assert meta["source"] == "file" and not (tmp_path / "run" / bpe.FILE).exists()
    assert 1.0 < summary["bytes_per_token"] < 8.0
