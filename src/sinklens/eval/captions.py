"""Caption accuracy per attribute on held-out scenes (shape, colour, size, position, count, background)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sinklens.data.questions import CAPTION_PROMPT, score_caption
from sinklens.data.scenes import scene
from sinklens.run import Intervention, Runner
from sinklens.models.loaded import LoadedModel


def evaluate_captions(
    loaded: LoadedModel,
    runner: Runner,
    *,
    n: int,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 48,
    progress: bool = True,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Greedy captions of held-out scenes 0..n-1 (`batch_size` per pass), each scored per attribute; means and every caption."""
    from tqdm.auto import tqdm

    from sinklens.eval.pope import check_batch_size

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_batch_size(batch_size)
    rows = []
    with tqdm(total=n, desc="captions", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            scenes = [scene("heldout", index) for index in range(start, min(n, start + batch_size))]
            inputs = loaded.prepare_batch([(s.image(), CAPTION_PROMPT) for s in scenes])
            captions = runner.generate(inputs, interventions, max_new_tokens=max_new_tokens).texts
            for s, caption in zip(scenes, captions):
                rows.append({"scene": s.index, "truth": s.caption(), "caption": caption, "score": score_caption(s, caption)})
            bar.update(len(scenes))
    attributes = list(rows[0]["score"])
    means = {a: sum(r["score"][a] for r in rows) / n for a in attributes}
    return {"model": loaded.name, "n": n, "prompt": CAPTION_PROMPT, "accuracy": means, "rows": rows}
