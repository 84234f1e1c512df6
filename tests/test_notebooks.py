"""Every notebook in notebooks/ runs top to bottom in a fresh kernel; a failing cell fails the suite.

The kernel inherits this process's environment (PYTHONPATH, SINKLENS_CACHE, OMP_NUM_THREADS);
SINKLENS_OFFLINE=1 makes the remote notebook take nnsight's local simulation even where an
NDIF key is configured, so the suite never reaches the network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import sinklens

pytestmark = pytest.mark.slow  # toy-llava, subprocesses: make test-fast skips the module

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300


def test_there_is_a_notebook_per_route():
    stems = [path.stem for path in NOTEBOOKS]
    assert len(stems) == 5, stems
    for word in ("quickstart", "figure", "compose", "transformer_lens", "remote"):
        assert any(word in stem for stem in stems), word


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    # the kernel imports the sinklens under test, whatever its working directory (notebooks/)
    package_root = str(Path(sinklens.__file__).parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SINKLENS_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebooks_are_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} cell {index} has outputs; clear them before committing "
                "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
            )
