"""Grid rules: the shape of every image of a batch, from the config and the processor's inputs.

A rule (the catalogue's `grid`; the table of rules is in `sinklens.models.spans`' docstring) gives, per image
in processor order, its tiles as `TileShape`s; `spans.image_spans` lays them out on
the runs of placeholder tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from sinklens.errors import ImageSpanError


@dataclass(frozen=True)
class TileShape:
    """A grid of image tokens in one image: `rows x cols`, optionally a newline token after each row.

    A tile follows the previous one in the same run of placeholders, unless
    `own_run` (it starts a run of its own: text markers stand before it) or
    `row_runs` (each of its rows is a run of its own: a break token after each).
    """

    name: str
    rows: int
    cols: int
    newline: bool = False
    own_run: bool = False
    row_runs: bool = False

    @property
    def n_tokens(self) -> int:
        return self.rows * (self.cols + self.newline)



# --- grid rules: the shape of every image of the batch, in processor order ------------------------------

class Run(NamedTuple):
    """A run of consecutive placeholders: its length, and the text of the added token just before it ("" if none)."""

    length: int
    opener: str = ""


# (config, inputs, each prompt's runs) -> the tiles of every image of the batch, in processor order
GridRule = Callable[[Any, Mapping[str, Tensor], list[list[Run]]], list[tuple[TileShape, ...]]]


def _side(vision_config: Any) -> int:
    size, patch = vision_config.image_size, vision_config.patch_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return size // patch


def _pixels(inputs: Mapping[str, Tensor]) -> Tensor:
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        raise ImageSpanError("inputs have image tokens but no pixel_values; pass the processor's output unchanged.")
    return pixel_values


def _required(inputs: Mapping[str, Tensor], key: str, architecture: str) -> Tensor:
    value = inputs.get(key)
    if value is None:
        raise ImageSpanError(
            f"{architecture} inputs need {key!r} (the processor returns it); pass the processor's output unchanged."
        )
    return value


def square_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """LLaVA-1.5: one `side x side` grid per image, after the class token under the "full" strategy."""
    side = _side(config.vision_config)
    grid = (TileShape("image", side, side),)
    if config.vision_feature_select_strategy == "full":
        grid = (TileShape("class token", 1, 1), *grid)
    return [grid] * _pixels(inputs).shape[0]


def anyres_unpadded(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]], tile: int, side: int) -> tuple[int, int]:
    """LLaVA-NeXT: (rows, cols) of an image's tile patches once the padding the processor added is cut off."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = (int(v) for v in image_size)
    best_height, best_width = select_best_resolution((height, width), [list(p) for p in pinpoints])
    rows, cols = best_height // tile * side, best_width // tile * side
    # as transformers' unpad_image: the aspect ratio decides which side was padded
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        rows -= 2 * ((rows - new_rows) // 2)
    else:
        new_cols = int(round(width * (rows / height), 7))
        cols -= 2 * ((cols - new_cols) // 2)
    return rows, cols


def anyres_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """LLaVA-NeXT: a base tile of the whole image, then the unpadded tile grid with a newline after each row."""
    if config.vision_feature_select_strategy != "default":
        raise ImageSpanError(
            f"vision_feature_select_strategy {config.vision_feature_select_strategy!r}: sinklens lays out "
            "LLaVA-NeXT grids for the 'default' strategy (class token dropped) only."
        )
    _pixels(inputs)
    sizes = _required(inputs, "image_sizes", "LLaVA-NeXT")
    side = _side(config.vision_config)
    tile = config.vision_config.image_size
    shapes = []
    for size in sizes.tolist():
        rows, cols = anyres_unpadded(size, config.image_grid_pinpoints, tile, side)
        shapes.append((TileShape("base", side, side), TileShape("tiles", rows, cols, newline=True)))
    return shapes


def anyres_max_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """LLaVA-OneVision: an image alone in its prompt as LLaVA-NeXT's (no class token), its tile grid bilinearly
    downsampled past `anyres_max_N`'s N tiles' worth of patches; an image among several: its base grid and a newline."""
    _pixels(inputs)
    sizes = _required(inputs, "image_sizes", "LLaVA-OneVision")
    per_prompt = _required(inputs, "batch_num_images", "LLaVA-OneVision").tolist()
    side = _side(config.vision_config)
    max_tiles = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
    shapes = []
    alone = [count == 1 for count in per_prompt for _ in range(count)]
    for size, single in zip(sizes.tolist(), alone, strict=True):
        if not single:
            shapes.append((TileShape("base", side, side), TileShape("newline", 1, 0, newline=True)))
            continue
        rows, cols = anyres_unpadded(size, config.image_grid_pinpoints, config.vision_config.image_size, side)
        ratio = math.sqrt(rows * cols / (max_tiles * side * side))
        if ratio > 1.1:  # as transformers' pack_image_features: interpolate to int(size // ratio)
            rows, cols = int(rows // ratio), int(cols // ratio)
        shapes.append((TileShape("base", side, side), TileShape("tiles", rows, cols, newline=True)))
    return shapes


def pooled_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """Gemma 3: `mm_tokens_per_image` tokens per image, a square grid of average-pooled patches."""
    side = math.isqrt(config.mm_tokens_per_image)
    return [(TileShape("image", side, side),)] * _pixels(inputs).shape[0]


def merged_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """Qwen2-VL: `(h / m) x (w / m)` merged tokens per temporal patch, from `image_grid_thw`."""
    _pixels(inputs)
    grid_thw = _required(inputs, "image_grid_thw", "Qwen2-VL")
    merge = config.vision_config.spatial_merge_size
    shapes = []
    for t, h, w in grid_thw.tolist():
        if t == 1:
            shapes.append((TileShape("image", h // merge, w // merge),))
        else:
            shapes.append(tuple(TileShape(f"frame {k}", h // merge, w // merge) for k in range(t)))
    return shapes


def tiles_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """InternVL: each run of placeholders is one image of `n` tiles of `s x s` tokens, the last a thumbnail if n > 1.

    The tile count of an image is not in the model inputs (the processor drops
    it), so it is read off the run length; the tiles' arrangement on the canvas
    (rows x cols of tiles) is not recoverable and each tile is its own grid.
    """
    n_tiles_given = _pixels(inputs).shape[0]
    side = int(_side(config.vision_config) * config.downsample_ratio)
    per_tile = side * side
    shapes = []
    for prompt, row in enumerate(runs):
        for length, _ in row:
            if length % per_tile:
                raise ImageSpanError(
                    f"prompt {prompt} has a run of {length} image tokens (id {config.image_token_id}), not a "
                    f"whole number of {per_tile}-token tiles. Pass the processor's output unchanged."
                )
            n = length // per_tile
            names = ["image"] if n == 1 else [f"tile {k}" for k in range(n - 1)] + ["thumbnail"]
            shapes.append(tuple(TileShape(name, side, side) for name in names))
    n_tiles = sum(len(shape) for shape in shapes)
    if n_tiles != n_tiles_given:
        raise ImageSpanError(
            f"the image tokens make {n_tiles} tiles of {per_tile} tokens but pixel_values holds {n_tiles_given}. "
            "Pass the processor's output unchanged."
        )
    return shapes


SMOLVLM_GLOBAL = "<global-img>"  # SmolVLM's processor writes these markers literally (Idefics3 chat format)
_SMOLVLM_TILE = re.compile(r"<row_(\d+)_col_(\d+)>")


def split_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """SmolVLM: each run is one tile of `s x s` tokens; runs after `<row_r_col_c>` are an image's tiles (in row-major
    order), the run after `<global-img>` its global view and its last run (an image too small to split is that
    alone)."""
    _pixels(inputs)
    side = _side(config.vision_config) // config.scale_factor
    shapes = []
    for prompt, row in enumerate(runs):
        tiles: list[tuple[int, int]] = []
        for length, opener in row:
            if length != side * side:
                raise ImageSpanError(
                    f"prompt {prompt} has a run of {length} image tokens where SmolVLM's tiles have {side * side}. "
                    "Pass the processor's output unchanged."
                )
            marker = _SMOLVLM_TILE.fullmatch(opener)
            if marker:
                tiles.append((int(marker[1]), int(marker[2])))
                continue
            if opener != SMOLVLM_GLOBAL:
                raise ImageSpanError(
                    f"prompt {prompt} has a run of image tokens after {opener or 'a plain token'!r}, not after a "
                    f"<row_r_col_c> marker or {SMOLVLM_GLOBAL}: the prompt was not made by SmolVLM's processor. "
                    "Pass the processor's output unchanged."
                )
            shapes.append(_split_image(prompt, tiles, side))
            tiles = []
        if tiles:
            raise ImageSpanError(f"prompt {prompt} ends with image tiles but no {SMOLVLM_GLOBAL} view after them.")
    return shapes


def _split_image(prompt: int, tiles: list[tuple[int, int]], side: int) -> tuple[TileShape, ...]:
    rows, cols = max((r for r, _ in tiles), default=0), max((c for _, c in tiles), default=0)
    if tiles != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]:
        raise ImageSpanError(
            f"prompt {prompt}: the tile markers {tiles} are not a whole {rows} x {cols} grid in row-major order."
        )
    shape = [TileShape(f"row {r} col {c}", side, side, own_run=True) for r, c in tiles]
    return (*shape, TileShape("global", side, side, own_run=True))


def breaks_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[Run]]) -> list[tuple[TileShape, ...]]:
    """Mistral 3 (Pixtral): `h / (p m) x w / (p m)` tokens per image from `image_sizes`, one run per row."""
    _pixels(inputs)
    sizes = _required(inputs, "image_sizes", "Mistral 3")
    step = _side_patch(config.vision_config) * config.spatial_merge_size
    return [(TileShape("image", height // step, width // step, row_runs=True),) for height, width in sizes.tolist()]


def _side_patch(vision_config: Any) -> int:
    patch = vision_config.patch_size
    return patch[0] if isinstance(patch, (list, tuple)) else patch


GRID_RULES: dict[str, GridRule] = {
    "square": square_shapes,
    "anyres": anyres_shapes,
    "anyres_max": anyres_max_shapes,
    "pooled": pooled_shapes,
    "merged": merged_shapes,
    "tiles": tiles_shapes,
    "split": split_shapes,
    "breaks": breaks_shapes,
}


def square_grid(config: object) -> tuple[int, int]:
    """(rows, cols) of the patch grid: image_size // patch_size on each side."""
    side = _side(config.vision_config)
    return side, side
