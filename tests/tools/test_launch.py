"""Dry runs of every launch command against checked-in golden command lines."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[2]
GOLDENS = pathlib.Path(__file__).parents[1] / "goldens" / "launch"
BASE = ["--name", "blt1b", "--zone", "us-east5-a", "--project", "my-proj", "--dry-run"]
CASES = {
    "create": ["create", "--accelerator", "v5p-64", "--spot"],
    "create_queued": ["create", "--accelerator", "v5litepod-16", "--queued"],
    "setup": ["setup", "--bucket", "my-bucket"],
    "sync": ["sync"],
    "start": ["start", "--config", "experiments/blt_1b.py", "--workdir",
              "/gcs/my-bucket/runs/blt_1b", "--", "--config.entropy.workdir=/gcs/my-bucket/runs/ent"],
    "tail": ["tail", "--worker", "all"],
    "stop": ["stop"],
    "delete": ["delete"],
    "delete_queued": ["delete", "--queued"],
}


def dry_run(args):
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "tpu_vm.py"), *args[:1], *BASE,
                        *args[1:]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_matches_golden(case):
    out = dry_run(CASES[case])
    golden = GOLDENS / f"{case}.txt"
    if not golden.exists():
        golden.write_text(out)
        pytest.fail(f"wrote a new golden {golden.name}: review it and commit it")
    assert out == golden.read_text()
    assert all(line.startswith(("gcloud ", "git ")) for line in out.splitlines())


def test_required_arguments():
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "tpu_vm.py"), "start", *BASE],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--config and --workdir are required" in r.stderr
