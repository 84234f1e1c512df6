"""POPE evaluation that writes as it goes and resumes where it stopped.

The questions come from the synthetic benchmark (`split`, `n`; the default) or
from a POPE file as its authors publish it (`data`, `images`: JSON lines with
`question_id`, `image`, `text`, `label`; checked whole, images included, before
the model is asked anything).

`evaluate_pope` appends one JSON line per question to `OUT/pope.jsonl` (flushed
and synced after each batch), so an interrupted or crashed run loses at most
the batch in flight. Run it again with the same settings and it skips the
questions already there; asking for a larger `n` extends the run. The folder is
locked while a run uses it, and its settings (model, questions, stack, the
exact prompt template, decoding) are written with the first row: a run with
other settings is refused, naming each difference (`sinklens.eval.folder`).
`OUT/pope.json` gets the metrics.

Answers do not depend on `batch_size`: prompts are padded on the left and every
example keeps its own image span and sink sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sinklens.data.pope import pope, pope_metrics, yes_or_no
from sinklens.errors import ParameterError
from sinklens.eval.folder import RunFolder
from sinklens.run import Intervention, Runner
from sinklens.models.loaded import LoadedModel

KIND = "pope"
ROWS = "pope.jsonl"
SETTINGS = "pope.settings.json"
METRICS = "pope.json"
QUESTION = "{question}"  # the placeholder the prompt template shows


@dataclass(frozen=True)
class Item:
    """One question to ask: its id, how to get its image, the text asked, the truth, and what its row records."""

    id: str
    image: Callable[[], Any]
    text: str
    label: str
    record: Mapping[str, Any]


def describe_stack(interventions: Sequence[Intervention]) -> list[str]:
    """A stable description of a stack (interventions are frozen dataclasses with exact reprs)."""
    return [repr(intervention) for intervention in interventions]


def prompt_template(loaded: LoadedModel) -> str:
    """The exact prompt the model reads, with `{question}` where the question goes (the chat template's)."""
    return loaded.prompt(1, QUESTION)


def generation_settings(max_new_tokens: int) -> dict[str, Any]:
    """What `NnsightRunner.generate` does: greedy, exactly `max_new_tokens` tokens (EOS does not stop it)."""
    return {"decoding": "greedy", "max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ParameterError(f"--batch-size must be an integer >= 1, got {batch_size!r}")


def synthetic_items(split: str, n: int) -> list[Item]:
    """The first `n` questions of a synthetic POPE split (held-out scenes drawn on demand)."""
    from sinklens.data.scenes import scene

    return [
        Item(e.id, lambda i=e.scene_index: scene("heldout", i).image(), e.question, e.label,
             {"scene": e.scene_index, "shape": e.shape})  # fmt: skip
        for e in pope(split, n)
    ]


def file_items(data: Path, images: Path, n: int | None = None, *, suffix: str | None = None) -> list[Item]:
    """Questions of a published POPE file (checked whole, images included); the first `n` when given.

    Each question is asked as LLaVA-1.5's evaluation asks it: the text, then
    `suffix` on its own line (default: "Answer the question using a single word or phrase.").
    """
    from sinklens.data.files import read_pope
    from sinklens.data.vqa import SHORT_SUFFIX

    if n is not None and n < 1:
        raise ParameterError(f"--n must be >= 1, got {n}")
    tail = SHORT_SUFFIX if suffix is None else suffix
    questions = read_pope(data, images)
    return [
        Item(q.id, q.load_image, q.question + (f"\n{tail}" if tail else ""), q.answer, {"image": q.extra["image"]})
        for q in questions[:n]
    ]


def evaluate_pope(
    loaded: LoadedModel,
    runner: Runner,
    *,
    split: str = "random",
    n: int | None = 300,
    out: Path | RunFolder,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 3,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_example: Callable[[dict[str, Any]], None] | None = None,
    data: Path | None = None,
    images: Path | None = None,
    suffix: str | None = None,
    batch_size: int = 1,
    items: Sequence[Item] | None = None,
) -> dict[str, Any]:
    """Answer POPE questions with `runner.generate`, `batch_size` at a time; return the metrics.

    Synthetic (`split`, `n`) unless `data` (a POPE file) and `images` (its images folder) are given;
    then `n` (None: all) takes the first questions of the file. `out` is a folder path or an open,
    locked `RunFolder` (the CLI locks before loading the model, so a busy folder is refused at once).
    """
    check_batch_size(batch_size)
    if items is None:
        items = file_items(data, images, n, suffix=suffix) if data is not None else synthetic_items(split, n)
    source: dict[str, Any]
    if data is not None:
        source = {"data": str(Path(data).resolve()), "images": str(Path(images).resolve()) if images else None,
                  "suffix": suffix}  # fmt: skip
    else:
        source = {"split": split}
    wanted = {
        "model": loaded.name,
        **source,
        "stack": describe_stack(interventions),
        "max_new_tokens": max_new_tokens,
        "prompt": prompt_template(loaded),
        "generation": generation_settings(max_new_tokens),
        **dict(settings or {}),
    }
    if isinstance(out, RunFolder):
        return _evaluate(loaded, runner, out, wanted, items, interventions, max_new_tokens, batch_size, progress, on_example,
                         desc=f"POPE {Path(data).name if data else split}")  # fmt: skip
    with RunFolder(out, KIND) as folder:
        return _evaluate(loaded, runner, folder, wanted, items, interventions, max_new_tokens, batch_size, progress,
                         on_example, desc=f"POPE {Path(data).name if data else split}")  # fmt: skip


def _evaluate(loaded: LoadedModel, runner: Any, folder: RunFolder, wanted: dict[str, Any], items: Sequence[Item],
              interventions: Sequence[Intervention], max_new_tokens: int, batch_size: int, progress: bool,
              on_example: Callable[[dict[str, Any]], None] | None, *, desc: str) -> dict[str, Any]:  # fmt: skip
    from tqdm.auto import tqdm

    folder.check(wanted)
    done = {row["id"]: row for row in folder.rows()}
    todo = [item for item in items if item.id not in done]
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            inputs = loaded.prepare_batch([(item.image(), item.text) for item in batch])
            answers = runner.generate(inputs, interventions, max_new_tokens=max_new_tokens).texts
            rows = [
                {"id": item.id, **item.record, "label": item.label, "answer": answer, "prediction": yes_or_no(answer)}
                for item, answer in zip(batch, answers)
            ]
            folder.append(rows)
            for row in rows:
                done[row["id"]] = row
                bar.update()
                if on_example is not None:
                    on_example(row)

    rows = [done[item.id] for item in items]
    metrics = pope_metrics([r["label"] for r in rows], [r["prediction"] for r in rows])
    result = {**wanted, **metrics}
    folder.write_metrics(result)
    return result


def correct(out: Path, ids: Sequence[str] | None = None) -> dict[str, bool]:
    """{id: answered correctly} of the rows in a POPE folder (the ones in `ids` when given), for paired statistics."""
    rows = RunFolder(out, KIND).rows()
    by_id = {row["id"]: row["label"] == row["prediction"] for row in rows}
    return by_id if ids is None else {i: by_id[i] for i in ids}


def restart(out: Path | RunFolder) -> None:
    """Discard a previous POPE run in `out` (its rows, settings and metrics), under the folder's lock."""
    if isinstance(out, RunFolder):
        out.restart()
        return
    with RunFolder(out, KIND) as folder:
        folder.restart()
