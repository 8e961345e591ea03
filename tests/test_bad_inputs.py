"""The bad-input matrix: each user mistake is one line naming the problem and the fix, exit 2,
no traceback, and no file written or deleted (the test hashes the tree before and after).

Cases run in-process through `cli.main` (the exit code and stderr are what a user sees); a few
real subprocesses check the no-traceback / BLT_JAX_DEBUG contract itself."""

import hashlib
import pathlib
import sys

import numpy as np
import pytest

import helpers
from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.inference import api
from blt_jax.tools import cli

ROOT = pathlib.Path(__file__).parents[1]
ENT = str(ROOT / "experiments" / "entropy_tiny.py")
BLT = str(ROOT / "experiments" / "blt_tiny.py")


def tree_hash(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "notpy.py").write_text("this is not python at all\n")
    (d / "noget.py").write_text("x = 1\n")
    (d / "syntax.py").write_text("def get_config(:\n")
    (d / "wrongtype.py").write_text("def get_config():\n    return {'a': 1}\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    (d / "short.txt").write_text("tiny")
    (d / "nofield.jsonl").write_text('{"body": "x"}\n')
    (d / "big_prompt.txt").write_bytes(b"a" * (1 << 20))
    (d / "emptydir").mkdir()
    trunc = d / "trunc"
    trunc.mkdir()
    (trunc / "params.json").write_text((ROOT / "tests/data/reference_tiny/params.json").read_text())
    raw = (ROOT / "tests/data/reference_tiny/consolidated.pth").read_bytes()
    (trunc / "consolidated.pth").write_bytes(raw[: len(raw) // 3])
    garbage = d / "garbage"
    garbage.mkdir()
    (garbage / "params.json").write_text("{not json")
    (garbage / "consolidated.pth").write_bytes(raw)
    ent_cfg = config.tiny_experiment("entropy").model
    helpers.make_workdir(d / "ent", "entropy", ent_cfg)
    blt_wd = d / "bltcfg"
    blt_wd.mkdir()
    (blt_wd / "config.json").write_text(config.tiny_experiment("blt").to_json())
    return d


def T(*extra, cfg=ENT):
    return lambda d: ["train", "--config", cfg.format(d=d), "--workdir", str(d / "new_run"),
                      "--config.mesh.shape=(1,1,1)", *[x.format(d=d) for x in extra]]


def G(*extra):
    return lambda d: ["generate", "--workdir", str(d / "ent"), *[x.format(d=d) for x in extra]]


CASES = {  # name -> (argv(d), words the one line must contain)
    "config missing": (lambda d: ["train", "--config", str(d / "nope.py"), "--workdir",
                                  str(d / "new_run")], "no such experiment file"),
    "config not python": (T(cfg="{d}/notpy.py"), "failed to import"),
    "config no get_config": (T(cfg="{d}/noget.py"), "no get_config"),
    "config syntax error": (T(cfg="{d}/syntax.py"), "SyntaxError"),
    "config wrong type": (T(cfg="{d}/wrongtype.py"), "must return an ml_collections"),
    "override unknown key": (T("--config.data.nope=1"), "no field 'data.nope'"),
    "override wrong type": (T("--config.data.seq_len=abc"), "wrong type"),
    "override missing value": (T("--config.data.seq_len"), "needs '=value'"),
    "batch zero": (T("--config.data.batch_size=0"), "data.batch_size"),
    "batch negative": (T("--config.data.batch_size=-4"), "data.batch_size"),
    "seq_len zero": (T("--config.data.seq_len=0"), "data.seq_len"),
    "width zero": (T("--config.model.dim=0"), "dim"),
    "layers zero": (T("--config.model.n_layers=0"), "n_layers"),
    "window zero": (T("--config.model.window=0"), "window"),
    "heads not dividing": (T("--config.model.n_heads=3"), "not divisible"),
    "mesh not dividing": (T("--config.mesh.shape=(3,1,1)"), "mesh"),
    "vocab of a byte model": (T("--config.model.vocab_size=300"), "260"),
    "kind unknown": (T("--config.kind=gpt"), "kind"),
    "p_max negative": (T("--config.data.p_max=-1"), "data.p_max"),
    "warmup negative": (T("--config.optim.warmup_steps=-5"), "optim.warmup_steps"),
    "grad_accum zero": (T("--config.train.grad_accum=0"), "train.grad_accum"),
    "grad_accum not dividing": (T("--config.train.grad_accum=3"), "must divide"),
    "eval_every zero": (T("--config.train.eval_every=0"), "train.eval_every"),
    "log_every zero": (T("--config.train.log_every=0"), "train.log_every"),
    "lr zero": (T("--config.optim.lr=0.0"), "optim.lr"),
    "nonfinite unknown": (T("--config.train.nonfinite=ignore"), "train.nonfinite"),
    "data path missing": (T("--config.data.source=text", "--config.data.path={d}/no.txt"),
                          "matches no file"),
    "data empty file": (T("--config.data.source=text", "--config.data.path={d}/empty.txt"),
                        "is empty"),
    "data binary file": (T("--config.data.source=text", "--config.data.path={d}/binary.bin"),
                         "looks binary"),
    "data glob no match": (T("--config.data.source=text", "--config.data.path={d}/*.none"),
                           "matches no file"),
    "data smaller than a row": (T("--config.data.source=text",
                                  "--config.data.path={d}/short.txt"), "less than one row"),
    "jsonl without field": (T("--config.data.source=jsonl",
                              "--config.data.path={d}/nofield.jsonl"), "'text' string field"),
    "data unknown source": (T("--config.data.source=csv"), "unknown source"),
    "patching unknown mode": (T("--config.model.patching.mode=nope", cfg=BLT),
                              "unknown patching mode"),
    "entropy model missing": (T("--config.entropy.workdir={d}/none", cfg=BLT),
                              "no trained entropy model"),
    "entropy model wrong kind": (T("--config.entropy.workdir={d}/bltcfg", cfg=BLT),
                                 "not an entropy model"),
    "workdir of another config": (lambda d: ["train", "--config", ENT, "--workdir",
                                             str(d / "ent"), "--config.mesh.shape=(1,1,1)",
                                             "--config.model.n_layers=3"], "different model"),
    "init_from not a workdir": (T("--config.train.init_from={d}/emptydir"),
                                "not a blt-jax workdir"),
    "init_from another model": (T("--config.train.init_from={d}/ent", "--config.model.dim=32"),
                                "different model"),
    "init_from missing step": (T("--config.train.init_from={d}/ent:9"), "no step 9"),
    "import empty folder": (lambda d: ["import-reference", "--blt", str(d / "emptydir"),
                                       "--out", str(d / "out")], "neither params.json"),
    "import truncated pth": (lambda d: ["import-reference", "--blt", str(d / "trunc"),
                                        "--out", str(d / "out")], "consolidated.pth"),
    "import garbage params.json": (lambda d: ["import-reference", "--blt", str(d / "garbage"),
                                              "--out", str(d / "out")], "params.json"),
    "generate max bytes zero": (G("--prompt", "a", "--max-new-bytes", "0"), "max_new_bytes"),
    "generate temperature negative": (G("--prompt", "a", "--temperature", "-1"), "temperature"),
    "generate top-p zero": (G("--prompt", "a", "--top-p", "0"), "top_p"),
    "generate top-p above one": (G("--prompt", "a", "--top-p", "1.5"), "top_p"),
    "generate top-k zero": (G("--prompt", "a", "--top-k", "0"), "top_k"),
    "generate 1 MB prompt": (G("--prompt-file", "{d}/big_prompt.txt"), "shorten the prompt"),
    "generate invalid UTF-8": (G("--prompt", "ab\udcff"), "not valid UTF-8"),
    "generate prompt file missing": (G("--prompt-file", "{d}/none.txt"), "cannot read"),
    "generate with an entropy model": (G("--prompt", "a"), "does not generate"),
    "generate workdir missing": (lambda d: ["generate", "--workdir", str(d / "none"),
                                            "--prompt", "a"], "not a blt-jax workdir"),
    "eval workdir missing": (lambda d: ["eval", "--workdir", str(d / "none")],
                             "not a blt-jax workdir"),
    "eval stride zero": (lambda d: ["eval", "--workdir", str(d / "ent"), "--stride", "0"],
                         "must be >= 1"),
    "ckpt pin missing step": (lambda d: ["ckpt", "pin", str(d / "ent"), "7"], "no checkpoint"),
    "ckpt list no checkpoints": (lambda d: ["ckpt", "list", str(d / "emptydir")],
                                 "no checkpoints"),
    "compile-check unknown topology": (lambda d: ["compile-check", "--config", ENT,
                                                  "--topology", "v9z-7"], "topology"),
    "patch unknown mode": (lambda d: ["patch", "--mode", "nope", "--text", "x"],
                           "unknown patching mode"),
    "no subcommand": (lambda d: [], "COMMAND"),
    "unknown subcommand": (lambda d: ["frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_mistake_is_one_line_exit_2_and_writes_nothing(name, files, capsys, monkeypatch):
    monkeypatch.delenv("BLT_JAX_DEBUG", raising=False)
    argv, words = CASES[name]
    before = tree_hash(files)
    try:
        rc = cli.main(argv(files))
    except SystemExit as e:  # argparse's own errors (exit 2)
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (name, rc, err)
    last = err.splitlines()[-1]
    assert words in last, (name, err)
    assert "Traceback" not in err and (len(err.splitlines()) == 1 or err.startswith("usage:"))
    assert tree_hash(files) == before, f"{name}: files changed"


@pytest.fixture(scope="module")
def model(files):
    return api.load(files / "ent")


@pytest.mark.parametrize("ids,words", [
    (np.zeros((1, 2, 3), np.int32), "shape"),
    (np.array([[1.5, 2.0]]), "integer ids"),
    (np.array([[-1, 3]]), "[0, 260)"),
    (np.array([[3, 260]]), "[0, 260)"),
    (np.zeros((1, 0), np.int32), "empty"),
])
def test_api_logits_rejects_bad_ids(model, ids, words):
    with pytest.raises(UserError, match=None) as e:
        model.logits(ids)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_api_generate_rejects_bad_options(model):
    for kw in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=0), dict(max_new_bytes=0)):
        with pytest.raises(UserError):
            model.generate("a", **kw)


def test_subprocess_contract(files):
    """A real process: one line and exit 2 for a mistake; BLT_JAX_DEBUG=1 shows the traceback."""
    r = helpers.run_cli("ckpt", "pin", str(files / "ent"), "7")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    import os
    import subprocess

    r = subprocess.run([sys.executable, "-m", "blt_jax", "ckpt", "pin", str(files / "ent"), "7"],
                       capture_output=True, text=True, env=os.environ | {"BLT_JAX_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "UserError" in r.stderr
