"""POPE evaluation that writes as it goes and resumes where it stopped.

`evaluate_pope` appends one JSON line per example to `OUT/pope.jsonl` (flushed and
synced), so an interrupted or crashed run loses at most the example in flight.
Run it again with the same settings and it skips the examples already there (a
torn last line is dropped); asking for a larger `n` extends the run. The settings
(model, split, stack, decoding) sit in `OUT/pope.settings.json`, and a second run
with other settings is refused rather than mixed in. `OUT/pope.json` gets the metrics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sinklens.data.pope import pope, pope_metrics, yes_or_no
from sinklens.data.scenes import scene
from sinklens.errors import SinklensError
from sinklens.run import Intervention, Runner
from sinklens.models.loading import LoadedModel

ROWS = "pope.jsonl"
SETTINGS = "pope.settings.json"
METRICS = "pope.json"


class ResumeMismatchError(SinklensError, ValueError):
    """An output folder holds a run made with other settings."""


def describe_stack(interventions: Sequence[Intervention]) -> list[str]:
    """A stable description of a stack (interventions are frozen dataclasses with exact reprs)."""
    return [repr(intervention) for intervention in interventions]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a run file; a torn last line (a crash mid-write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    if len(good) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(good))
    return [json.loads(line) for line in good.decode().splitlines() if line.strip()]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def evaluate_pope(
    loaded: LoadedModel,
    runner: Runner,
    *,
    split: str,
    n: int,
    out: Path,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 3,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_example: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Answer the first `n` examples of a POPE split with `runner.generate`; return the metrics."""
    from tqdm.auto import tqdm

    examples = pope(split, n)  # checks split and n
    out.mkdir(parents=True, exist_ok=True)
    wanted = {
        "model": loaded.name,
        "split": split,
        "stack": describe_stack(interventions),
        "max_new_tokens": max_new_tokens,
        **dict(settings or {}),
    }
    settings_path = out / SETTINGS
    if settings_path.is_file():
        found = json.loads(settings_path.read_text())
        if found != wanted:
            changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise ResumeMismatchError(
                f"{out} holds a POPE run with other settings (differing: {', '.join(changed)}). "
                f"Use another --out folder, or --restart to discard the old run."
            )
    else:
        _write_atomic(settings_path, json.dumps(wanted, indent=1) + "\n")

    rows_path = out / ROWS
    done = {row["id"]: row for row in _read_rows(rows_path)}
    todo = [example for example in examples if example.id not in done]
    with rows_path.open("a") as f, tqdm(total=len(examples), initial=len(examples) - len(todo),
                                         desc=f"POPE {split}", disable=not progress) as bar:  # fmt: skip
        for example in todo:
            inputs = loaded.prepare(scene("heldout", example.scene_index).image(), example.question)
            answer = runner.generate(inputs, interventions, max_new_tokens=max_new_tokens).texts[0]
            row = {
                "id": example.id,
                "scene": example.scene_index,
                "shape": example.shape,
                "label": example.label,
                "answer": answer,
                "prediction": yes_or_no(answer),
            }
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[example.id] = row
            bar.update()
            if on_example is not None:
                on_example(row)

    rows = [done[example.id] for example in examples]
    metrics = pope_metrics([r["label"] for r in rows], [r["prediction"] for r in rows])
    result = {**wanted, **metrics}
    _write_atomic(out / METRICS, json.dumps(result, indent=1) + "\n")
    return result


def restart(out: Path) -> None:
    """Discard a previous POPE run in `out` (its rows, settings and metrics)."""
    for name in (ROWS, SETTINGS, METRICS):
        (out / name).unlink(missing_ok=True)
