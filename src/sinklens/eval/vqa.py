"""Evaluation on a general VQA file: yes/no, multiple-choice letters and short answers, resumable.

The file (`sinklens.data.files.read_vqa`) is checked whole, images included,
before the model is asked anything. Each question is asked through the model's
chat template with LLaVA-1.5's suffixes (`sinklens.data.vqa.prompt_text`) and
scored after VQAv2-style normalisation (`sinklens.data.vqa.score`). Rows go to
`OUT/vqa.jsonl` as they are answered (the folder is locked; settings written
with the first row; `sinklens.eval.folder`), metrics to `OUT/vqa.json`:
the mean score overall and per answer type, with n.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sinklens.data.files import Question, read_vqa
from sinklens.data.vqa import CHOICE_SUFFIX, SHORT_SUFFIX, prompt_text, score
from sinklens.errors import ParameterError
from sinklens.eval.folder import RunFolder
from sinklens.eval.pope import check_batch_size, describe_stack, generation_settings, prompt_template
from sinklens.run import Intervention
from sinklens.models.loaded import LoadedModel

KIND = "vqa"
KINDS = ("yes_no", "multiple_choice", "short")


def vqa_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean score overall and per answer type (with n), from scored rows."""
    result: dict[str, Any] = {"accuracy": sum(r["score"] for r in rows) / len(rows) if rows else 0.0, "n": len(rows)}
    per_kind = {}
    for kind in KINDS:
        picked = [r["score"] for r in rows if r["kind"] == kind]
        if picked:
            per_kind[kind] = {"accuracy": sum(picked) / len(picked), "n": len(picked)}
    result["per_type"] = per_kind
    return result


def load_questions(data: Path, images: Path, n: int | None = None) -> list[Question]:
    """The file's questions (checked whole), the first `n` when given."""
    if n is not None and n < 1:
        raise ParameterError(f"--n must be >= 1, got {n}")
    return read_vqa(data, images)[:n]


def evaluate_vqa(
    loaded: LoadedModel,
    runner: Any,
    *,
    data: Path,
    images: Path,
    out: Path | RunFolder,
    n: int | None = None,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 10,
    suffix: str | None = None,
    choice_suffix: str | None = None,
    batch_size: int = 1,
    settings: Mapping[str, Any] | None = None,
    questions: Sequence[Question] | None = None,
    progress: bool = True,
    on_example: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Answer a VQA file's questions with `runner.generate`, `batch_size` at a time; return the metrics."""
    check_batch_size(batch_size)
    if questions is None:
        questions = load_questions(data, images, n)
    wanted = {
        "model": loaded.name,
        "data": str(Path(data).resolve()),
        "images": str(Path(images).resolve()),
        "stack": describe_stack(interventions),
        "prompt": prompt_template(loaded),
        "suffix": SHORT_SUFFIX if suffix is None else suffix,
        "choice_suffix": CHOICE_SUFFIX if choice_suffix is None else choice_suffix,
        "generation": generation_settings(max_new_tokens),
        **dict(settings or {}),
    }
    if isinstance(out, RunFolder):
        return _evaluate(loaded, runner, out, wanted, questions, interventions, max_new_tokens, suffix, choice_suffix,
                         batch_size, progress, on_example)  # fmt: skip
    with RunFolder(out, KIND) as folder:
        return _evaluate(loaded, runner, folder, wanted, questions, interventions, max_new_tokens, suffix, choice_suffix,
                         batch_size, progress, on_example)  # fmt: skip


def _evaluate(loaded: LoadedModel, runner: Any, folder: RunFolder, wanted: dict[str, Any], questions: Sequence[Question],
              interventions: Sequence[Intervention], max_new_tokens: int, suffix: str | None, choice_suffix: str | None,
              batch_size: int, progress: bool, on_example: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:  # fmt: skip
    from tqdm.auto import tqdm

    folder.check(wanted)
    done = {row["id"]: row for row in folder.rows()}
    todo = [q for q in questions if q.id not in done]
    with tqdm(total=len(questions), initial=len(questions) - len(todo), desc=f"VQA {Path(wanted['data']).name}",
              disable=not progress) as bar:  # fmt: skip
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            texts = [prompt_text(q, suffix=suffix, choice_suffix=choice_suffix) for q in batch]
            inputs = loaded.prepare_batch([(q.load_image(), text) for q, text in zip(batch, texts)])
            answers = runner.generate(inputs, interventions, max_new_tokens=max_new_tokens).texts
            rows = []
            for q, answer in zip(batch, answers):
                value, read = score(q, answer)
                rows.append({"id": q.id, "line": q.line, "image": q.extra["image"], "kind": q.kind,
                             "truth": list(q.answer) if isinstance(q.answer, tuple) else q.answer,
                             "answer": answer, "read": read, "score": value})  # fmt: skip
            folder.append(rows)
            for row in rows:
                done[row["id"]] = row
                bar.update()
                if on_example is not None:
                    on_example(row)
    rows = [done[q.id] for q in questions]
    result = {**wanted, **vqa_metrics(rows)}
    folder.write_metrics(result)
    return result
