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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sinklens.errors import ImageSpanError
from sinklens.models.grids import GRID_RULES, Run, TileShape
from sinklens.ops._typing import Bool, Int


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


