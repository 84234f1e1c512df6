"""POPE: yes/no object probing, on the synthetic benchmark or a POPE file as its authors publish it.

The questions come from the synthetic benchmark (`synthetic(split, n)`) or from
a POPE file (`from_file(data, images)`: JSON lines with `question_id`, `image`,
`text`, `label`; checked whole, images included, before the model is asked
anything). `sinklens.eval.loop.evaluate` answers them into a resumable folder:
one JSON line per question in `OUT/pope.jsonl`, the metrics in `OUT/pope.json`.

    metrics = evaluate(lm, runner, synthetic("random", 300), out="out/pope", options=Options(max_new_tokens=3))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sinklens.data.pope import Split, pope, pope_metrics, yes_or_no
from sinklens.errors import ParameterError
from sinklens.eval.loop import Benchmark, Item, Options, correct, prompt_template

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel

KIND = "pope"


def _asking(loaded: LoadedModel, options: Options) -> dict[str, Any]:
    return {"max_new_tokens": options.max_new_tokens, "prompt": prompt_template(loaded)}


def _score(item: Item, answer: str) -> dict[str, Any]:
    return {"id": item.id, **item.record, "answer": answer, "prediction": yes_or_no(answer)}


def _metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return pope_metrics([row["label"] for row in rows], [row["prediction"] for row in rows])


def _benchmark(name: str, items: list[Item], source: dict[str, Any]) -> Benchmark:
    return Benchmark(kind=KIND, name=f"POPE {name}", items=tuple(items), source=source, asking=_asking,
                     score=_score, metrics=_metrics)  # fmt: skip


def synthetic(split: Split = "random", n: int = 300) -> Benchmark:
    """The first `n` questions of a synthetic POPE split (held-out scenes drawn on demand)."""
    from sinklens.data.scenes import scene

    items = [
        Item(e.id, lambda i=e.scene_index: scene("heldout", i).image(), e.question,
             {"scene": e.scene_index, "shape": e.shape, "label": e.label})  # fmt: skip
        for e in pope(split, n)
    ]
    return _benchmark(split, items, {"split": split})


def from_file(data: Path | str, images: Path | str | None, n: int | None = None, *, suffix: str | None = None) -> Benchmark:
    """The questions of a published POPE file (checked whole, images included); the first `n` when given.

    Each question is asked as LLaVA-1.5's evaluation asks it: the text, then
    `suffix` on its own line (default: "Answer the question using a single word or phrase.").
    """
    from sinklens.data.files import read_pope
    from sinklens.data.vqa import SHORT_SUFFIX

    if n is not None and n < 1:
        raise ParameterError(f"--n must be >= 1, got {n}")
    tail = SHORT_SUFFIX if suffix is None else suffix
    questions = read_pope(data, images)
    items = [
        Item(q.id, q.load_image, q.question + (f"\n{tail}" if tail else ""), {"image": q.extra["image"], "label": q.answer})
        for q in questions[:n]
    ]
    source = {"data": str(Path(data).resolve()), "images": str(Path(images).resolve()) if images else None,
              "suffix": suffix}  # fmt: skip
    return _benchmark(Path(data).name, items, source)


def correct_answers(out: Path | str, ids: Sequence[str] | None = None) -> dict[str, bool]:
    """{id: answered correctly} of the rows in a POPE folder (the ones in `ids` when given), for paired statistics."""
    return correct(out, KIND, ids)
