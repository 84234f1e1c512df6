"""Where the image tokens sit in a prompt, and the patch grids they come from.

Every architecture marks the positions its vision features fill with one
placeholder token id (the *image region*). How those positions map to the
image differs, and the catalogue's `grid` rule names the mapping:

| rule | architecture | one image is |
|---|---|---|
| `square` | LLaVA-1.5 | one `side x side` grid (`vision_config.image_size // patch_size`) |
| `anyres` | LLaVA-NeXT | a `side x side` base tile of the whole image, then the tiles' patches as one unpadded `rows x cols` grid with an image-newline token after each row |
| `anyres_max` | LLaVA-OneVision | alone in its prompt: as `anyres` (no class token), the tile grid bilinearly downsampled past `anyres_max_N`; among several images: the base tile and one newline |
| `pooled` | Gemma 3 | one `s x s` grid of pooled patches (`s` = sqrt(`mm_tokens_per_image`)) |
| `merged` | Qwen2-VL, Qwen2.5-VL, Qwen3-VL | one `(h / m) x (w / m)` grid per temporal patch, from `image_grid_thw` (`m` = `spatial_merge_size`) |
| `tiles` | InternVL | `n` tiles of `s x s` tokens (`s` = patches per side x `downsample_ratio`), the last a thumbnail when `n > 1` |
| `split` | SmolVLM (Idefics3 layout) | `rows x cols` tiles of `s x s` tokens, each after a `<row_r_col_c>` marker, then the global view after `<global-img>` (`s` = patches per side / `scale_factor`) |
| `breaks` | Mistral 3 (Pixtral) | `rows x cols` tokens from `image_sizes`, each row a run of its own closed by `[IMG_BREAK]` (the last by `[IMG_END]`) |

The visual tokens `I_vis` (`ImageSpans.mask`) are the placeholders without the
image-newline tokens: those hold one learned vector, not a part of the image,
so LLaVA-NeXT's image is several spans (SPEC, notation). An image's *extent*
(`ImageSpans.region`) runs from its first to its last placeholder: where one
image is several runs of placeholders (SmolVLM, Mistral 3), the text tokens
between them (tile markers, row breaks: `ImageGrid.markup`) are in the extent
but are neither visual tokens nor text queries. Images are matched to prompts
in order, as processors flatten them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sinklens.errors import ImageSpanError
from sinklens.ops._typing import Bool, Int


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


@dataclass(frozen=True)
class Tile:
    """One grid of an image: `positions[row, col]` is the prompt position of that patch token."""

    name: str
    positions: Int[Tensor, "row col"]

    def gather(self, values: Tensor) -> Tensor:
        """Per-position `values` of one prompt (`[pos, ...]`) arranged on this grid (`[row, col, ...]`)."""
        return values[self.positions.to(values.device)]


@dataclass(frozen=True)
class ImageGrid:
    """One image of one prompt: its tiles, the placeholder positions that are no patch (image newlines), and the
    text tokens between its runs of placeholders (`markup`: tile markers, row breaks)."""

    prompt: int
    index: int  # the image's number within its prompt
    start: int  # first placeholder position of the image
    stop: int  # one past its last placeholder position
    tiles: tuple[Tile, ...]
    newlines: tuple[int, ...] = ()
    markup: tuple[int, ...] = ()


@dataclass(frozen=True)
class ImageSpans:
    """Image-token positions of a batch of prompts (several images and spans per prompt allowed).

    `mask` marks the visual tokens (I_vis), `region` the images' extents (visual
    tokens, image newlines and the markup between an image's runs; the mask when
    not given), `images` the grid of every image, in order (empty when built from
    masks alone).
    """

    mask: Bool[Tensor, "batch pos"]
    region: Bool[Tensor, "batch pos"] | None = None
    images: tuple[ImageGrid, ...] = field(default=())

    @property
    def text_start(self) -> Int[Tensor, " batch"]:
        """Per prompt, the first position after its last image's last placeholder (newline tokens included)."""
        region = self.mask if self.region is None else self.region
        positions = torch.arange(region.shape[-1], device=region.device)
        return torch.where(region, positions, -1).amax(-1) + 1

    def images_of(self, prompt: int) -> list[ImageGrid]:
        """The grids of one prompt's images, in order."""
        return [image for image in self.images if image.prompt == prompt]


def _refuse_prompts_without_images(region: Tensor, image_token_id: int) -> None:
    empty = (~region.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ImageSpanError(
            f"prompt(s) {empty} of the batch have no image token (id {image_token_id}). "
            "Put the image placeholder in the prompt: build inputs with "
            "LoadedModel.prepare(image, question) or the processor's chat template."
        )


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


def _runs(row: Tensor) -> list[tuple[int, int]]:
    padded = torch.nn.functional.pad(row.to(torch.int8), (1, 1))
    edges = padded.diff()
    starts = (edges == 1).nonzero().flatten().tolist()
    stops = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, stops, strict=True))


