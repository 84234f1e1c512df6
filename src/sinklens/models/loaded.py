"""A loaded LMM and what sinklens knows about it: `LoadedModel`, `from_hf`.

Two attention routes (`AttentionRoute`): "eager" computes every layer's full
`[T, T]` pattern; "rows" runs sdpa and computes scores and pattern only for
the rows a stack acts on (`sinklens.hf.rows_attention`). `from_hf` describes a
model already in memory; `sinklens.models.load` loads one by name.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from sinklens.errors import AttentionImplementationError, ImageSpanError, PaddingError, ParameterError
from sinklens.hf import ATTENTION_ROUTES, AttentionRoute
from sinklens.models.catalogue import HookCatalogue, catalogue_for
from sinklens.models.images import ImageConversionWarning, rgb_images
from sinklens.models.sink_dims import known_sink_dims
from sinklens.models.grids import square_grid
from sinklens.models.spans import ImageSpans, image_spans

# an image, or several images shown in one prompt (in order); a path (str or Path) is opened
Images = Image.Image | str | os.PathLike[str] | Sequence[Image.Image | str | os.PathLike[str]]


@dataclass
class LoadedModel:
    """An HF LMM, its processor, and what sinklens knows about its architecture."""

    name: str
    model: Any  # a transformers PreTrainedModel
    processor: Any
    catalogue: HookCatalogue
    sink_dims: tuple[int, ...] | None = None
    sink_dims_source: str | None = None
    default_tau: float | None = None  # the registered sink threshold for this model, if any
    attention: AttentionRoute = "eager"  # the language model's route

    @property
    def d_model(self) -> int:
        return self.text_config.hidden_size

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def text_config(self) -> Any:
        return getattr(self.config, self.catalogue.text_config_field)

    @property
    def n_vision_layers(self) -> int:
        """The number of layers of the vision tower (0 where the config does not say)."""
        vision = getattr(self.model.config, "vision_config", None)
        return int(getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", None) or 0)

    @property
    def sliding_window(self) -> int | None:
        """The key window of the language model's sliding-window layers (Gemma 3), None where every layer sees all keys."""
        text = getattr(self.model.config, self.catalogue.text_config_field, None) or self.model.config
        if "sliding_attention" not in (getattr(text, "layer_types", None) or ()):
            return None
        return int(text.sliding_window)

    @property
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def image_token_id(self) -> int:
        return getattr(self.config, self.catalogue.image_token_field)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid of one image (LLaVA-1.5) or of one fixed-size tile.

        LLaVA-NeXT's base tile and InternVL's tiles have a fixed grid; Qwen2-VL's
        grid follows each image's size. The grid of every image of a run is in
        `check_inputs(inputs).images` (and `ctx.image.images`).
        """
        rule = self.catalogue.grid
        if rule in ("square", "anyres", "anyres_max"):
            return square_grid(self.config)
        if rule == "tiles":
            side = int(square_grid(self.config)[0] * self.config.downsample_ratio)
            return side, side
        if rule == "split":
            side = square_grid(self.config)[0] // self.config.scale_factor
            return side, side
        if rule == "pooled":
            side = math.isqrt(self.config.mm_tokens_per_image)
            return side, side
        raise ParameterError(
            f"{self.name} ({self.catalogue.family}) has no fixed grid: each image's grid follows its size. "
            "Read it from LoadedModel.check_inputs(inputs).images."
        )

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def prompt(self, n_images: int, question: str) -> str:
        """The chat-template prompt for `n_images` images followed by one question."""
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def prepare(self, image: Images, question: str) -> Mapping[str, torch.Tensor]:
        """Model inputs for one prompt: one image or several (in order) and one question.

        An image is a PIL image of any mode (converted to 8-bit RGB by `images.to_rgb`:
        16-bit scaled, transparency composited on white, with an `ImageConversionWarning`
        saying so) or a path to an image file, which is opened, as transformers'
        processors open paths. Arrays are refused: convert them with `PIL.Image.fromarray`.
        """
        return self.prepare_batch([(image, question)])

    def prepare_batch(self, examples: Sequence[tuple[Images, str]]) -> Mapping[str, torch.Tensor]:
        """Model inputs for a batch of (image or images, question) prompts, padded on the left.

        Left padding keeps every prompt's last token at the last position, so
        generation continues each prompt where it ends.
        """
        if not examples:
            raise ParameterError("prepare_batch needs at least one (image, question) example")
        images: list[list[Image.Image]] = []  # per prompt: the processors that care learn which images share one
        prompts: list[str] = []
        for example in examples:
            if not isinstance(example, (tuple, list)) or len(example) != 2:
                raise ParameterError(
                    f"prepare_batch takes (image or images, question) pairs; example {len(prompts)} is a "
                    f"{type(example).__name__}. For one prompt, call prepare(image, question)."
                )
            image, question = example
            where = "the image" if len(examples) == 1 else f"the image of example {len(prompts)}"
            if isinstance(image, (list, tuple)) and not image:
                raise ParameterError(f"example {len(prompts)} has no image; give at least one per prompt")
            shown = rgb_images(image, where=where)
            self._check_question(question, where.replace("the image", "the question"))
            for converted in shown:
                if converted.note:  # said, not silently done (sinklens run writes it to result.json)
                    warnings.warn(f"{where}: {converted.note}", ImageConversionWarning, stacklevel=3)
            images.append([converted.image for converted in shown])
            prompts.append(self.prompt(len(shown), question))
        inputs = self.processor(
            images=images, text=prompts, padding=True, padding_side="left", return_tensors="pt"
        )
        device = self.model.device
        if device.type == "meta":  # a remote model's client copy has no weights: inputs stay here and travel
            device = torch.device("cpu")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        self.check_inputs(inputs)
        return inputs

    def _check_question(self, question: Any, where: str) -> None:
        if not isinstance(question, str):
            raise ParameterError(f"{where} is a {type(question).__name__}; pass the question as a string")
        token = getattr(self.processor, "image_token", None)
        if token and token in question:
            raise ImageSpanError(
                f"{where} contains the image token {token!r}; prepare inserts one per image itself "
                f"(in the chat template). Remove {token!r} from the question."
            )

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> ImageSpans:
        """The image spans and grids of `inputs`, after checking they agree with the images given."""
        attention_mask = inputs.get("attention_mask")
        if attention_mask is not None:
            # a 0 after a 1 in a row: padding on the right, where generation would continue after the padding
            right = (attention_mask[:, 1:] < attention_mask[:, :-1]).any(-1).nonzero().flatten().tolist()
            if right:
                raise PaddingError(
                    f"prompt(s) {right} of the batch are padded on the right. Pad on the left "
                    "(LoadedModel.prepare_batch does, or pass padding_side='left' to the processor)."
                )
        missing = [key for key in self.catalogue.required_inputs if key not in inputs]
        if missing:
            raise ImageSpanError(
                f"{self.name} needs {', '.join(missing)} in its inputs ({self.catalogue.source.name}: without them the "
                "model runs another attention than it was trained with); pass the processor's output unchanged "
                "(LoadedModel.prepare does)"
            )
        return self.image_spans(inputs)

    def image_spans(self, inputs: Mapping[str, torch.Tensor]) -> ImageSpans:
        """The image spans and grids of `inputs`, without `check_inputs`' checks of padding and required inputs."""
        return image_spans(self.catalogue.grid, self.config, inputs, self.image_token_id, self._added_tokens)

    @functools.cached_property
    def _added_tokens(self) -> dict[int, str]:
        """The tokenizer's added tokens (markers such as SmolVLM's `<row_1_col_1>`), by id.

        Only the `split` rule reads them; a model described without a full tokenizer (a benchmark's stand-in that
        only maps ids) has none, and the other rules do not need them.
        """
        added = getattr(self.tokenizer, "get_added_vocab", None)
        return {token_id: text for text, token_id in added().items()} if callable(added) else {}

    def decode(self, token_ids: torch.Tensor) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def _attention_route(model: Any, catalogue: HookCatalogue, attention: str | None) -> AttentionRoute:
    """The route of the language model, after switching it to `attention` if given; refuses sdpa and flash."""
    from sinklens.hf.rows_attention import ROWS, use_rows

    text_config = getattr(model.config, catalogue.text_config_field)
    if attention is not None:
        check_route(attention)
        if attention == "rows":
            catalogue.rows_call(0)  # the catalogue must say where the rows route's points are
            use_rows(model, catalogue.text_config_field)
        elif text_config._attn_implementation != "eager":
            model.set_attn_implementation("eager")
    implementation = text_config._attn_implementation
    if implementation == "eager":
        return "eager"
    if implementation == ROWS:
        return "rows"
    raise AttentionImplementationError(
        f"the language model uses {implementation!r} attention, which computes attention without a "
        "pattern to hook. Load it with attn_implementation='eager' (sinklens.load does), call "
        "model.set_attn_implementation('eager') before wrapping it, or pass attention='rows' (sdpa, with "
        "explicit attention only for the rows a stack acts on) or attention='eager' to from_hf."
    )


def check_route(attention: str) -> None:
    if attention not in ATTENTION_ROUTES:
        raise ParameterError(
            f"attention must be one of {', '.join(map(repr, ATTENTION_ROUTES))}, got {attention!r}: 'eager' computes "
            "every layer's full pattern, 'rows' runs sdpa and computes only the rows a stack acts on"
        )


def from_hf(model: Any, processor: Any, *, name: str | None = None, attention: str | None = None) -> LoadedModel:
    """Describe an already-loaded HF model whose language model runs eager attention or the rows route.

    `attention` ("eager" or "rows") switches the language model to that route
    first; without it, the model must already run one of them.
    """
    architecture = type(model).__name__
    vision_config = getattr(model.config, "vision_config", None)
    catalogue = catalogue_for(architecture).for_tower(getattr(vision_config, "model_type", None))
    route = _attention_route(model, catalogue, attention)
    name = name or getattr(model.config, "_name_or_path", None) or architecture
    known = known_sink_dims(name)
    return LoadedModel(
        name=name,
        model=model.eval(),
        processor=processor,
        catalogue=catalogue,
        sink_dims=known.dims if known else None,
        sink_dims_source=known.source if known else None,
        default_tau=known.tau if known else None,
        attention=route,
    )


