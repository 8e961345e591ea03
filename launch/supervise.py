#!/usr/bin/env python3
"""Re-launches a training command until it finishes, so a crash or a preemption costs a restart,
not the run.

    python launch/supervise.py --workdir gs://B/runs/x --max-restarts 5 --backoff 60 -- \\
        ~/venv/bin/blt-jax train --config experiments/blt_1b.py --workdir gs://B/runs/x

`start --restart-on-preemption` runs this on every worker. blt-jax resumes from the workdir's
latest checkpoint by itself, so a restart is the same command again. The rules:
- exit 0 and the workdir's summary.json has no `preempted_at`: finished, exit 0;
- exit 0 after a preemption (SIGTERM saved a checkpoint on some host and every process stopped),
  or a non-zero exit (a crash, or a peer host that vanished): wait, then launch again, waiting
  `backoff * 2**k` seconds (capped) before restart k+1, at most `--max-restarts` times;
- SIGTERM/SIGHUP/SIGINT to the supervisor (the VM shuts down, `tpu_vm.py stop`): passed on to
  training as SIGTERM (it saves and exits), then exit 128+signal, no restart.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def log(message: str) -> None:
    print(f"supervise: {message}", file=sys.stderr, flush=True)


def was_preempted(workdir: str) -> bool:
    """Whether the last run stopped early on SIGTERM (its summary.json says `preempted_at`)."""
    try:
        from blt_jax import paths  # gs:// workdirs; the VM's venv has blt-jax installed

        text = paths.path(workdir).joinpath("summary.json").read_text()
    except ImportError:
        import pathlib

        text = pathlib.Path(workdir, "summary.json").read_text()
    except Exception as e:  # unreadable: do not loop on a finished run
        log(f"cannot read {workdir}/summary.json ({type(e).__name__}); treating the run as done")
        return False
    return "preempted_at" in json.loads(text)


def delay_s(backoff: float, restart: int, cap: float) -> float:
    """Seconds to wait before restart number `restart` (1-based): backoff, 2x, 4x, ... <= cap."""
    return min(backoff * 2 ** (restart - 1), cap)


def supervise(cmd: list[str], *, workdir: str, max_restarts: int, backoff: float,
              max_backoff: float, sleep: Callable[[float], None] = time.sleep) -> int:
    """Runs `cmd` until it finishes; returns the exit code for the caller (see the module doc)."""
    state: dict = {"child": None, "signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        state["signal"] = signum
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # training saves a checkpoint and exits 0

    for s in SIGNALS:
        signal.signal(s, on_signal)
    restarts = 0
    while True:
        log(f"launch {restarts + 1}: {' '.join(cmd)}")
        # a session of its own: closing the tmux pane must not kill training before it saves
        state["child"] = subprocess.Popen(cmd, start_new_session=True)
        rc = state["child"].wait()
        if state["signal"]:
            log(f"got signal {state['signal']}; training exited {rc}; not restarting")
            return 128 + state["signal"]
        if rc == 0 and not was_preempted(workdir):
            log("training finished")
            return 0
        why = "was preempted (checkpoint saved)" if rc == 0 else f"exited {rc}"
        if restarts >= max_restarts:
            log(f"training {why}; gave up after {restarts} restart(s) (--max-restarts)")
            return rc or 1
        restarts += 1
        wait = delay_s(backoff, restarts, max_backoff)
        log(f"training {why}; restart {restarts}/{max_restarts} in {wait:g} s")
        sleep(wait)
        if state["signal"]:
            log(f"got signal {state['signal']} while waiting; not restarting")
            return 128 + state["signal"]


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="the run's workdir (reads summary.json)")
    p.add_argument("--max-restarts", type=int, default=5)
    p.add_argument("--backoff", type=_non_negative, default=60.0,
                   help="seconds before the first restart; doubles each time")
    p.add_argument("--max-backoff", type=_non_negative, default=1800.0)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no training command (put it after --)")
    if args.max_restarts < 0:
        p.error(f"--max-restarts must be >= 0, got {args.max_restarts}")
    return supervise(cmd, workdir=args.workdir, max_restarts=args.max_restarts,
                     backoff=args.backoff, max_backoff=args.max_backoff)


if __name__ == "__main__":
    sys.exit(main())