class _Cursor:
    """Walks one prompt's runs of placeholders, handing out the first position of each block of tokens laid out."""

    def __init__(self, prompt: int, runs: list[tuple[int, int]]) -> None:
        self.prompt, self.runs, self.run = prompt, runs, 0
        self.position = runs[0][0]

    @property
    def exhausted(self) -> bool:
        return self.run == len(self.runs) - 1 and self.position == self.runs[-1][1]

    def take(self, n: int, *, index: int, may_advance: bool, fresh: bool) -> int:
        """The first of `n` placeholders at the cursor, after moving to the next run where that is allowed."""
        start, stop = self.runs[self.run]
        if self.position == stop and may_advance and self.run + 1 < len(self.runs):
            self.run += 1
            (start, stop), self.position = self.runs[self.run], self.runs[self.run][0]
        if (fresh and self.position != start) or self.position + n > stop:
            raise ImageSpanError(
                f"image {index} of prompt {self.prompt} needs {n} image tokens from position {self.position}"
                f"{' at the start of a run' if fresh else ''}, but the run of image tokens there is {start}..{stop}. "
                "Pass the processor's output unchanged."
            )
        first, self.position = self.position, self.position + n
        return first


def _lay_out(cursor: _Cursor, index: int, shape: tuple[TileShape, ...]) -> tuple[ImageGrid, list[int]]:
    tiles, newlines, start = [], [], None
    for k, tile in enumerate(shape):
        width = tile.cols + tile.newline
        may_advance = k == 0 or tile.own_run or tile.row_runs  # a tile continues its image's run unless it says not
        if tile.row_runs:
            firsts = [cursor.take(width, index=index, may_advance=True, fresh=True) for _ in range(tile.rows)]
        else:
            first = cursor.take(tile.n_tokens, index=index, may_advance=may_advance, fresh=tile.own_run)
            firsts = [first + row * width for row in range(tile.rows)]
        start = firsts[0] if start is None else start
        rows = torch.tensor(firsts, dtype=torch.long)
        if tile.cols:  # a newline alone (an image's closing token) is no grid
            tiles.append(Tile(tile.name, rows[:, None] + torch.arange(tile.cols)[None, :]))
        if tile.newline:
            newlines += (rows + tile.cols).tolist()
    grid = ImageGrid(cursor.prompt, index, start, cursor.position, tuple(tiles), tuple(newlines))
    return grid, newlines


def image_spans(
    rule: str, config: Any, inputs: Mapping[str, Tensor], image_token_id: int, token_text: Mapping[int, str] = {},
) -> ImageSpans:  # fmt: skip
    """The image spans and grids of a batch of model inputs, after checking them against the images given.

    `token_text` maps the ids of the tokenizer's added tokens to their text: the
    grid rules that read the markers before each run (SmolVLM) need it.
    """
    input_ids = inputs["input_ids"]
    placeholders = input_ids == image_token_id
    _refuse_prompts_without_images(placeholders, image_token_id)
    runs = [_runs(row) for row in placeholders]
    openers = [[token_text.get(int(ids[start - 1]), "") if start else "" for start, _ in row]
               for ids, row in zip(input_ids, runs, strict=True)]  # fmt: skip
    shapes = GRID_RULES[rule](config, inputs, [
        [Run(stop - start, opener) for (start, stop), opener in zip(row, row_openers, strict=True)]
        for row, row_openers in zip(runs, openers, strict=True)
    ])  # fmt: skip
    n_found, n_expected = int(placeholders.sum()), sum(tile.n_tokens for shape in shapes for tile in shape)
    if n_found != n_expected:
        per_image = sorted({sum(tile.n_tokens for tile in shape) for shape in shapes})
        raise ImageSpanError(
            f"found {n_found} image tokens (id {image_token_id}) but the {len(shapes)} image(s) give "
            f"{n_expected} features ({', '.join(map(str, per_image))} each). Pass the processor's output "
            f"unchanged, or put one image placeholder per image in the prompt and let the processor expand it."
        )
    mask, region = placeholders.clone(), placeholders.clone()
    images: list[ImageGrid] = []
    queue = iter(shapes)
    for prompt, row_runs in enumerate(runs):
        cursor, index = _Cursor(prompt, row_runs), 0
        while not cursor.exhausted:  # a run may hold several adjacent images, an image several runs
            shape = next(queue, None)
            if shape is None:
                raise ImageSpanError(
                    f"prompt {prompt} has image tokens from position {cursor.position} that no image given fills. "
                    "Pass the processor's output unchanged."
                )
            grid, newlines = _lay_out(cursor, index, shape)
            mask[prompt, newlines] = False
            markup = (~placeholders[prompt, grid.start : grid.stop]).nonzero().flatten() + grid.start
            region[prompt, grid.start : grid.stop] = True
            images.append(dataclasses.replace(grid, markup=tuple(markup.tolist())))
            index += 1
    return ImageSpans(mask=mask, region=region, images=tuple(images))


def square_grid(config: object) -> tuple[int, int]:
    """(rows, cols) of the patch grid: image_size // patch_size on each side."""
    side = _side(config.vision_config)
    return side, side
