"""The lm-eval adapter: a local task (tests/data/lm_eval_task, no downloads) scores a BLT and a
BPE workdir through lm-eval's own evaluator, and its numbers equal hand sums over `model.logits`."""

import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.pipeline import corpus
from blt_jax.text import bpe, tokenizer
from helpers import make_workdir

import lm_eval
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from blt_jax.evaluation import lm_eval_adapter

TASK_DIR = pathlib.Path(__file__).parents[1] / "data" / "lm_eval_task"
TASKS = ["blt_tiny_choice", "blt_tiny_rolling", "blt_tiny_generate"]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    cfg = config.model_preset("blt_tiny")
    cfg.patching.threshold = 5.11  # about the random entropy model's median: mixed patches
    blt = make_workdir(root / "blt", "blt", cfg, config.model_preset("entropy_tiny"))
    bcfg = config.model_preset("bpe_tiny")
    base = make_workdir(root / "bpe", "bpe", bcfg)
    bpe.train(corpus.documents("train")[:30], bcfg.vocab_size).save(base)
    return {"blt": blt, "bpe": base}


@pytest.fixture(scope="module")
def adapters(workdirs):
    return {k: lm_eval_adapter.BltJaxLM(str(w), batch_size=4, max_length=32)
            for k, w in workdirs.items()}


def hand_logprob(model, row, m):
    """log p(last m ids of row | the ids before them), from one `model.logits` call."""
    logits = model.logits(row[None, :-1])[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return sum(logp[j, row[j + 1]] for j in range(len(row) - 1 - m, len(row) - 1))


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_equals_hand_sum_over_logits(adapters):
    lm = adapters["blt"]
    context, continuation = "The capital of France is", " Paris."
    got, _ = lm.loglikelihood([request("loglikelihood", context, continuation)])[0]
    ids = tokenizer.encode(context + continuation, eos=False)  # BOS + 31 bytes: one window
    want = hand_logprob(lm.model, ids, len(continuation))
    assert lm.model.patch_lengths(ids[None, :-1]).max() > 1  # real patches, not bytes
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
    # BPE: the continuation is the tokens of context + continuation after the context's tokens
    lm = adapters["bpe"]
    tok = lm.model.tokenizer
    got, greedy = lm.loglikelihood([request("loglikelihood", context, continuation)])[0]
    ids = np.concatenate([[tok.bos], tok.encode(context + continuation)]).astype(np.int32)
    want = hand_logprob(lm.model, ids, len(ids) - 1 - len(tok.encode(context)))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4) and not greedy  # untrained


def test_context_cut_on_the_left_and_rolling_chunks(adapters):
    for name, lm in adapters.items():
        long = "A long context that is more than thirty-two ids of the model, " * 2
        reqs = [request("loglikelihood", long, " and the end."),
                request("loglikelihood", "", "x"), request("loglikelihood", "ab", "")]
        got = [lp for lp, _ in lm.loglikelihood(reqs)]
        ids, first = lm._pair(long, " and the end.")
        assert len(ids) - 1 > 32  # the window is cut
        want = hand_logprob(lm.model, ids[-33:], len(ids) - first)  # the last 32 inputs
        assert got[0] == pytest.approx(want, rel=1e-5), name
        assert got[1] < 0 and got[2] == 0.0
        # a rolling document of ~3 windows: every target once, each with a full window
        text = long + long
        rolled = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])[0]
        row_ids = lm._ids(text)
        assert len(row_ids) > 66  # three chunks or more
        want = 0.0
        for a in range(1, len(row_ids), 32):  # targets a..b-1 after the 32 ids before b-1
            b = min(a + 32, len(row_ids))
            want += hand_logprob(lm.model, row_ids[max(0, b - 33): b], b - a)
        assert rolled == pytest.approx(want, rel=1e-5), name


def test_chunks_score_each_target_once_with_full_windows():
    ids = np.arange(100)
    rows = lm_eval_adapter.chunks(ids, 1, 32)
    scored = np.concatenate([row[len(row) - m:] for row, m in rows])
    np.testing.assert_array_equal(scored, ids[1:])
    assert all(len(row) - 1 <= 32 for row, _ in rows) and len(rows[-1][0]) == 33


def test_local_task_scores_blt_and_bpe(workdirs):
    manager = TaskManager(include_path=str(TASK_DIR))
    for name, workdir in workdirs.items():
        out = lm_eval.simple_evaluate(model="blt-jax", tasks=TASKS, task_manager=manager,
                                      model_args=f"workdir={workdir},max_length=64",
                                      batch_size=4, log_samples=False)
        res = out["results"]
        assert 0 <= res["blt_tiny_choice"]["acc,none"] <= 1, name
        bpb = res["blt_tiny_rolling"]["bits_per_byte,none"]
        assert math.isfinite(bpb) and bpb > 1, name  # untrained: more than a bit per byte
        assert 0 <= res["blt_tiny_generate"]["exact_match,none"] <= 1, name
        assert out["config"]["workdir"] == str(workdir) and out["config"]["kind"] == name


def test_generate_until_cuts_prompts_and_matches_model_generate(adapters):
    long = "".join(chr(33 + i % 90) for i in range(600))  # more ids than the caches hold
    for name, lm in adapters.items():
        kw = {"until": ["\n"], "max_gen_toks": 10, "do_sample": False}
        got = lm.generate_until([request("generate_until", "Hello", kw),
                                 request("generate_until", long, kw)])
        fit = lm._fit(long, 10)
        assert long.encode().endswith(fit) and len(fit) < len(long), name
        assert len(lm.codec.prompt(fit)) + 10 <= lm.model.max_context
        want = lm.model.generate([b"Hello", fit], max_new_bytes=10, stop="\n")
        assert got == [w.decode("utf-8", errors="replace") for w in want], name
        assert all("\n" not in g for g in got)


def test_user_mistakes_are_one_line_errors(workdirs, adapters):
    with pytest.raises(UserError, match="does not take"):
        lm_eval_adapter.BltJaxLM(str(workdirs["blt"]), pretrained="gpt2")
    with pytest.raises(UserError, match="batch_size"):
        lm_eval_adapter.BltJaxLM(str(workdirs["blt"]), batch_size="many")
    with pytest.raises(UserError, match="gen_kwargs"):
        adapters["blt"].generate_until([request("generate_until", "a", {"num_beams": 4})])


def test_command_line_runs_the_task(workdirs, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "blt_jax.evaluation.lm_eval_adapter", "--model", "blt-jax",
         "--model_args", f"workdir={workdirs['bpe']},max_length=64", "--tasks", "blt_tiny_choice",
         "--include_path", str(TASK_DIR), "--batch_size", "4", "--output_path", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "blt_tiny_choice" in out.stdout and "acc" in out.stdout
