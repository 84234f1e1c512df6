"""Caption accuracy per attribute on held-out scenes (shape, colour, size, position, count, background)."""

from __future__ import annotations

from typing import Any

from sinklens.data.questions import CAPTION_PROMPT, score_caption
from sinklens.data.scenes import scene
from sinklens.errors import ParameterError
from sinklens.eval.loop import Item, Options, answers
from sinklens.models.loaded import LoadedModel
from sinklens.run import Members, Runner


def caption_items(n: int) -> list[Item]:
    """Held-out scenes 0..n-1, each asked for a caption."""
    if n < 1:
        raise ParameterError(f"n must be >= 1, got {n}")
    return [Item(str(index), lambda i=index: scene("heldout", i).image(), CAPTION_PROMPT, {"scene": index})
            for index in range(n)]  # fmt: skip


def evaluate_captions(
    loaded: LoadedModel, runner: Runner, *, n: int, interventions: Members = (), options: Options | None = None
) -> dict[str, Any]:
    """Greedy captions of held-out scenes 0..n-1, each scored per attribute; means and every caption.

    Options default to 48 new tokens, one scene per pass.
    """
    options = options or Options(max_new_tokens=48)
    rows = []
    for batch in answers(loaded, runner, caption_items(n), interventions, options, desc="captions"):
        for item, caption in batch:
            drawn = scene("heldout", item.record["scene"])
            rows.append({"scene": drawn.index, "truth": drawn.caption(), "caption": caption,
                         "score": score_caption(drawn, caption)})  # fmt: skip
    attributes = list(rows[0]["score"])
    means = {a: sum(r["score"][a] for r in rows) / n for a in attributes}
    return {"model": loaded.name, "n": n, "prompt": CAPTION_PROMPT, "accuracy": means, "rows": rows}


# --- CHAIR on the synthetic scenes, where every object is known -------------------------------------

KIND = "captions"


def mentioned_shapes(caption: str) -> set[str]:
    """The scene shapes a caption names (singular or plural, whole words)."""
    import re

    from sinklens.data.scenes import SHAPES

    text = caption.lower()
    return {shape for shape in SHAPES if re.search(rf"\b{shape}(e?s)?\b", text)}


def chair_row(item: Item, caption: str) -> dict[str, Any]:
    """One caption's CHAIR counts: the shapes it names, those absent from the scene; `score` 1 without any absent."""
    drawn = scene("heldout", item.record["scene"])
    present = {obj.shape for obj in drawn.objects}
    named = mentioned_shapes(caption)
    absent = sorted(named - present)
    return {"id": item.id, "scene": drawn.index, "caption": caption, "answer": caption, "objects": sorted(present),
            "mentioned": sorted(named), "hallucinated": absent, "score": int(not absent)}  # fmt: skip


def chair_metrics(rows: Any) -> dict[str, Any]:
    """CHAIR_s (captions naming an absent object) and CHAIR_i (named objects that are absent), Rohrbach et al. 2018."""
    rows = list(rows)
    named = sum(len(r["mentioned"]) for r in rows)
    return {
        "chair_s": sum(bool(r["hallucinated"]) for r in rows) / len(rows) if rows else float("nan"),
        "chair_i": sum(len(r["hallucinated"]) for r in rows) / named if named else 0.0,
        "mentioned_per_caption": named / len(rows) if rows else float("nan"),
        "accuracy": sum(r["score"] for r in rows) / len(rows) if rows else float("nan"),
        "n": len(rows),
    }


def chair_benchmark(n: int = 100) -> Any:
    """Captions of held-out scenes 0..n-1, scored by CHAIR (the objects of a synthetic scene are known)."""
    from sinklens.eval.loop import Benchmark

    def asking(loaded: LoadedModel, options: Options) -> dict[str, Any]:
        return {"max_new_tokens": options.max_new_tokens, "prompt": CAPTION_PROMPT}

    return Benchmark(kind=KIND, name="CHAIR captions", items=tuple(caption_items(n)),
                     source={"captions": "heldout", "n": n}, asking=asking, score=chair_row,
                     metrics=chair_metrics)  # fmt: skip
