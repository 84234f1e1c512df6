"""A POPE-style object-probing benchmark over held-out scenes.

As POPE does (Li et al., 2023), every scene gives one "yes" question per object
in it and as many "no" questions about objects it does not hold, the negatives
drawn one of three ways:

- random: uniformly among the absent shapes;
- popular: the absent shapes that are most frequent in the pool of scenes;
- adversarial: the absent shapes that co-occur most often with the present ones.

Frequencies and co-occurrences are counted over a fixed pool of `POOL` held-out
scenes, so an example's question never depends on how many examples are asked for.
Questions alternate yes/no within a scene, so any prefix is (nearly) balanced.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from functools import cache
from itertools import permutations
from typing import Literal, get_args

from sinklens.data.questions import presence
from sinklens.data.scenes import SHAPES, scene
from sinklens.errors import ParameterError

# how POPE draws its negatives (see above)
Split = Literal["random", "popular", "adversarial"]
SPLITS: tuple[str, ...] = get_args(Split)
POOL = 2000


@dataclass(frozen=True)
class PopeExample:
    id: str
    split: str
    scene_index: int
    shape: str
    label: str  # "yes" or "no"

    @property
    def question(self) -> str:
        return presence(self.shape, self.label == "yes").question


@cache
def _statistics() -> tuple[Counter[str], Counter[tuple[str, str]]]:
    frequency: Counter[str] = Counter()
    together: Counter[tuple[str, str]] = Counter()
    for index in range(POOL):
        shapes = scene("heldout", index).shapes
        frequency.update(shapes)
        together.update(permutations(shapes, 2))
    return frequency, together


def negatives(split: Split, scene_index: int, k: int) -> list[str]:
    """The `k` absent shapes POPE's `split` strategy asks about for one held-out scene."""
    present = scene("heldout", scene_index).shapes
    absent = [s for s in SHAPES if s not in present]
    frequency, together = _statistics()
    if split == "random":
        return random.Random(f"pope-{scene_index}").sample(absent, k)
    if split == "popular":
        return sorted(absent, key=lambda s: (-frequency[s], SHAPES.index(s)))[:k]
    if split == "adversarial":
        def co_occurrence(s: str) -> int:
            return sum(together[(p, s)] for p in present)

        return sorted(absent, key=lambda s: (-co_occurrence(s), -frequency[s], SHAPES.index(s)))[:k]
    raise ParameterError(f"unknown POPE split {split!r}; use one of {', '.join(SPLITS)}")


def pope(split: Split, n: int) -> list[PopeExample]:
    """The first `n` examples of a POPE split, scene by scene, alternating yes and no."""
    if split not in SPLITS:
        raise ParameterError(f"unknown POPE split {split!r}; use one of {', '.join(SPLITS)}")
    if n < 1:
        raise ParameterError(f"n must be >= 1, got {n}")
    examples: list[PopeExample] = []
    index = 0
    while len(examples) < n:
        objects = [obj.shape for obj in scene("heldout", index).objects]
        for k, (yes, no) in enumerate(zip(objects, negatives(split, index, len(objects)))):
            examples.append(PopeExample(f"{split}-{index}-{k}y", split, index, yes, "yes"))
            examples.append(PopeExample(f"{split}-{index}-{k}n", split, index, no, "no"))
        index += 1
    return examples[:n]


def pope_metrics(labels: list[str], predictions: list[str]) -> dict[str, float | int]:
    """Accuracy, precision, recall and F1 of "yes", and the share of "yes" answers (POPE's yes-ratio)."""
    if len(labels) != len(predictions):
        raise ParameterError(f"{len(labels)} labels but {len(predictions)} predictions: give one prediction per label")
    n = len(labels)
    tp = sum(l == "yes" and p == "yes" for l, p in zip(labels, predictions))
    fp = sum(l == "no" and p == "yes" for l, p in zip(labels, predictions))
    fn = sum(l == "yes" and p != "yes" for l, p in zip(labels, predictions))
    correct = sum(l == p for l, p in zip(labels, predictions))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    yes = sum(p == "yes" for p in predictions)
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": yes / n if n else 0.0,
        "n": n,
    }


def yes_or_no(answer: str) -> str:
    """POPE's reading of a free answer: "no" if it says no or not, else "yes"."""
    words = answer.lower().replace(".", " ").replace(",", " ").split()
    return "no" if any(w in ("no", "not") for w in words) or not words else "yes"
