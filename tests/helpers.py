"""Shared test helpers: workdirs holding untrained (random) models, built in seconds; the CLI
as a subprocess."""

import pathlib
import shutil
import subprocess
import sys

from flax import nnx

from blt_jax.inference import api
from blt_jax.training import checkpoint
from blt_jax import config


def make_workdir(path, kind, model_cfg, entropy_cfg=None, seed=0):
    """A blt-jax workdir with random weights (and, for BLT, a random entropy model inside)."""
    path = pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    exp = config.experiment_config(kind, model_cfg)
    exp.entropy.workdir = "entropy_model" if entropy_cfg is not None else ""
    (path / "config.json").write_text(exp.to_json())
    checkpoint.save_params_only(path, nnx.state(api.build_model(model_cfg, seed)))
    if entropy_cfg is not None:
        make_workdir(path / "entropy_model", "entropy", entropy_cfg, seed=seed + 1)
    return path


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """`python -m blt_jax ARGS` in a fresh process (exit codes and stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "blt_jax", *args], capture_output=True,
                          text=True, cwd=cwd)
