"""Reliability: the NaN guard, corrupt or partial checkpoints, SIGTERM preemption (real Orbax
checkpoints, real files damaged on disk, real signals)."""

import hashlib
import pathlib
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import blt_jax
from blt_jax.errors import TrainingDiverged, UserError
from blt_jax.evaluation import evaluate
from blt_jax.tools import cli
from blt_jax.training import checkpoint, metrics, train
from test_train import cli_train, losses, small


def diverging(**kw):
    cfg = small("entropy", eval_every=1000, **kw)
    cfg.optim.update(lr=1e9, warmup_steps=0, clip=0.0, schedule="constant")
    cfg.checkpoint.update(every=1, keep_latest=100, keep_best=0)
    return cfg


def all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def test_nan_stops_the_run_and_the_bad_step_is_never_saved(tmp_path):
    with pytest.raises(TrainingDiverged) as e:
        train.run(diverging(steps=20), tmp_path)
    msg = str(e.value)
    bad = int(msg.split(" at step ")[1].split()[0])
    saved = checkpoint.steps(tmp_path)
    assert "\n" not in msg and bad <= 20 and all(s < bad for s in saved), (msg, saved)
    if saved:  # every saved step holds finite parameters: a rerun resumes from good state
        model = blt_jax.load(tmp_path)
        assert model.step == saved[-1] and all_finite(model.params)
        assert f"last good checkpoint: {saved[-1]}" in msg


def test_nan_skip_mode_counts_and_then_stops(tmp_path):
    cfg = diverging(steps=20)
    cfg.train.update(nonfinite="skip", max_skipped=2)
    with pytest.raises(TrainingDiverged, match=r"\(3 non-finite step\(s\)\)"):
        train.run(cfg, tmp_path)
    for s in checkpoint.steps(tmp_path):  # skipped updates never reach a checkpoint
        assert all_finite(blt_jax.load(tmp_path, s).params)


def _tree_hash(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()


def _truncate_largest_array(step_dir: pathlib.Path) -> pathlib.Path:
    f = max((p for p in (step_dir / "params").rglob("d/*") if p.is_file()),
            key=lambda p: p.stat().st_size)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f


def test_corrupt_and_partial_checkpoints_fall_back_to_the_newest_intact_step(tmp_path, capsys):
    cfg = small("entropy", steps=6, eval_every=1000)
    cfg.checkpoint.update(every=2, keep_latest=10, keep_best=0)
    train.run(cfg, tmp_path)
    ck = tmp_path / "checkpoints"
    assert checkpoint.steps(tmp_path) == [2, 4, 6]
    _truncate_largest_array(ck / "6")
    (ck / "4" / "_CHECKPOINT_METADATA").unlink()  # a save cut short before its metadata
    unfinished = ck / "8.orbax-checkpoint-tmp-1700000000"
    unfinished.mkdir()
    capsys.readouterr()

    before = _tree_hash(tmp_path)
    model = blt_jax.load(tmp_path)  # read-only consumers skip, warn, and touch nothing
    err = capsys.readouterr().err
    assert model.step == 2 and "step 6" in err and "step 4" in err, err
    assert evaluate.evaluate_workdir(tmp_path, max_batches=1)["bpb"] > 0
    assert cli.main(["ckpt", "list", "--verify", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert ["BAD" in r for r in rows] == [False, True, True], rows
    assert _tree_hash(tmp_path) == before
    with pytest.raises(UserError, match="step 6 .*restore failed"):
        blt_jax.load(tmp_path, step=6)  # an explicit step is never swapped for another

    cfg.train.steps = 8  # resume: bad steps move aside (kept), training goes on from step 2
    train.run(cfg, tmp_path)
    assert checkpoint.steps(tmp_path) == [2, 4, 6, 8]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()) \
        == ["4", "6"]
    assert unfinished.is_dir()  # nothing is deleted that the user did not ask to delete
    assert blt_jax.load(tmp_path).step == 8


def test_a_workdir_with_no_intact_step_is_an_error_not_a_fresh_start(tmp_path):
    cfg = small("entropy", steps=2, eval_every=1000)
    cfg.checkpoint.update(every=2, keep_best=0)
    train.run(cfg, tmp_path)
    (tmp_path / "checkpoints" / "2" / "params" / "_METADATA").unlink()
    before = _tree_hash(tmp_path)
    cfg.train.steps = 4
    with pytest.raises(UserError, match="no intact checkpoint.*step 2"):
        train.run(cfg, tmp_path)
    with pytest.raises(UserError, match="no intact checkpoint"):
        blt_jax.load(tmp_path)
    assert _tree_hash(tmp_path) == before


def test_sigterm_saves_exits_0_and_the_rerun_resumes(tmp_path):
    common = ["--config.train.steps=400", "--config.checkpoint.every=1000",
              "--config.train.eval_every=1000"]
    proc = subprocess.Popen(cli_train(tmp_path, *common), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(metrics.read(tmp_path)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    (step,) = checkpoint.steps(tmp_path)
    assert 3 <= step < 400 and f"stopped by SIGTERM after step {step}" in err
    r = subprocess.run(cli_train(tmp_path, *common[:0], "--config.train.steps=" + str(step + 2),
                                 *common[1:]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(losses(tmp_path))[-2:] == [step + 1, step + 2]


def _tmp_dirs(ck: pathlib.Path) -> set:
    """(name, mtime) of Orbax's temporary step directories (they vanish when renamed)."""
    out = set()
    for p in (ck.iterdir() if ck.is_dir() else ()):
        try:
            if "tmp" in p.name:
                out.add((p.name, p.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return out


def _params(workdir):
    return [np.asarray(x) for x in jax.tree.leaves(blt_jax.load(workdir).params)]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_the_uninterrupted_run(tmp_path):
    """Five kills: inside steps, while an async checkpoint is being written, around evals."""
    import random

    common = ["--config.train.steps=40", "--config.checkpoint.every=4",
              "--config.train.eval_every=6", "--config.train.eval_batches=2",
              "--config.checkpoint.keep_latest=2"]
    straight = tmp_path / "straight"
    subprocess.run(cli_train(straight, *common), check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    ck = killed / "checkpoints"
    rng = random.Random(0)
    kinds = ["step", "async_save", "eval", "step", "async_save", "eval"]
    figures = []
    for kind in kinds:
        proc = subprocess.Popen(cli_train(killed, *common), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        start = len([r for r in metrics.read(killed) if "loss" in r])
        old_tmp = _tmp_dirs(ck)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            rows = metrics.read(killed)
            moved = len([r for r in rows if "loss" in r]) > start + 1
            if kind == "async_save" and moved and _tmp_dirs(ck) - old_tmp:
                break  # this process is writing a (temporary) step directory right now
            if kind == "eval" and moved and rows and rows[-1]["step"] % 6 == 5:
                time.sleep(rng.uniform(0.0, 0.3))  # the step before an eval: kill around it
                break
            if kind == "step" and moved:
                time.sleep(rng.uniform(0.0, 0.5))
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            break  # the run finished before this kill point
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tmp = [p.name for p in ck.iterdir() if "tmp" in p.name] if ck.is_dir() else []
        figures.append((kind, ([r["step"] for r in metrics.read(killed)] or [0])[-1],
                        checkpoint.steps(killed), tmp))
    print("kills (kind, last logged step, steps on disk, tmp dirs):", *figures, sep="\n  ")
    assert len(figures) >= 5 and any(f[3] for f in figures), figures
    r = subprocess.run(cli_train(killed, *common), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert checkpoint.steps(killed)[-1] == 40
    for a, b in zip(_params(straight), _params(killed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
