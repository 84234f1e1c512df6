"""Questions and answers about a scene, and a parser that scores captions per attribute."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sinklens.data.scenes import BACKGROUNDS, CELLS, COLOURS, PARTNERS, SHAPE_WEIGHTS, SHAPES, SIZES, Scene
from sinklens.errors import ParameterError

YES_NO = " Answer yes or no."
CAPTION_PROMPT = "Describe the image."
NUMBERS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def presence(shape: str, present: bool) -> QA:
    return QA("presence", f"Is there a {shape} in the image?{YES_NO}", "Yes" if present else "No")


def _where(position: str) -> str:
    return "In the centre." if position == "centre" else f"At the {position}."


def questions(scene: Scene) -> list[QA]:
    """Every non-presence question with a unique answer for this scene."""
    qas = [
        QA("caption", CAPTION_PROMPT, scene.caption()),
        QA("count", "How many objects are there?", f"{NUMBERS[len(scene.objects)].capitalize()}."),
        QA("background", "What colour is the background?", f"{scene.background.capitalize()}."),
    ]
    for obj in scene.objects:
        qas += [
            QA("colour", f"What colour is the {obj.shape}?", f"{obj.colour.capitalize()}."),
            QA("size", f"Is the {obj.shape} small or large?", f"{obj.size.capitalize()}."),
            QA("position", f"Where is the {obj.shape}?", _where(obj.position)),
        ]
    return qas


def training_turns(scene: Scene, rng: random.Random, n_turns: int = 3, presence_share: float = 0.5) -> list[QA]:
    """`n_turns` questions for one training conversation: a `presence_share` of them presence (balanced), the rest mixed.

    An absent shape is drawn the three ways POPE draws negatives, in equal shares:
    uniformly, by frequency, or as the partner of a shape that is there (when absent).
    """
    if not 0.0 <= presence_share <= 1.0:
        raise ParameterError(f"presence_share must be in [0, 1], got {presence_share}")
    pool = questions(scene)
    absent = [s for s in SHAPES if s not in scene.shapes]
    partners = [PARTNERS[s] for s in sorted(scene.shapes) if PARTNERS[s] in absent]
    turns = []
    for _ in range(n_turns):
        if rng.random() < presence_share:
            if rng.random() < 0.5:
                turns.append(presence(rng.choice(sorted(scene.shapes)), True))
                continue
            how = rng.randrange(3)
            if how == 2 and partners:
                shape = rng.choice(partners)
            elif how == 1:
                shape = rng.choices(absent, weights=[SHAPE_WEIGHTS[SHAPES.index(s)] for s in absent])[0]
            else:
                shape = rng.choice(absent)
            turns.append(presence(shape, False))
        else:
            turns.append(rng.choice(pool))
    return turns


# --- scoring captions -------------------------------------------------------------------------

_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_SIZE = "|".join(SIZES)
_POSITION = "|".join(sorted((p for row in CELLS for p in row), key=len, reverse=True))
_OBJECT = re.compile(
    rf"(?:(?P<size>{_SIZE})\s+)?(?:(?P<colour>{_COLOUR})\s+)?(?P<shape>{_SHAPE})"
    rf"(?:\s+(?:at the|in the)\s+(?P<position>{_POSITION}))?"
)
_BACKGROUND = re.compile(rf"(?P<background>{'|'.join(BACKGROUNDS)}) background")


def parse_caption(text: str) -> tuple[dict[str, dict[str, str | None]], str | None]:
    """({shape: {colour, size, position}}, background) as a caption names them."""
    text = text.lower()
    objects = {m["shape"]: {"colour": m["colour"], "size": m["size"], "position": m["position"]}
               for m in _OBJECT.finditer(text)}  # fmt: skip
    background = _BACKGROUND.search(text)
    return objects, background["background"] if background else None


def score_caption(scene: Scene, text: str) -> dict[str, float]:
    """Per-attribute accuracy of one caption: shapes found, and for each found shape its attributes."""
    found, background = parse_caption(text)
    truth = {obj.shape: obj for obj in scene.objects}
    hits = [shape for shape in truth if shape in found]
    score = {
        "shape_recall": len(hits) / len(truth),
        "shape_precision": (sum(s in truth for s in found) / len(found)) if found else 0.0,
        "count": float(len(found) == len(truth)),
        "background": float(background == scene.background),
    }
    for attribute in ("colour", "size", "position"):
        correct = [found[s][attribute] == getattr(truth[s], attribute) for s in hits]
        score[attribute] = sum(correct) / len(truth)  # a missed shape counts as wrong
    return score
