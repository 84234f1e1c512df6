"""Execute the notebooks and store their outputs (`make notebooks`), and tell a stale stored output from a fresh one.

Run as `python -m sinklens.testing.notebooks [NOTEBOOK ...]` (default: every
notebook in notebooks/). Each runs top to bottom in a fresh kernel, with one
thread, no progress bars and `SINKLENS_OFFLINE=1` (the remote notebook takes
nnsight's local simulation), and is written back with its outputs. stderr
(warnings, progress) is not stored: a stored output is what a reader sees,
and what `tests/test_notebooks.py` compares with a fresh run.

`stale(stored, fresh)` compares two executions cell by cell: the text outputs
must be equal once their numbers are taken out, and each number equal within
`RTOL` (relative) or `ATOL` (absolute, for numbers near zero such as the 1e-7
differences between two routes). Pictures are not compared (they are drawn
from the numbers that are).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = ROOT / "notebooks"
RTOL, ATOL = 1e-3, 1e-4
CELL_TIMEOUT = 600
ENVIRONMENT = {
    "SINKLENS_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline", "OMP_NUM_THREADS": "1",
    "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore", "PYTHONHASHSEED": "0",
}  # fmt: skip
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def execute(path: Path, *, store: bool = True) -> Any:
    """Run a notebook in a fresh kernel (the sinklens of this checkout); write it back with its outputs if `store`."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = {key: os.environ.get(key) for key in [*ENVIRONMENT, "PYTHONPATH"]}
    os.environ.update(ENVIRONMENT)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), saved["PYTHONPATH"]]))
    try:
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    if store:
        nbformat.write(notebook, path)
    return notebook


def text_outputs(cell: Any) -> str:
    """A code cell's text as a reader sees it: stdout, and each result's or display's text/plain."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            parts.append(output.get("text", ""))
        elif output.get("output_type") in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "text/plain" in data and not {"image/png", "text/html"} & set(data):
                parts.append(data["text/plain"])
    return "".join(parts)


def _close(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    return abs(x - y) <= ATOL or abs(x - y) <= RTOL * max(abs(x), abs(y))


def stale(stored: Any, fresh: Any) -> list[str]:
    """What differs between a stored and a fresh execution, cell by cell ([] when they agree)."""
    problems = []
    cells = [(i, a, b) for i, (a, b) in enumerate(zip(stored.cells, fresh.cells, strict=True)) if a.cell_type == "code"]
    for index, old, new in cells:
        a, b = text_outputs(old), text_outputs(new)
        if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
            problems.append(f"cell {index}: the text differs:\n  stored: {a[:300]!r}\n  fresh:  {b[:300]!r}")
            continue
        bad = [(x, y) for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b), strict=True) if not _close(x, y)]
        if bad:
            problems.append(f"cell {index}: numbers differ beyond rtol {RTOL} / atol {ATOL}: {bad[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        import time

        started = time.perf_counter()
        execute(path)
        print(f"{path.name}: executed and stored in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
