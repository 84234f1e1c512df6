"""Caption accuracy per attribute on held-out scenes (shape, colour, size, position, count, background)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sinklens.data.questions import CAPTION_PROMPT, score_caption
from sinklens.data.scenes import scene
from sinklens.run import Intervention, Runner
from sinklens.models.loading import LoadedModel


def evaluate_captions(
    loaded: LoadedModel,
    runner: Runner,
    *,
    n: int,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 48,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy captions of held-out scenes 0..n-1, each scored per attribute; means and every caption."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows = []
    for index in tqdm(range(n), desc="captions", disable=not progress):
        s = scene("heldout", index)
        inputs = loaded.prepare(s.image(), CAPTION_PROMPT)
        caption = runner.generate(inputs, interventions, max_new_tokens=max_new_tokens).texts[0]
        rows.append({"scene": index, "truth": s.caption(), "caption": caption, "score": score_caption(s, caption)})
    attributes = list(rows[0]["score"])
    means = {a: sum(r["score"][a] for r in rows) / n for a in attributes}
    return {"model": loaded.name, "n": n, "prompt": CAPTION_PROMPT, "accuracy": means, "rows": rows}
