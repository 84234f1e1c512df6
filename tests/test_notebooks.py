"""The notebooks: each stores the output of every code cell (text, tables, figures, the inline explorer), and a
fresh run gives the stored text, numbers within a stated tolerance; so a notebook whose stored result no longer
matches the library fails the suite. `make notebooks` executes them all in place and stores the outputs.

The kernel runs the sinklens of this checkout with one thread and SINKLENS_OFFLINE=1 (the remote notebook takes
nnsight's local simulation), as `make notebooks` ran it (sinklens.testing.notebooks).
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest

from sinklens.testing.notebooks import ATOL, RTOL, execute, stale, text_outputs

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_the_six_tutorials():
    stems = [path.stem for path in NOTEBOOKS]
    assert len(stems) >= 6, stems
    for word in ("quickstart", "paper_figures", "compose", "transformer_lens", "remote", "evaluate"):
        assert any(word in stem for stem in stems), word


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_code_cell_has_its_stored_output_and_the_notebook_a_picture(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    kinds = set()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs and cell.execution_count is not None, (
            f"{path.name} cell {index} has no stored output: run `make notebooks` (sinklens.testing.notebooks)"
        )
        assert not any(o.get("output_type") == "error" for o in cell.outputs), f"{path.name} cell {index} stored an error"
        kinds |= {key for o in cell.outputs for key in o.get("data", {})}
    assert kinds & {"image/png", "text/html"}, f"{path.name} stores no figure and no explorer"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "Model:" in first.source, f"{path.name} does not say its model first"


def test_a_changed_number_or_word_is_stale_and_rounding_is_not():
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    index, cell = next((i, c) for i, c in enumerate(notebook.cells) if c.cell_type == "code" and text_outputs(c))
    stream = next(o for o in cell.outputs if o.get("output_type") == "stream")
    for text, problem in [("layers: 31", "numbers differ"), ("layers: 30.00001", None), ("stratum: 30", "text differs")]:
        fresh = copy.deepcopy(notebook)
        out = next(o for o in fresh.cells[index].outputs if o.get("output_type") == "stream")
        out["text"] = stream["text"].replace("layers: 30", text)
        found = stale(notebook, fresh)
        assert (problem in found[0]) if problem else not found, (text, found)
    assert (RTOL, ATOL) == (1e-3, 1e-4)


@pytest.mark.slow  # toy-llava, a kernel per notebook: make test runs it
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_a_fresh_run_gives_the_stored_outputs(path):
    stored = nbformat.read(path, as_version=4)
    fresh = execute(path, store=False)
    problems = stale(stored, fresh)
    assert not problems, f"{path.name} is stale (run `make notebooks`):\n" + "\n".join(problems)
