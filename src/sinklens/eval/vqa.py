"""A general VQA file of your own: yes/no, multiple-choice letters and short answers.

The file (`sinklens.data.files.read_vqa`) is checked whole, images included,
before the model is asked anything. Each question is asked through the model's
chat template with LLaVA-1.5's suffixes (`sinklens.data.vqa.prompt_text`) and
scored after VQAv2-style normalisation (`sinklens.data.vqa.score`).
`sinklens.eval.loop.evaluate` answers them into a resumable folder: rows in
`OUT/vqa.jsonl`, metrics in `OUT/vqa.json` (the mean score overall and per
answer type, with n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sinklens.data.files import Question, read_vqa
from sinklens.data.vqa import CHOICE_SUFFIX, SHORT_SUFFIX, prompt_text, score
from sinklens.errors import ParameterError
from sinklens.eval.loop import Benchmark, Item, Options, prompt_template

if TYPE_CHECKING:
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


def _score(item: Item, answer: str) -> dict[str, Any]:
    question: Question = item.record["question"]
    value, read = score(question, answer)
    truth = list(question.answer) if isinstance(question.answer, tuple) else question.answer
    return {"id": question.id, "line": question.line, "image": question.extra["image"], "kind": question.kind,
            "truth": truth, "answer": answer, "read": read, "score": value}  # fmt: skip


def from_file(
    data: Path | str, images: Path | str, n: int | None = None, *, suffix: str | None = None,
    choice_suffix: str | None = None,
) -> Benchmark:
    """The questions of a VQA file (checked whole, images included); the first `n` when given."""
    if n is not None and n < 1:
        raise ParameterError(f"--n must be >= 1, got {n}")
    questions = read_vqa(data, images)[:n]
    items = [Item(q.id, q.load_image, prompt_text(q, suffix=suffix, choice_suffix=choice_suffix), {"question": q})
             for q in questions]  # fmt: skip
    suffixes = {"suffix": SHORT_SUFFIX if suffix is None else suffix,
                "choice_suffix": CHOICE_SUFFIX if choice_suffix is None else choice_suffix}  # fmt: skip

    def asking(loaded: LoadedModel, options: Options) -> dict[str, Any]:
        return {"prompt": prompt_template(loaded), **suffixes}

    return Benchmark(kind=KIND, name=f"VQA {Path(data).name}", items=tuple(items),
                     source={"data": str(Path(data).resolve()), "images": str(Path(images).resolve())},
                     asking=asking, score=_score, metrics=vqa_metrics)  # fmt: skip
