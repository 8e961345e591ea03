"""Two real JAX processes on loopback (gloo, 4 fake CPU devices each) train a tiny BLT with
checkpoints; losses and saved parameters equal one process on 8 fake devices. A crashed peer
makes the survivor fail within 60 s instead of hanging."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest

import blt_jax
from blt_jax.training import metrics

ROOT = pathlib.Path(__file__).parents[2]
COMMON = ["--config.data.seq_len=64", "--config.data.batch_size=8", "--config.train.progress=false",
          "--config.train.log_every=1", "--config.train.eval_every=1000",
          "--config.data.loader_shards=2", "--config.mesh.shape=(1,-1,1)"]


def env(devices):
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    return e


def train_cmd(kind, workdir, *extra):
    return [sys.executable, "-m", "blt_jax", "train", "--config",
            str(ROOT / "experiments" / f"{kind}_tiny.py"), "--workdir", str(workdir), *COMMON,
            *extra]


def two_processes(kind, workdir, *extra, heartbeat=60):
    port = portpicker.pick_unused_port()
    return [subprocess.Popen(train_cmd(kind, workdir, *extra, f"--coordinator=127.0.0.1:{port}",
                                       "--num-processes=2", f"--process-id={i}",
                                       f"--heartbeat-timeout={heartbeat}"),
                             env=env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(2)]


@pytest.fixture(scope="module")
def entropy_workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("mp") / "ent"
    subprocess.run(train_cmd("entropy", work, "--config.train.steps=3",
                             "--config.mesh.shape=(1,1,1)"),
                   env=env(8), check=True, capture_output=True, timeout=300)
    return work


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, entropy_workdir):
    blt = ["--config.train.steps=4", "--config.checkpoint.every=2",
           f"--config.entropy.workdir={entropy_workdir}", "--config.entropy.calibration_docs=8"]
    single = tmp_path / "single"
    subprocess.run(train_cmd("blt", single, *blt), env=env(8), check=True, capture_output=True,
                   timeout=600)
    multi = tmp_path / "multi"
    procs = two_processes("blt", multi, *blt)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
    # only process 0 logs
    assert (multi / "metrics.jsonl").exists() and (multi / "tb").exists()
    want = [r["loss"] for r in metrics.read(single) if "loss" in r]
    got = [r["loss"] for r in metrics.read(multi) if "loss" in r]
    assert len(got) == len(want) == 4
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # every process wrote its data-iterator state; parameters equal the single-process run
    data_dir = multi / "checkpoints" / "4" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= {p.name for p in data_dir.iterdir()}
    a, b = blt_jax.load(single), blt_jax.load(multi)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_crashed_process_does_not_hang_the_other(tmp_path):
    work = tmp_path / "crash"
    procs = two_processes("entropy", work, "--config.train.steps=100000",
                          "--config.checkpoint.every=100000", heartbeat=10)
    deadline = time.time() + 240
    while time.time() < deadline and not (work / "metrics.jsonl").exists():
        time.sleep(0.2)
    assert (work / "metrics.jsonl").exists(), procs[0].stderr.read().decode()[-2000:]
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = procs[0].communicate(timeout=60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process was still running 60 s after its peer died")
    assert procs[0].returncode != 0
    assert time.time() - t0 < 60
    print(err.decode()[-500:])


@pytest.mark.slow
def test_sigterm_on_every_process_saves_the_same_step_and_resumes(tmp_path):
    """Cloud TPU preemption: SIGTERM reaches every worker; they stop at one agreed step."""
    work = tmp_path / "pre"
    args = ["--config.train.steps=100000", "--config.checkpoint.every=100000"]
    procs = two_processes("entropy", work, *args)
    deadline = time.time() + 240
    while time.time() < deadline and len(metrics.read(work)) < 3:
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
    from blt_jax.training import checkpoint

    (step,) = checkpoint.steps(work)
    assert "stopped by SIGTERM" in outs[0][1].decode()
    procs = two_processes("entropy", work, f"--config.train.steps={step + 2}", args[1])
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    assert max(r["step"] for r in metrics.read(work)) == step + 2


@pytest.mark.slow
def test_a_hung_process_makes_the_other_fail_within_60_s(tmp_path):
    work = tmp_path / "hang"
    procs = two_processes("entropy", work, "--config.train.steps=100000",
                          "--config.checkpoint.every=100000", heartbeat=10)
    deadline = time.time() + 240
    while time.time() < deadline and not (work / "metrics.jsonl").exists():
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGSTOP)
    t0 = time.time()
    try:
        _, err = procs[0].communicate(timeout=60)
        assert procs[0].returncode != 0 and time.time() - t0 < 60
        assert "stopped sending heartbeats" in err.decode()  # names the peer that went quiet
    finally:
        for p in procs:  # no orphans: the stopped one is killed (SIGKILL works on it)
            p.kill()
            p.wait()
    assert all(p.poll() is not None for p in procs)
