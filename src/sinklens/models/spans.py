"""Where the image tokens sit in a prompt, and the patch grid they come from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sinklens.errors import ImageSpanError
from sinklens.ops._typing import Bool, Int


@dataclass(frozen=True)
class ImageSpans:
    """Image-token positions of a batch of prompts (several spans per prompt allowed)."""

    mask: Bool[Tensor, "batch pos"]

    @classmethod
    def from_input_ids(cls, input_ids: Int[Tensor, "batch pos"], image_token_id: int) -> ImageSpans:
        mask = input_ids == image_token_id
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ImageSpanError(
                f"prompt(s) {empty} of the batch have no image token (id {image_token_id}). "
                "Put the image placeholder in the prompt: build inputs with "
                "LoadedModel.prepare(image, question) or the processor's chat template."
            )
        return cls(mask=mask)

    @property
    def text_start(self) -> Int[Tensor, " batch"]:
        """Per prompt, the first position after its last image token."""
        positions = torch.arange(self.mask.shape[-1], device=self.mask.device)
        return torch.where(self.mask, positions, -1).amax(-1) + 1

    def spans(self) -> list[list[tuple[int, int]]]:
        """Per prompt, the (start, stop) of each contiguous run of image tokens."""
        padded = torch.nn.functional.pad(self.mask.to(torch.int8), (1, 1))
        edges = padded.diff(dim=-1)
        result: list[list[tuple[int, int]]] = []
        for row in edges:  # one prompt at a time; not a hot path
            starts = (row == 1).nonzero().flatten().tolist()
            stops = (row == -1).nonzero().flatten().tolist()
            result.append(list(zip(starts, stops, strict=True)))
        return result


def square_grid(config: object) -> tuple[int, int]:
    """(rows, cols) of the patch grid: image_size // patch_size on each side."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    return side, side
