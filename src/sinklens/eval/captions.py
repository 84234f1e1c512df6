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
