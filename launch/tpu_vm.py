#!/usr/bin/env python3
"""Cloud TPU VM lifecycle for blt-jax: create, setup, sync, start, tail, stop, delete.

    python launch/tpu_vm.py create --name blt1b --zone us-east5-a --accelerator v5p-64 --spot
    python launch/tpu_vm.py setup  --name blt1b --zone us-east5-a --bucket BUCKET
    python launch/tpu_vm.py sync   --name blt1b --zone us-east5-a
    python launch/tpu_vm.py start  --name blt1b --zone us-east5-a \\
        --config experiments/blt_1b.py --workdir /gcs/BUCKET/runs/blt_1b \\
        -- --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m
    python launch/tpu_vm.py tail   --name blt1b --zone us-east5-a
    python launch/tpu_vm.py stop   --name blt1b --zone us-east5-a
    python launch/tpu_vm.py delete --name blt1b --zone us-east5-a

Every command takes --dry-run, which prints the exact gcloud commands instead of running them.
`setup` mounts the bucket with gcsfuse at /gcs/BUCKET on every worker, so workdirs, checkpoints
and TFDS data are plain paths shared by all hosts (every host writes its own checkpoint shards).
Runs start detached under tmux on every worker, one log per worker (~/logs/HOSTNAME.log);
`jax.distributed` finds the other hosts by itself on a TPU VM.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

RUNTIMES = {"v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "~/blt-jax"
VENV = "~/venv"
SESSION = "blt"


def runtime_for(accelerator: str) -> str:
    return RUNTIMES.get(accelerator.split("-")[0], "tpu-ubuntu2204-base")


def tpu(args: argparse.Namespace, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *rest, f"--zone={args.zone}"] + \
        ([f"--project={args.project}"] if args.project else [])


def ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
    return tpu(args, "tpu-vm", "ssh", args.name, f"--worker={worker}", f"--command={command}")


def commands(args: argparse.Namespace) -> list[list[str]]:
    if args.action == "create":
        common = [f"--accelerator-type={args.accelerator}",
                  f"--version={args.version or runtime_for(args.accelerator)}"]
        if args.queued:
            return [tpu(args, "queued-resources", "create", f"{args.name}-qr",
                        f"--node-id={args.name}", *common, *(["--spot"] if args.spot else [])),
                    tpu(args, "queued-resources", "describe", f"{args.name}-qr",
                        "--format=value(state.state)")]
        return [tpu(args, "tpu-vm", "create", args.name, *common,
                    *(["--spot"] if args.spot else []))]
    if args.action == "setup":
        if not args.bucket:
            raise SystemExit("setup: --bucket is required (mounted at /gcs/BUCKET)")
        script = " && ".join([
            "sudo apt-get update -q",
            "sudo apt-get install -yq software-properties-common tmux gcsfuse",
            "sudo add-apt-repository -y ppa:deadsnakes/ppa",
            "sudo apt-get install -yq python3.12 python3.12-venv",
            f"python3.12 -m venv {VENV}",
            f"{VENV}/bin/pip install -q --upgrade pip",
            f"sudo mkdir -p /gcs/{args.bucket} && sudo chown $USER /gcs/{args.bucket}",
            f"gcsfuse --implicit-dirs {args.bucket} /gcs/{args.bucket}"])
        return [ssh(args, script)]
    if args.action == "sync":
        archive = "/tmp/blt-jax.tar.gz"
        return [["git", "archive", "--format=tar.gz", "-o", archive, "HEAD"],
                tpu(args, "tpu-vm", "scp", archive, f"{args.name}:/tmp/blt-jax.tar.gz",
                    "--worker=all"),
                ssh(args, f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf "
                          f"/tmp/blt-jax.tar.gz -C {REMOTE_DIR} && {VENV}/bin/pip install -q "
                          '-e "$HOME/blt-jax[tpu]"')]
    if args.action == "start":
        if not args.config or not args.workdir:
            raise SystemExit("start: --config and --workdir are required")
        train = f"{VENV}/bin/blt-jax train " + " ".join(shlex.quote(x) for x in [
            "--config", args.config, "--workdir", args.workdir, *args.overrides])
        inner = (f"cd {REMOTE_DIR} && export JAX_COMPILATION_CACHE_DIR={args.workdir}/xla_cache"
                 f" && {train} > ~/logs/$(hostname).log 2>&1")
        return [ssh(args, f"mkdir -p ~/logs && tmux new -d -s {SESSION} "
                          f"{shlex.quote(inner)}")]
    if args.action == "tail":
        return [ssh(args, f"tail -n {args.lines} ~/logs/*.log", worker=args.worker)]
    if args.action == "stop":
        return [ssh(args, f"tmux kill-session -t {SESSION} || true")]
    if args.action == "delete":
        if args.queued:
            return [tpu(args, "queued-resources", "delete", f"{args.name}-qr", "--force",
                        "--quiet")]
        return [tpu(args, "tpu-vm", "delete", args.name, "--quiet")]
    raise SystemExit(f"unknown action {args.action}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["create", "setup", "sync", "start", "tail", "stop",
                                      "delete"])
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--accelerator", default="v5p-64", help="accelerator type (create)")
    p.add_argument("--version", default=None, help="runtime image (default: per generation)")
    p.add_argument("--spot", action="store_true")
    p.add_argument("--queued", action="store_true", help="use a queued resource")
    p.add_argument("--config", default=None, help="experiment file (start)")
    p.add_argument("--workdir", default=None, help="workdir on the shared bucket mount, "
                   "/gcs/BUCKET/... (start)")
    p.add_argument("--bucket", default=None, help="GCS bucket to mount at /gcs/BUCKET (setup)")
    p.add_argument("--worker", default="0", help="worker for tail (or 'all')")
    p.add_argument("--lines", type=int, default=50)
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser().parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]  # after --: passed through to `blt-jax train`
    for cmd in commands(args):
        line = " ".join(shlex.quote(c) for c in cmd)
        if args.dry_run:
            print(line)
            continue
        print(f"+ {line}", file=sys.stderr)
        if subprocess.run(cmd).returncode != 0:
            print(f"launch: command failed: {line}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
