"""The Colab notebook executes top to bottom offline (reduced settings) and produces its figures
and tables; the .ipynb stays in sync with its jupytext source."""

import pathlib

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NB = pathlib.Path(__file__).parents[2] / "experiments" / "notebooks"
SOURCE = NB / "compare_with_token_baseline.py"


def test_ipynb_matches_jupytext_source():
    py = jupytext.read(SOURCE)
    ipynb = nbformat.read(NB / "compare_with_token_baseline.ipynb", as_version=4)
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells]


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_executes_and_writes_figures(tmp_path):
    nb = jupytext.read(SOURCE)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    params[0].source = (f'WORKDIR = "{tmp_path}/nb"\nSTEPS = 12\nMAX_BATCHES = 2\nNOISE_DOCS = 1\n'
                        'TEXT = "Daenerys Targaryen is in Game of Thrones."\n')
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    figs = tmp_path / "nb" / "figures"
    for name in ("entropy.png", "sweep.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "nb" / "table.md").read_text()
    assert "| BLT |" in table and "| BPE |" in table
    assert "degradation_pct" in (tmp_path / "nb" / "robustness.md").read_text()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the figures are shown inline too
