"""Experiment files (`--config experiments/NAME.py[:ARG]`) and `--config.a.b=value` overrides:
how a command line becomes one locked ml_collections config."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any

import ml_collections

from blt_jax.errors import UserError


def load_experiment(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Imports an experiment file and returns its locked `get_config(arg)`."""
    if ":" in path and not pathlib.Path(path).exists():
        path, arg = path.split(":", 1)
    p = pathlib.Path(path)
    if not p.is_file():
        raise UserError(f"config: no such experiment file {path!r}")
    spec = importlib.util.spec_from_file_location(f"blt_experiment_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:  # a broken experiment file is a user mistake
        raise UserError(f"config: {path} failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"config: {path} defines no get_config() function")
    cfg = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UserError(f"config: {path}:get_config() must return an ml_collections.ConfigDict")
    cfg.lock()
    return cfg


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise TypeError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, (list, tuple)) and isinstance(value, (int, float)):
        value = (value,)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies `--config.a.b=value` strings to a locked config; one-line ValueError on mistakes."""
    for item in overrides:
        if not item.startswith("--config."):
            raise UserError(f"unrecognized argument {item!r} (overrides look like "
                             "--config.optim.lr=1e-3)")
        key, sep, text = item[len("--config."):].partition("=")
        if not sep:
            raise UserError(f"override {item!r} needs '=value'")
        *parents, leaf = key.split(".")
        node = cfg
        try:
            for name in parents:
                node = node[name]
            current = node[leaf]
        except (KeyError, AttributeError, TypeError):
            raise UserError(f"override: config has no field {key!r}") from None
        if isinstance(current, ml_collections.ConfigDict):
            raise UserError(f"override: {key!r} is a group; set one of its fields")
        try:
            node[leaf] = _parse_value(text, current)
        except (TypeError, ValueError) as e:
            raise UserError(f"override: {key}={text!r} has the wrong type "
                            f"(field is {type(current).__name__}): {e}") from None
    return cfg
