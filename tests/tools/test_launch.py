"""Launch: dry runs against checked-in golden command lines, the queued-resource wait loop against
a fake gcloud, the remote start script run in a local bash, and the restart supervisor."""

import importlib.util
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).parents[2]
GOLDENS = pathlib.Path(__file__).parents[1] / "goldens" / "launch"
TPU_VM = ROOT / "launch" / "tpu_vm.py"
SUPERVISE = ROOT / "launch" / "supervise.py"
BASE = ["--name", "blt1b", "--zone", "us-east5-a", "--project", "my-proj", "--dry-run"]
START = ["start", "--config", "experiments/blt_1b.py", "--workdir", "gs://my-bucket/runs/blt_1b"]
EXTRA = ["--", "--config.entropy.workdir=gs://my-bucket/runs/ent"]
CASES = {
    "create": ["create", "--accelerator", "v5p-64", "--spot"],
    "create_queued": ["create", "--accelerator", "v5litepod-16", "--queued"],
    "create_multislice": ["create", "--accelerator", "v5p-64", "--spot", "--num-slices", "2",
                          "--wait-timeout", "3600", "--poll-every", "60"],
    "setup": ["setup"],
    "setup_gcsfuse": ["setup", "--bucket", "my-bucket"],
    "sync": ["sync"],
    "sync_multislice": ["sync", "--num-slices", "2"],
    "start": ["start", "--config", "experiments/blt_1b.py", "--workdir",
              "/gcs/my-bucket/runs/blt_1b", "--", "--config.entropy.workdir=/gcs/my-bucket/runs/ent"],
    "start_restart": [*START, "--restart-on-preemption", "--max-restarts", "3", "--backoff", "30",
                      *EXTRA],
    "start_multislice": [*START, "--num-slices", "2", "--restart-on-preemption", *EXTRA],
    "tail": ["tail", "--worker", "all"],
    "tail_multislice": ["tail", "--num-slices", "2", "--node", "1", "--worker", "0"],
    "stop": ["stop"],
    "delete": ["delete"],
    "delete_queued": ["delete", "--queued"],
    "delete_multislice": ["delete", "--num-slices", "2"],
}


def launch(args, env=None, dry=True):
    base = BASE if dry else [a for a in BASE if a != "--dry-run"]
    return subprocess.run([sys.executable, str(TPU_VM), *args[:1], *base, *args[1:]],
                          capture_output=True, text=True, env=env)


def dry_run(args):
    r = launch(args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def module():
    spec = importlib.util.spec_from_file_location("tpu_vm", TPU_VM)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tpu_vm"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_matches_golden(case):
    out = dry_run(CASES[case])
    golden = GOLDENS / f"{case}.txt"
    if not golden.exists():
        golden.write_text(out)
        pytest.fail(f"wrote a new golden {golden.name}: review it and commit it")
    assert out == golden.read_text()
    assert all(line.startswith(("gcloud ", "git ", "# wait: ")) for line in out.splitlines())


def test_every_golden_has_a_case():
    assert {p.stem for p in GOLDENS.glob("*.txt")} == set(CASES)


def test_multislice_sets_dcn_shape_that_the_config_accepts():
    from blt_jax import overrides

    out = dry_run(CASES["start_multislice"])
    assert "--node=all --worker=all" in out and "node-count" not in out
    override = "--config.mesh.dcn_shape=(2,1,1)"
    assert override in out
    cfg = overrides.apply_overrides(
        overrides.load_experiment(str(ROOT / "experiments/blt_1b.py")), [override])
    assert tuple(cfg.mesh.dcn_shape) == (2, 1, 1)
    # a dcn_shape the user gives wins: the launcher adds none of its own
    mine = dry_run([*START, "--num-slices", "2", "--", "--config.mesh.dcn_shape=(1,2,1)"])
    assert "(2,1,1)" not in mine and "(1,2,1)" in mine


@pytest.mark.parametrize("args, message", [
    (["start"], "start: --config and --workdir are required"),
    (["create", "--num-slices", "0"], "--num-slices must be >= 1, got 0"),
])
def test_bad_flags_are_one_line_exit_2(args, message):
    r = launch(args)
    assert r.returncode == 2 and r.stderr.strip() == message, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args", [
    [*START, "--restart-on-preemption", "--max-restarts", "-1"],
    ["create", "--queued", "--wait-timeout", "-5"],
    ["start", "--backoff", "soon"],
])
def test_bad_values_are_argparse_errors_exit_2(args):
    r = launch(args)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("tpu_vm.py: error: ")


def fake_gcloud(tmp_path, states):
    """A gcloud on PATH that logs its arguments and answers `describe` with the next state."""
    (tmp_path / "states").write_text(" ".join(states))
    exe = tmp_path / "bin" / "gcloud"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n" + """import pathlib, sys
