#!/usr/bin/env python3
"""Cloud TPU VM lifecycle for blt-jax: create, setup, sync, start, tail, stop, delete.

    python launch/tpu_vm.py create --name blt1b --zone us-east5-a --accelerator v5p-64 --spot \\
        --queued [--num-slices 2]
    python launch/tpu_vm.py setup  --name blt1b --zone us-east5-a
    python launch/tpu_vm.py sync   --name blt1b --zone us-east5-a
    python launch/tpu_vm.py start  --name blt1b --zone us-east5-a --restart-on-preemption \\
        --config experiments/blt_1b.py --workdir gs://BUCKET/runs/blt_1b \\
        -- --config.entropy.workdir=gs://BUCKET/runs/entropy_100m
    python launch/tpu_vm.py tail   --name blt1b --zone us-east5-a
    python launch/tpu_vm.py stop   --name blt1b --zone us-east5-a
    python launch/tpu_vm.py delete --name blt1b --zone us-east5-a --queued

Every command takes --dry-run, which prints the exact commands instead of running them. Pass the
same --queued/--num-slices to every command: with --num-slices N > 1 (multislice, always a queued
resource) the commands reach every worker of every slice through `queued-resources ssh/scp
--node=all`. Workdirs belong on gs:// (blt-jax and Orbax write to GCS directly, and every host
sees the same checkpoints); `setup --bucket B` also mounts B with gcsfuse at /gcs/B for tools
that want a file path. Runs start detached under tmux on every worker, one log per worker
(~/logs/HOSTNAME.log); `jax.distributed` finds the other hosts and slices by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import time
from typing import Callable, Union

RUNTIMES = {"v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "~/blt-jax"
VENV = "~/venv"
SESSION = "blt"
RUN_SCRIPT = "~/blt-run.sh"  # what `start` runs; with restarts also what @reboot runs
# gcsfuse: Orbax finalises a checkpoint by renaming its temporary directory; gcsfuse refuses
# directory renames unless --rename-dir-limit allows that many files below the directory
GCSFUSE_FLAGS = "--implicit-dirs --rename-dir-limit=200000"
TERMINAL = ("FAILED", "SUSPENDED", "SUSPENDING")
CRONTAB_L = f"crontab -l 2>/dev/null | grep -v -F {RUN_SCRIPT[2:]}"  # crontab minus our line
UNCRON = f"({CRONTAB_L}) | crontab -"


class LaunchError(Exception):
    """A bad flag or flag combination: one line, exit 2."""

    code = 2


class CloudError(LaunchError):
    """The cloud said no (queued resource FAILED, timed out, a command failed): one line, exit 1."""

    code = 1


@dataclasses.dataclass
class Wait:
    """Poll `describe` (prints the state) until ACTIVE; a terminal state or the timeout fails."""

    describe: list[str]
    timeout_s: float
    every_s: float


Step = Union[list, Wait]


def runtime_for(accelerator: str) -> str:
    return RUNTIMES.get(accelerator.split("-")[0], "tpu-ubuntu2204-base")


def qr(args: argparse.Namespace) -> str:
    return f"{args.name}-qr"


def multislice(args: argparse.Namespace) -> bool:
    return args.num_slices > 1


def tpu(args: argparse.Namespace, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *rest, f"--zone={args.zone}"] + \
        ([f"--project={args.project}"] if args.project else [])


def ssh(args: argparse.Namespace, command: str, worker: str = "all", node: str = "all") -> list:
    if multislice(args):  # one queued resource, N nodes (slices): reach them all at once
        return tpu(args, "queued-resources", "ssh", qr(args), f"--node={node}",
                   f"--worker={worker}", f"--command={command}")
    return tpu(args, "tpu-vm", "ssh", args.name, f"--worker={worker}", f"--command={command}")


def scp(args: argparse.Namespace, src: str, dest: str) -> list[str]:
    if multislice(args):
        return tpu(args, "queued-resources", "scp", src, f"{qr(args)}:{dest}", "--node=all",
                   "--worker=all")
    return tpu(args, "tpu-vm", "scp", src, f"{args.name}:{dest}", "--worker=all")


def create(args: argparse.Namespace) -> list[Step]:
    """A TPU VM, or a queued resource (N nodes for multislice) and the wait for ACTIVE."""
    version = args.version or runtime_for(args.accelerator)
    spot = ["--spot"] if args.spot else []
    if not args.queued:
        return [tpu(args, "tpu-vm", "create", args.name, f"--accelerator-type={args.accelerator}",
                    f"--version={version}", *spot)]
    nodes = [f"--node-count={args.num_slices}", f"--node-prefix={args.name}"] \
        if multislice(args) else [f"--node-id={args.name}"]
    steps: list[Step] = [tpu(args, "queued-resources", "create", qr(args), *nodes,
                             f"--accelerator-type={args.accelerator}",
                             f"--runtime-version={version}", *spot)]
    if not args.no_wait:
        steps.append(Wait(tpu(args, "queued-resources", "describe", qr(args),
                              "--format=value(state.state)"), args.wait_timeout, args.poll_every))
    return steps


def setup(args: argparse.Namespace) -> list[Step]:
    """Python 3.12 venv and tmux on every worker; gcsfuse and a mount only with --bucket."""
    steps = ["sudo apt-get update -q",
             "sudo apt-get install -yq software-properties-common tmux curl lsb-release",
             "sudo add-apt-repository -y ppa:deadsnakes/ppa",
             "sudo apt-get install -yq python3.12 python3.12-venv",
             f"python3.12 -m venv {VENV}",
             f"{VENV}/bin/pip install -q --upgrade pip"]
    if args.bucket:  # optional: blt-jax reads and writes gs:// itself
        b, mnt = args.bucket, f"/gcs/{args.bucket}"
        steps += [  # the stock image has no gcsfuse: Google's apt source for this release first
            'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
            'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" '
            "| sudo tee /etc/apt/sources.list.d/gcsfuse.list",
            "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
            "| sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null",
            "sudo apt-get update -q",
            "sudo apt-get install -yq gcsfuse",
            f"sudo mkdir -p {mnt} && sudo chown $USER {mnt}",
            f"(mountpoint -q {mnt} || gcsfuse {GCSFUSE_FLAGS} {b} {mnt})"]
    return [ssh(args, " && ".join(steps))]


def sync(args: argparse.Namespace) -> list[Step]:
    """The committed tree (git archive HEAD) to every worker, installed into the venv."""
    archive = "/tmp/blt-jax.tar.gz"
    return [["git", "archive", "--format=tar.gz", "-o", archive, "HEAD"],
            scp(args, archive, archive),
            ssh(args, f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf "
                      f"{archive} -C {REMOTE_DIR} && {VENV}/bin/pip install -q "
                      '-e "$HOME/blt-jax[tpu]" gcsfs')]  # gcsfs: how epath reaches gs://


def train_command(args: argparse.Namespace) -> str:
    """The `blt-jax train` line every worker runs (multislice: with mesh.dcn_shape)."""
    overrides = list(args.overrides)
    if multislice(args) and not any(o.startswith("--config.mesh.dcn_shape=") for o in overrides):
        # one slice per DCN step of the data axis; mesh.shape stays per slice
        overrides.insert(0, f"--config.mesh.dcn_shape=({args.num_slices},1,1)")
    return f"{VENV}/bin/blt-jax train " + " ".join(shlex.quote(x) for x in [
        "--config", args.config, "--workdir", args.workdir, *overrides])


def start(args: argparse.Namespace) -> list[Step]:
    """Training under tmux on every worker; with restarts, supervised and re-run at boot."""
    if not args.config or not args.workdir:
        raise LaunchError("start: --config and --workdir are required")
    env = f"cd {REMOTE_DIR} && export JAX_COMPILATION_CACHE_DIR={args.workdir}/xla_cache"
    if not args.restart_on_preemption:
        inner = f"{env} && {train_command(args)} > ~/logs/$(hostname).log 2>&1"
        return [ssh(args, f"mkdir -p ~/logs && tmux new -d -s {SESSION} {shlex.quote(inner)}")]
    supervisor = " ".join([
        f"{VENV}/bin/python launch/supervise.py", "--workdir", shlex.quote(args.workdir),
        f"--max-restarts {args.max_restarts} --backoff {args.backoff:g}", "--"])
    # appends (a restart keeps the log); a finished run removes its @reboot line
    run = (f"{env} && {supervisor} {train_command(args)} >> ~/logs/$(hostname).log 2>&1"
           f" && {UNCRON}")
    reboot = f"@reboot tmux new -d -s {SESSION} \"bash $HOME/{RUN_SCRIPT[2:]}\""
    busy = (f"{{ ! tmux has-session -t {SESSION} 2>/dev/null || {{ echo \"start: a run is "
            f"going on $(hostname) (tmux session {SESSION}); stop it first\" >&2; false; }}; }}")
    return [ssh(args, " && ".join([  # busy first: a running script must not be rewritten
        busy, "mkdir -p ~/logs",
        f"printf '%s\\n' {shlex.quote(run)} > {RUN_SCRIPT}.new",
        f"mv {RUN_SCRIPT}.new {RUN_SCRIPT}",
        f"({CRONTAB_L}; echo {shlex.quote(reboot)}) | crontab -",
        f"tmux new -d -s {SESSION} {shlex.quote('bash ' + RUN_SCRIPT)}"]))]


def commands(args: argparse.Namespace) -> list[Step]:
    if args.action == "create":
        return create(args)
    if args.action == "setup":
        return setup(args)
    if args.action == "sync":
        return sync(args)
    if args.action == "start":
        return start(args)
    if args.action == "tail":
        return [ssh(args, f"tail -n {args.lines} ~/logs/*.log", worker=args.worker,
                    node=args.node)]
    if args.action == "stop":  # a supervisor turns the pane's SIGHUP into a saving SIGTERM
        return [ssh(args, f"{UNCRON}; tmux kill-session -t {SESSION} || true")]
    if args.action == "delete":
        if args.queued:
            return [tpu(args, "queued-resources", "delete", qr(args), "--force", "--quiet")]
        return [tpu(args, "tpu-vm", "delete", args.name, "--quiet")]
    raise LaunchError(f"unknown action {args.action}")


def wait_active(w: Wait, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """Returns once the queued resource is ACTIVE; CloudError on a terminal state or timeout."""
    t0, last = clock(), None
    line = " ".join(shlex.quote(c) for c in w.describe)
    while True:
        r = run(w.describe, capture_output=True, text=True)
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise CloudError(f"launch: {line} failed: {err}")
        state = r.stdout.strip() or "UNKNOWN"
        if state != last:
            print(f"launch: queued resource is {state} ({clock() - t0:.0f} s)", file=sys.stderr)
            last = state
        if state == "ACTIVE":
            return
        if state in TERMINAL:
            see = " ".join(c for c in w.describe if not c.startswith("--format"))
            raise CloudError(f"launch: queued resource is {state}; see `{see}`, then delete it "
                             "(delete --queued) and create it again")
        if clock() - t0 + w.every_s > w.timeout_s:
            raise CloudError(f"launch: queued resource still {state} after {w.timeout_s:g} s "
                             "(--wait-timeout); it stays queued: wait with `describe`, or delete it")
        sleep(w.every_s)


def show(step: Step) -> str:
    if isinstance(step, Wait):
        return (f"# wait: every {step.every_s:g} s until ACTIVE; FAILED/SUSPENDED or "
                f"{step.timeout_s:g} s: error\n" + show(step.describe))
    return " ".join(shlex.quote(c) for c in step)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["create", "setup", "sync", "start", "tail", "stop",
                                      "delete"])
    p.add_argument("--name", required=True, help="TPU VM name (multislice: node prefix)")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--accelerator", default="v5p-64", help="accelerator type per slice (create)")
    p.add_argument("--version", default=None, help="runtime image (default: per generation)")
    p.add_argument("--spot", action="store_true")
    p.add_argument("--queued", action="store_true", help="use a queued resource NAME-qr")
    p.add_argument("--num-slices", type=int, default=1,
                   help="multislice: N slices in one queued resource (implies --queued)")
    p.add_argument("--wait-timeout", type=_seconds, default=7200.0,
                   help="create --queued: seconds to wait for ACTIVE")
    p.add_argument("--poll-every", type=_seconds, default=30.0)
    p.add_argument("--no-wait", action="store_true", help="create --queued: return at once")
    p.add_argument("--config", default=None, help="experiment file (start)")
    p.add_argument("--workdir", default=None, help="workdir, gs://BUCKET/... (start)")
    p.add_argument("--restart-on-preemption", action="store_true",
                   help="start: supervise training on every worker (launch/supervise.py)")
    p.add_argument("--max-restarts", type=_count, default=5)
    p.add_argument("--backoff", type=_seconds, default=60.0,
                   help="seconds before the first restart (doubles each time)")
    p.add_argument("--bucket", default=None, help="setup: also mount this bucket at /gcs/BUCKET")
    p.add_argument("--worker", default="0", help="worker for tail (or 'all')")
    p.add_argument("--node", default="0", help="slice for tail with --num-slices (or 'all')")
    p.add_argument("--lines", type=int, default=50)
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser().parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]  # after --: passed through to `blt-jax train`
    try:
        if args.num_slices < 1:
            raise LaunchError(f"--num-slices must be >= 1, got {args.num_slices}")
        args.queued = args.queued or multislice(args)
        for step in commands(args):
            if args.dry_run:
                print(show(step))
            elif isinstance(step, Wait):
                wait_active(step)
            else:
                line = show(step)
                print(f"+ {line}", file=sys.stderr)
                if subprocess.run(step).returncode != 0:
                    raise CloudError(f"launch: command failed: {line}")
    except LaunchError as e:
        print(e, file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
