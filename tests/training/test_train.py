"""Training integration: loss falls, metrics/TensorBoard files, exact resume after SIGKILL,
pins vs cleanup, restore onto other meshes, one-line errors for bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers
from blt_jax.training import checkpoint, metrics, train
from blt_jax.tools import cli
from blt_jax import config
from blt_jax.evaluation import evaluate

ROOT = pathlib.Path(__file__).parents[2]


def small(kind, **train_kw):
    c = config.tiny_experiment(kind)
    c.data.update(seq_len=64, batch_size=8, eval_batch_size=8)
    c.train.update(progress=False, log_every=1, eval_batches=2, **train_kw)
    c.mesh.shape = (1, 1, 1)  # one device: fast compiles (sharded runs are tested separately)
    return c


def cli_train(workdir, *overrides, kind="entropy"):
    return [sys.executable, "-m", "blt_jax", "train", "--config",
            str(ROOT / "experiments" / f"{kind}_tiny.py"), "--workdir", str(workdir),
            "--config.data.seq_len=64", "--config.data.batch_size=8",
            "--config.train.progress=false", "--config.train.log_every=1",
            "--config.mesh.shape=(1,1,1)", *overrides]


def losses(workdir):
    last = {}
    for row in metrics.read(workdir):
        if "loss" in row:
            last[row["step"]] = row["loss"]  # a resumed run rewrites the steps it redoes
    return last


def test_loss_falls_and_metrics_are_written(tmp_path):
    cfg = small("entropy", steps=40, eval_every=20)
    cfg.checkpoint.every = 20
    summary = train.run(cfg, tmp_path)
    rows = [r for r in metrics.read(tmp_path) if "loss" in r]
    first = np.mean([r["loss"] for r in rows[:5]])
    last = np.mean([r["loss"] for r in rows[-5:]])
    assert first - last > 1.0, (first, last)
    for key in ("bpb", "bytes_per_s", "lr", "grad_norm", "mfu", "train_flops"):
        assert key in rows[-1]
    assert summary["eval_bpb"] < 8.1 and "eval_bpb" in metrics.read(tmp_path)[-1]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and b"grad_norm" in events[0].read_bytes()
    assert checkpoint.steps(tmp_path) == [20, 40]
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "entropy"


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    common = ["--config.train.steps=60", "--config.checkpoint.every=10",
              "--config.train.eval_every=1000"]
    straight = tmp_path / "straight"
    subprocess.run(cli_train(straight, *common), check=True, capture_output=True)
    want = losses(straight)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli_train(killed, *common), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "20" / "commit_success.txt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    restored_from = max(checkpoint.steps(killed))
    assert 20 <= restored_from < 60  # really killed mid-run
    subprocess.run(cli_train(killed, *common), check=True, capture_output=True)
    got = losses(killed)
    assert sorted(got) == list(range(1, 61))
    for step in range(restored_from + 1, 61):
        assert abs(got[step] - want[step]) <= 1e-6, (step, got[step], want[step])


def test_pins_survive_cleanup_and_restarts(tmp_path):
    cfg = small("entropy", steps=12, eval_every=1000)
    cfg.checkpoint.update(every=2, keep_latest=2, keep_best=0, pinned_steps=(4,))
    train.run(cfg, tmp_path)
    assert checkpoint.steps(tmp_path) == [4, 10, 12]
    assert cli.main(["ckpt", "pin", str(tmp_path), "10"]) == 0
    assert cli.main(["ckpt", "pin", str(tmp_path), "7"]) == 2  # no such checkpoint
    cfg = small("entropy", steps=20, eval_every=1000)
    cfg.checkpoint.update(every=2, keep_latest=2, keep_best=0)
    train.run(cfg, tmp_path)  # resumes from 12
    assert checkpoint.steps(tmp_path) == [4, 10, 18, 20]
    assert cli.main(["ckpt", "unpin", str(tmp_path), "4"]) == 0
    assert checkpoint.read_pins(tmp_path) == {10}


def test_restore_on_other_meshes_gives_the_same_eval(tmp_path):
    cfg = small("entropy", steps=4, eval_every=1000)
    cfg.mesh.shape = (1, 8, 1)
    train.run(cfg, tmp_path)
    bpb = [evaluate.evaluate_workdir(tmp_path, mesh_shape=shape, max_batches=2)["bpb"]
           for shape in [(1, 8, 1), (2, 2, 2), (8, 1, 1)]]
    assert max(bpb) - min(bpb) < 1e-5, bpb


def test_blt_two_stage_recipe_and_eval_command(tmp_path, capsys):
    ent = small("entropy", steps=6, eval_every=1000)
    train.run(ent, tmp_path / "ent")
    blt = small("blt", steps=3, eval_every=3)
    blt.entropy.update(workdir=str(tmp_path / "ent"), target_bytes_per_patch=3.0,
                       calibration_docs=16)
    summary = train.run(blt, tmp_path / "blt")
    cal = json.loads((tmp_path / "blt" / "threshold.json").read_text())
    assert abs(cal["measured_bytes_per_patch"] - 3.0) < 0.3
    stored = json.loads((tmp_path / "blt" / "config.json").read_text())
    assert stored["model"]["patching"]["threshold"] == pytest.approx(cal["threshold"])
    assert stored["entropy"]["workdir"] == "entropy_model"  # self-contained workdir
    sized = json.loads((tmp_path / "blt" / "patch_buffer.json").read_text())
    assert stored["data"]["p_max"] == sized["p_max"] == summary["p_max"] > 2  # measured, recorded
    assert sized["overflow_rows"] <= 0.01 and sized["rows"] >= 16
    assert 0 <= summary["patch_padding"] < 1
    blt.train.steps = 4  # a resumed run keeps the measured buffer (no second measurement)
    assert train.run(blt, tmp_path / "blt")["p_max"] == sized["p_max"]
    assert cli.main(["eval", "--workdir", str(tmp_path / "blt"), "--max-batches", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "blt" and out["bpb"] > 0 and out["bytes"] > 0


def test_space_patched_blt_needs_no_entropy_model(tmp_path):
    import blt_jax

    blt = small("blt", steps=2, eval_every=1000)
    blt.model.patching.mode = "space"
    summary = train.run(blt, tmp_path / "blt")
    assert not (tmp_path / "blt" / train.ENTROPY_DIR).exists()
    assert summary["steps"] == 2 and summary["bytes_per_patch"] > 1
    model = blt_jax.load(tmp_path / "blt")
    assert model.entropy_model is None
    assert len(model.generate("Hello", max_new_bytes=4, temperature=0.0)) <= 4


def test_packing_by_patches_fills_the_latent_and_refuses_what_it_cannot_pack(tmp_path):
    blt = small("blt", steps=3, eval_every=3)
    blt.model.patching.mode = "space"
    blt.data.update(packing="patches", p_max=8)  # ~45 of the 64 byte slots at ~5.6 bytes/patch
    summary = train.run(blt, tmp_path / "blt")
    blt.data.update(packing="bytes", p_max=0)  # the same BLT on byte rows, buffer measured
    by_bytes = train.run(blt, tmp_path / "blt_bytes")
    assert summary["p_max"] == 8 and summary["overflow_rate"] == 0
    # empty slots: rows the byte cap ended early, and a last patch holding only the next id
    assert summary["patch_padding"] < 0.1 < by_bytes["patch_padding"]
    for fields, needle in ((dict(p_max=0), "data.p_max"), (dict(mode="global"), "preprocessed")):
        bad = small("blt", steps=1)
        bad.data.update(packing="patches", p_max=fields.get("p_max", 8))
        bad.model.patching.mode = fields.get("mode", "space")
        with pytest.raises(train.UserError, match=needle):
            train.run(bad, tmp_path / "bad")
    ent = small("entropy", steps=1)
    ent.data.packing = "patches"
    with pytest.raises(train.UserError, match="packs rows by bytes"):
        train.run(ent, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def run_cli(*args, cwd=None):
    r = helpers.run_cli(*args, cwd=cwd)
    return r.returncode, r.stderr.strip()


def test_bad_input_gives_one_line_errors(tmp_path):
    exp = str(ROOT / "experiments" / "entropy_tiny.py")
    cases = [
        (["--config.data.source=text", f"--config.data.path={tmp_path}/none/*.txt"], "matches no file"),
        (["--config.train.stepz=3"], "has no field 'train.stepz'"),
        (["--config.train.steps=many"], "wrong type"),
    ]
    for overrides, msg in cases:
        code, err = run_cli("train", "--config", exp, "--workdir", str(tmp_path / "w"), *overrides)
        assert code == 2 and msg in err and "\n" not in err and "Traceback" not in err, err
    nofn = tmp_path / "nofn.py"
    nofn.write_text("X = 1\n")
    code, err = run_cli("train", "--config", str(nofn), "--workdir", str(tmp_path / "w"))
    assert code == 2 and "defines no get_config" in err
    code, err = run_cli("train", "--config", str(ROOT / "experiments" / "blt_tiny.py"),
                        "--workdir", str(tmp_path / "b"), "--config.entropy.workdir=/nope")
    assert code == 2 and "no trained entropy model" in err
    # a workdir holding another model's checkpoint is refused, and left intact
    cfg = small("entropy", steps=2, eval_every=1000)
    train.run(cfg, tmp_path / "used")
    before = sorted(p.name for p in (tmp_path / "used" / "checkpoints").iterdir())
    code, err = run_cli("train", "--config", exp, "--workdir", str(tmp_path / "used"),
                        "--config.model.dim=32")
    assert code == 2 and "different model" in err
    assert sorted(p.name for p in (tmp_path / "used" / "checkpoints").iterdir()) == before


def test_init_from_an_imported_workdir_starts_from_its_parameters(tmp_path):
    from blt_jax.errors import UserError
    from blt_jax.pipeline import data
    from blt_jax.scale import sharding
    from blt_jax.training.scorer import Scorer

    cfg = small("entropy", steps=1, eval_every=1000)
    src = helpers.make_workdir(tmp_path / "imported", "entropy", cfg.model, seed=5)  # step 0 only
    with pytest.raises(UserError, match="parameters only.*init_from"):
        train.run(cfg, src)  # an import is not a run to resume: the error says what to do
    cfg.train.init_from = f"{src}:0"
    train.run(cfg, tmp_path / "ft")
    got = losses(tmp_path / "ft")[1]
    batch = next(iter(data.train_batches(data.documents(cfg.data, "train"), seq_len=64,
                                         batch_size=8, seed=cfg.seed, loader_shards=0,
                                         process=(0, 1), bpe_tokenizer=None, num_workers=0)))
    import blt_jax
    want = Scorer(cfg, sharding.make_mesh((1, 1, 1))).evaluate(
        blt_jax.load(src).params, [batch], 8)["eval_loss"]
    assert abs(got - want) <= 1e-5 * want, (got, want)
    cfg.train.init_from = ""
    train.run(cfg, tmp_path / "fresh")
    assert abs(losses(tmp_path / "fresh")[1] - got) > 1e-3  # the test can tell the two apart


def test_run_json_profile_trace_and_changed_settings_on_resume(tmp_path, capsys):
    cfg = small("entropy", steps=3, eval_every=1000, profile_steps=(2, 3))
    train.run(cfg, tmp_path)
    assert list((tmp_path / "tb").rglob("*.xplane.pb")), "no profiler trace under tb/"
    cfg = small("entropy", steps=5, eval_every=1000)
    capsys.readouterr()
    train.run(cfg, tmp_path)  # resume with other run settings: reported, and recorded
    assert "train.steps: 3 -> 5" in capsys.readouterr().err
    first, second = json.loads((tmp_path / "run.json").read_text())["starts"]
    assert first["start_step"] == 0 and second["start_step"] == 3
    assert second["changed_on_resume"]["train.steps"] == [3, 5]
    assert first["changed_on_resume"] == {}
    for key in ("git", "packages", "device_kind", "device_count", "mesh", "command"):
        assert key in first
    assert first["packages"]["jax"] and first["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}


def test_peak_flops_table():
    assert metrics.table_peak_flops("TPU v5 lite") == 197e12
    assert metrics.table_peak_flops("TPU v5") == 459e12
    assert metrics.table_peak_flops("TPU v6 lite") == 918e12
    assert metrics.table_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert metrics.table_peak_flops("cpu") is None
    assert metrics.peak_flops(123.0, "float32") == 123.0