d = pathlib.Path(__file__).parents[1]
with open(d / "calls.log", "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
    states = (d / "states").read_text().split()
    i = int((d / "i").read_text()) if (d / "i").exists() else 0
    (d / "i").write_text(str(i + 1))
    print(states[min(i, len(states) - 1)])
""")
    exe.chmod(0o755)
    return {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}


def calls(tmp_path):
    return (tmp_path / "calls.log").read_text().splitlines()


def test_queued_create_waits_until_active(tmp_path):
    env = fake_gcloud(tmp_path, ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE", "FAILED"])
    r = launch(["create", "--queued", "--poll-every", "0"], env=env, dry=False)
    assert r.returncode == 0, r.stderr
    log = calls(tmp_path)
    assert log[0].startswith("compute tpus queued-resources create blt1b-qr --node-id=blt1b")
    assert [c for c in log[1:] if " describe blt1b-qr " in c] == log[1:] and len(log) == 4
    assert "queued resource is ACTIVE" in r.stderr


@pytest.mark.parametrize("state", ["FAILED", "SUSPENDED"])
def test_queued_create_stops_on_a_terminal_state(tmp_path, state):
    env = fake_gcloud(tmp_path, ["PROVISIONING", state, "ACTIVE"])
    r = launch(["create", "--queued", "--poll-every", "0"], env=env, dry=False)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"launch: queued resource is {state}; see `gcloud compute tpus "
                           "queued-resources describe blt1b-qr --zone=us-east5-a")
    assert len(calls(tmp_path)) == 3  # create, then two polls: it stopped at the terminal one


def test_queued_create_times_out(tmp_path):
    env = fake_gcloud(tmp_path, ["WAITING_FOR_RESOURCES"])
    t0 = time.monotonic()
    r = launch(["create", "--queued", "--poll-every", "0.1", "--wait-timeout", "0.5"], env=env,
               dry=False)
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert r.stderr.strip().splitlines()[-1].startswith(
        "launch: queued resource still WAITING_FOR_RESOURCES after 0.5 s (--wait-timeout)")
    assert 2 <= len(calls(tmp_path)) - 1 <= 7


def test_no_wait_returns_after_create(tmp_path):
    env = fake_gcloud(tmp_path, ["WAITING_FOR_RESOURCES"])
    r = launch(["create", "--queued", "--no-wait"], env=env, dry=False)
    assert r.returncode == 0 and len(calls(tmp_path)) == 1


def remote_command(args):
    """The --command= a launch step sends to every worker, from the module itself."""
    mod = module()
    ns = mod.parser().parse_args(args[:1] + BASE[:-1] + [a for a in args[1:] if a != "--"
                                                         and not a.startswith("--config.")])
    ns.overrides = [a for a in args if a.startswith("--config.")]
    ns.queued = ns.queued or ns.num_slices > 1
    (step,) = mod.commands(ns)
    return next(a for a in step if a.startswith("--command="))[len("--command="):]


def fake_worker(tmp_path):
    """A HOME plus tmux and crontab stand-ins that record what they were given."""
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_.mkdir()
    (bin_ / "tmux").write_text('#!/bin/sh\nif [ "$1" = has-session ]; then '
                               'test -e "$HOME/session"; exit; fi\n'
                               'printf "%s\\n" "$@" > "$HOME/tmux.args"\n')
    # like the real one, `crontab -` replaces the table only after reading all of its input
    (bin_ / "crontab").write_text('#!/bin/sh\nif [ "$1" = "-l" ]; then cat "$HOME/cron" '
                                  '2>/dev/null; else cat > "$HOME/cron.new" && '
                                  'mv "$HOME/cron.new" "$HOME/cron"; fi\n')
    for f in ("tmux", "crontab"):
        (bin_ / f).chmod(0o755)
    return home, {**os.environ, "HOME": str(home), "PATH": f"{bin_}{os.pathsep}/usr/bin:/bin"}


@pytest.mark.parametrize("slices", [1, 2])
def test_restart_start_writes_the_supervised_run_script(tmp_path, slices):
    home, env = fake_worker(tmp_path)
    (home / "cron").write_text("0 * * * * other-job\n")
    args = [*START, "--restart-on-preemption", "--max-restarts", "3", "--backoff", "30",
            "--num-slices", str(slices), *EXTRA]
    dcn = ["--config.mesh.dcn_shape=(2,1,1)"] if slices > 1 else []
    r = subprocess.run(["bash", "-c", remote_command(args)], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    script = (home / "blt-run.sh").read_text()
    head, _, tail = script.partition(" >> ~/logs/$(hostname).log 2>&1 && ")
    cmd = shlex.split(head.split(" && ", 2)[2])
    assert cmd == ["~/venv/bin/python", "launch/supervise.py", "--workdir",
                   "gs://my-bucket/runs/blt_1b", "--max-restarts", "3", "--backoff", "30", "--",
                   "~/venv/bin/blt-jax", "train", "--config", "experiments/blt_1b.py",
                   "--workdir", "gs://my-bucket/runs/blt_1b", *dcn,
                   "--config.entropy.workdir=gs://my-bucket/runs/ent"]
    assert tail.strip() == "(crontab -l 2>/dev/null | grep -v -F blt-run.sh) | crontab -"
    assert (home / "cron").read_text().splitlines() == [
        "0 * * * * other-job", '@reboot tmux new -d -s blt "bash $HOME/blt-run.sh"']
    assert (home / "tmux.args").read_text().split("\n")[:5] == [
        "new", "-d", "-s", "blt", "bash ~/blt-run.sh"]
    # starting again does not add a second @reboot line; stop removes ours and keeps the rest
    subprocess.run(["bash", "-c", remote_command(args)], env=env, check=True)
    assert (home / "cron").read_text().count("@reboot") == 1
    subprocess.run(["bash", "-c", remote_command(["stop"])], env=env, check=True)
    assert (home / "cron").read_text().splitlines() == ["0 * * * * other-job"]
    assert (home / "tmux.args").read_text().split("\n")[:3] == ["kill-session", "-t", "blt"]


def test_restart_start_refuses_while_a_run_is_going(tmp_path):
    home, env = fake_worker(tmp_path)
    (home / "session").write_text("")  # tmux has-session -t blt succeeds
    (home / "blt-run.sh").write_text("the running script\n")
    r = subprocess.run(["bash", "-c", remote_command([*START, "--restart-on-preemption"])],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.startswith("start: a run is going on ") and "stop it first" in r.stderr
    assert (home / "blt-run.sh").read_text() == "the running script\n"
    assert not (home / "cron").exists() and not (home / "tmux.args").exists()


TRAIN = """import json, pathlib, signal, sys, time
w = pathlib.Path(sys.argv[1]); mode = sys.argv[2]
n = len(list(w.glob("attempt*"))) + 1
(w / f"attempt{n}").write_text("")
if mode == "crash2" and n <= 2: sys.exit(3)
if mode == "crash": sys.exit(4)
if mode == "preempt1" and n == 1:
    (w / "summary.json").write_text(json.dumps({"preempted_at": 7})); sys.exit(0)
if mode == "sleep":
    signal.signal(signal.SIGTERM, lambda *_: ((w / "saved").write_text(""), sys.exit(0)))
    (w / "ready").write_text(""); time.sleep(60)
(w / "summary.json").write_text(json.dumps({"steps": 10}))
"""


def supervise(tmp_path, mode, *flags):
    (tmp_path / "train.py").write_text(TRAIN)
    return [sys.executable, str(SUPERVISE), "--workdir", str(tmp_path), "--backoff", "0", *flags,
            "--", sys.executable, str(tmp_path / "train.py"), str(tmp_path), mode]


def attempts(tmp_path):
    return len(list(tmp_path.glob("attempt*")))


def test_supervisor_restarts_after_crashes(tmp_path):
    r = subprocess.run(supervise(tmp_path, "crash2", "--max-restarts", "5"), capture_output=True,
                       text=True)
    assert r.returncode == 0 and attempts(tmp_path) == 3, r.stderr
    assert "training exited 3; restart 2/5 in 0 s" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "supervise: training finished"


def test_supervisor_gives_up_after_max_restarts(tmp_path):
    r = subprocess.run(supervise(tmp_path, "crash", "--max-restarts", "2"), capture_output=True,
                       text=True)
    assert r.returncode == 4 and attempts(tmp_path) == 3
    assert "gave up after 2 restart(s)" in r.stderr


def test_supervisor_relaunches_a_preempted_run(tmp_path):
    r = subprocess.run(supervise(tmp_path, "preempt1", "--max-restarts", "1"),
                       capture_output=True, text=True)
    assert r.returncode == 0 and attempts(tmp_path) == 2, r.stderr
    assert "was preempted (checkpoint saved); restart 1/1" in r.stderr
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 10}


def test_supervisor_passes_sigterm_on_and_does_not_restart(tmp_path):
    p = subprocess.Popen(supervise(tmp_path, "sleep", "--max-restarts", "5"),
                         stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (tmp_path / "ready").exists():
        assert time.monotonic() - t0 < 30 and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert (tmp_path / "saved").exists() and attempts(tmp_path) == 1
    assert "not restarting" in p.stderr.read()


def test_backoff_doubles_up_to_the_cap():
    spec = importlib.util.spec_from_file_location("supervise", SUPERVISE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert [mod.delay_s(60, k, 300) for k in (1, 2, 3, 4)] == [60, 120, 240, 300]
