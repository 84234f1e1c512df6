"""Synthetic scenes: a background colour and 1-3 shapes, with captions and questions.

Every scene is a pure function of (split, index): `scene("train", 7)` is the same
picture and the same text on every machine. Splits draw from disjoint seeds.

Shapes are drawn with uneven frequencies (so POPE's "popular" negatives mean
something) and in co-occurring pairs (so its "adversarial" negatives do): with
probability `PARTNER_RATE` the next object is the partner of one already there.
Objects sit in distinct cells of a 3 x 3 layout, so positions have names.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from sinklens.errors import ParameterError

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
SHAPE_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 1)  # "circle" is the most common object, "heart" the rarest
PARTNERS = {
    "circle": "square", "square": "circle", "triangle": "star", "star": "triangle",
    "cross": "diamond", "diamond": "cross", "hexagon": "heart", "heart": "hexagon",
}  # fmt: skip
PARTNER_RATE = 0.5
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30),
}  # fmt: skip
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128), "beige": (225, 210, 175)}
SIZES = {"small": 0.11, "large": 0.19}  # radius as a fraction of the side
CELLS = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)
SPLIT_SEEDS = {"train": 0, "heldout": 1}
SIDE = 336  # drawn size; processors resize


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, col) in the 3 x 3 layout

    @property
    def position(self) -> str:
        return CELLS[self.cell[0]][self.cell[1]]

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    background: str
    objects: tuple[SceneObject, ...]

    @property
    def shapes(self) -> frozenset[str]:
        return frozenset(obj.shape for obj in self.objects)

    def image(self, side: int = SIDE) -> Image.Image:
        return draw(self, side)

    def caption(self) -> str:
        parts = [f"{obj.phrase} at the {obj.position}" if obj.position != "centre" else f"{obj.phrase} in the centre"
                 for obj in self.objects]  # fmt: skip
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed[0].upper()}{listed[1:]}, on a {self.background} background."


def _rng(split: str, index: int) -> random.Random:
    if split not in SPLIT_SEEDS:
        raise ParameterError(f"unknown split {split!r}; use one of {sorted(SPLIT_SEEDS)}")
    if index < 0:
        raise ParameterError(f"scene index must be >= 0 (draw-scene --index), got {index}")
    return random.Random(f"sinklens-scene-{SPLIT_SEEDS[split]}-{index}")


def scene(split: str, index: int) -> Scene:
    """The scene `index` of `split` ("train" or "heldout")."""
    rng = _rng(split, index)
    background = rng.choice(list(BACKGROUNDS))
    n_objects = rng.choice((1, 2, 2, 3, 3))
    shapes: list[str] = []
    while len(shapes) < n_objects:
        if shapes and rng.random() < PARTNER_RATE and PARTNERS[shapes[-1]] not in shapes:
            shapes.append(PARTNERS[shapes[-1]])
            continue
        shape = rng.choices(SHAPES, weights=SHAPE_WEIGHTS)[0]
        if shape not in shapes:
            shapes.append(shape)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], n_objects)
    colours = [c for c in COLOURS if not (background == "white" and c == "yellow")]
    objects = tuple(
        SceneObject(shape, rng.choice(colours), rng.choice(list(SIZES)), cell) for shape, cell in zip(shapes, cells)
    )
    return Scene(split, index, background, objects)


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(offset + 2 * math.pi * k / n), cy + radius * math.sin(offset + 2 * math.pi * k / n))
                for k in range(n)]  # fmt: skip

    if kind == "triangle":
        return ring(3, r)
    if kind == "diamond":
        return ring(4, r)
    if kind == "hexagon":
        return ring(6, r, 0.0)
    if kind == "star":
        outer, inner = ring(5, r), ring(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "cross":
        a, b = r, r * 0.35
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx + b, cy + b),
                (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]  # fmt: skip
    if kind == "heart":
        points = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((cx + r * x / 17, cy - r * (y + 2) / 17))
        return points
    raise ParameterError(f"no outline for the shape {kind!r}; the shapes are {', '.join(SHAPES)}")


def draw(scene: Scene, side: int = SIDE) -> Image.Image:
    """The scene as an RGB image of `side` x `side` pixels."""
    return _paint(scene, side, Image.new("RGB", (side, side), BACKGROUNDS[scene.background]), None)


def object_mask(scene: Scene, side: int = SIDE) -> Image.Image:
    """A grey-scale image of the same layout: 255 where an object is, 0 on the background."""
    return _paint(scene, side, Image.new("L", (side, side), 0), 255)


def _paint(scene: Scene, side: int, image: Image.Image, fill: int | None) -> Image.Image:
    pen = ImageDraw.Draw(image)
    cell = side / 3
    for obj in scene.objects:
        cx, cy = (obj.cell[1] + 0.5) * cell, (obj.cell[0] + 0.5) * cell
        r = SIZES[obj.size] * side
        colour = COLOURS[obj.colour] if fill is None else fill
        if obj.shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif obj.shape == "square":
            s = r * 0.85
            pen.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
        else:
            pen.polygon(_polygon(obj.shape, cx, cy, r), fill=colour)
    return image
