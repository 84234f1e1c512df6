"""Where the image tokens sit in a prompt, and the patch grids they come from.

Every architecture marks the positions its vision features fill with one
placeholder token id (the *image region*). How those positions map to the
image differs, and the catalogue's `grid` rule names the mapping:

| rule | architecture | one image is |
|---|---|---|
| `square` | LLaVA-1.5 | one `side x side` grid (`vision_config.image_size // patch_size`) |
| `anyres` | LLaVA-NeXT | a `side x side` base tile of the whole image, then the tiles' patches as one unpadded `rows x cols` grid with an image-newline token after each row |
| `merged` | Qwen2-VL, Qwen2.5-VL | one `(h / m) x (w / m)` grid per temporal patch, from `image_grid_thw` (`m` = `spatial_merge_size`) |
| `tiles` | InternVL | `n` tiles of `s x s` tokens (`s` = patches per side x `downsample_ratio`), the last a thumbnail when `n > 1` |

The visual tokens `I_vis` (`ImageSpans.mask`) are the region without the
image-newline tokens: those hold one learned vector, not a part of the image,
so LLaVA-NeXT's image is several spans (SPEC, notation). Images are matched to
prompts in order, as processors flatten them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sinklens.errors import ImageSpanError
from sinklens.ops._typing import Bool, Int


@dataclass(frozen=True)
class TileShape:
    """A grid of image tokens in one image's run: `rows x cols`, optionally a newline token after each row."""

    name: str
    rows: int
    cols: int
    newline: bool = False

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
    """One image of one prompt: its tiles, and the placeholder positions that are no patch (image newlines)."""

    prompt: int
    index: int  # the image's number within its prompt
    start: int  # first placeholder position of the image
    stop: int  # one past its last placeholder position
    tiles: tuple[Tile, ...]
    newlines: tuple[int, ...] = ()


@dataclass(frozen=True)
class ImageSpans:
    """Image-token positions of a batch of prompts (several images and spans per prompt allowed).

    `mask` marks the visual tokens (I_vis), `region` every placeholder position
    (visual tokens and image newlines; the mask when not given), `images` the
    grid of every image, in order (empty when built from masks alone).
    """

    mask: Bool[Tensor, "batch pos"]
    region: Bool[Tensor, "batch pos"] | None = None
    images: tuple[ImageGrid, ...] = field(default=())

    @property
    def text_start(self) -> Int[Tensor, " batch"]:
        """Per prompt, the first position after its last image (newline tokens included)."""
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

GridRule = Callable[[Any, Mapping[str, Tensor], list[list[int]]], list[tuple[TileShape, ...]]]


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


def square_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[int]]) -> list[tuple[TileShape, ...]]:
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


def anyres_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[int]]) -> list[tuple[TileShape, ...]]:
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


def merged_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[int]]) -> list[tuple[TileShape, ...]]:
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


def tiles_shapes(config: Any, inputs: Mapping[str, Tensor], runs: list[list[int]]) -> list[tuple[TileShape, ...]]:
    """InternVL: each run of placeholders is one image of `n` tiles of `s x s` tokens, the last a thumbnail if n > 1.

    The tile count of an image is not in the model inputs (the processor drops
    it), so it is read off the run length; the tiles' arrangement on the canvas
    (rows x cols of tiles) is not recoverable and each tile is its own grid.
    """
    n_tiles_given = _pixels(inputs).shape[0]
    side = int(_side(config.vision_config) * config.downsample_ratio)
    per_tile = side * side
    shapes = []
    for prompt, lengths in enumerate(runs):
        for length in lengths:
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


GRID_RULES: dict[str, GridRule] = {
    "square": square_shapes,
    "anyres": anyres_shapes,
    "merged": merged_shapes,
    "tiles": tiles_shapes,
}


def _runs(row: Tensor) -> list[tuple[int, int]]:
    padded = torch.nn.functional.pad(row.to(torch.int8), (1, 1))
    edges = padded.diff()
    starts = (edges == 1).nonzero().flatten().tolist()
    stops = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, stops, strict=True))


def _lay_out(prompt: int, index: int, start: int, shape: tuple[TileShape, ...]) -> tuple[ImageGrid, list[int]]:
    tiles, newlines, offset = [], [], start
    for tile in shape:
        width = tile.cols + tile.newline
        grid = offset + torch.arange(tile.rows)[:, None] * width + torch.arange(tile.cols)[None, :]
        tiles.append(Tile(tile.name, grid))
        if tile.newline:
            newlines += [offset + row * width + tile.cols for row in range(tile.rows)]
        offset += tile.n_tokens
    return ImageGrid(prompt, index, start, offset, tuple(tiles), tuple(newlines)), newlines


def image_spans(rule: str, config: Any, inputs: Mapping[str, Tensor], image_token_id: int) -> ImageSpans:
    """The image spans and grids of a batch of model inputs, after checking them against the images given."""
    input_ids = inputs["input_ids"]
    region = input_ids == image_token_id
    _refuse_prompts_without_images(region, image_token_id)
    runs = [_runs(row) for row in region]
    shapes = GRID_RULES[rule](config, inputs, [[stop - start for start, stop in row] for row in runs])
    n_found, n_expected = int(region.sum()), sum(tile.n_tokens for shape in shapes for tile in shape)
    if n_found != n_expected:
        per_image = sorted({sum(tile.n_tokens for tile in shape) for shape in shapes})
        raise ImageSpanError(
            f"found {n_found} image tokens (id {image_token_id}) but the {len(shapes)} image(s) give "
            f"{n_expected} features ({', '.join(map(str, per_image))} each). Pass the processor's output "
            f"unchanged, or put one image placeholder per image in the prompt and let the processor expand it."
        )
    mask = region.clone()
    images: list[ImageGrid] = []
    queue = iter(shapes)
    for prompt, row_runs in enumerate(runs):
        index = 0
        for start, stop in row_runs:
            position = start
            while position < stop:  # a run may hold several adjacent images
                shape = next(queue)
                grid, newlines = _lay_out(prompt, index, position, shape)
                if grid.stop > stop:
                    raise ImageSpanError(
                        f"image {index} of prompt {prompt} needs {grid.stop - position} image tokens from position "
                        f"{position} but the run of image tokens ends at {stop}. Pass the processor's output unchanged."
                    )
                mask[prompt, newlines] = False
                images.append(grid)
                position, index = grid.stop, index + 1
    return ImageSpans(mask=mask, region=region, images=tuple(images))


def square_grid(config: object) -> tuple[int, int]:
    """(rows, cols) of the patch grid: image_size // patch_size on each side."""
    side = _side(config.vision_config)
    return side, side
