"""Executes the Colab notebook at reduced settings, offline: what CI runs
(tests/tools/test_notebook.py) and how the executed copy beside it is made:

    python experiments/notebooks/run_notebook.py   # rewrites compare_with_token_baseline.ipynb

Only the parameters cell is replaced (the install cell skips through BLT_JAX_SKIP_INSTALL=1);
every other cell runs as written. The committed copy keeps the source's parameters cell, so it
stays in sync with the jupytext source, and its outputs print the reduced settings they used.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).parent
SOURCE = HERE / "compare_with_token_baseline.py"
REDUCED = {"STEPS": 12, "MAX_BATCHES": 2, "NOISE_DOCS": 1,
           "TEXT": "Daenerys Targaryen is in Game of Thrones."}


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{SOURCE.name}: expected one cell tagged 'parameters', got {len(cells)}")
    return cells[0]


def execute(cwd: str | pathlib.Path, output_dir: str = "blt_jax_notebook",
            settings: dict | None = None, timeout: int = 900) -> nbformat.NotebookNode:
    """The notebook executed in `cwd` with OUTPUT_DIR and the reduced settings replaced."""
    nb = jupytext.read(SOURCE)
    cell = parameters_cell(nb)
    lines = [ln for ln in cell.source.splitlines() if not ln.startswith(("OUTPUT_DIR", *REDUCED))]
    values = {"OUTPUT_DIR": output_dir, **REDUCED, **(settings or {})}
    cell.source = "\n".join(lines + [f"{k} = {v!r}" for k, v in values.items()])
    before = os.environ.get("BLT_JAX_SKIP_INSTALL")
    os.environ["BLT_JAX_SKIP_INSTALL"] = "1"  # the kernel inherits it: no network
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        if before is None:
            del os.environ["BLT_JAX_SKIP_INSTALL"]
        else:
            os.environ["BLT_JAX_SKIP_INSTALL"] = before
    return nb


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nb = execute(tmp)
    parameters_cell(nb).source = parameters_cell(jupytext.read(SOURCE)).source
    parameters_cell(nb).outputs = []
    for cell in nb.cells:  # timings change on every run: keep them out of the diff
        cell.metadata.pop("execution", None)
    jupytext.write(nb, HERE / "compare_with_token_baseline.ipynb")
    print(f"wrote {HERE / 'compare_with_token_baseline.ipynb'}", file=sys.stderr)


if __name__ == "__main__":
    main()
