"""Load an LMM with eager attention and describe it: `LoadedModel`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from sinklens.errors import AttentionImplementationError, ImageSpanError, UnknownArchitectureError
from sinklens.models.catalogue import HookCatalogue, catalogue_for
from sinklens.models.sink_dims import known_sink_dims
from sinklens.models.spans import ImageSpans, square_grid
from sinklens.models.tiny import build_tiny_llava
from sinklens.models.toy_llava import load_toy_llava

BUILTINS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "tiny-llava": build_tiny_llava,  # random weights with planted sinks: tests of the mechanics
    "toy-llava": load_toy_llava,  # SmolLM2 + DINOv2 with a trained projector: the default model
}
DEFAULT_MODEL = "toy-llava"


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
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def image_token_id(self) -> int:
        return getattr(self.config, self.catalogue.image_token_field)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid of one image."""
        return square_grid(self.config)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def prepare(self, image: Image.Image, question: str) -> Mapping[str, torch.Tensor]:
        """Model inputs for one image and one question, through the processor's chat template."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = self.processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
        self.check_inputs(inputs)
        return inputs

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> ImageSpans:
        """The image spans of `inputs`, after checking they agree with the images given."""
        spans = ImageSpans.from_input_ids(inputs["input_ids"], self.image_token_id)
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            raise ImageSpanError("inputs have image tokens but no pixel_values; pass the processor's output unchanged.")
        rows, cols = self.grid
        per_image = rows * cols + (self.config.vision_feature_select_strategy == "full")
        n_found = int(spans.mask.sum())
        n_features = per_image * pixel_values.shape[0]
        if n_found != n_features:
            raise ImageSpanError(
                f"found {n_found} image tokens (id {self.image_token_id}) but the {pixel_values.shape[0]} "
                f"image(s) give {n_features} features ({per_image} each). Pass the processor's output "
                f"unchanged, or put one image placeholder per image in the prompt and let the processor expand it."
            )
        return spans

    def decode(self, token_ids: torch.Tensor) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def _check_eager(model: Any, catalogue: HookCatalogue) -> None:
    text_config = getattr(model.config, catalogue.text_config_field)
    implementation = text_config._attn_implementation
    if implementation != "eager":
        raise AttentionImplementationError(
            f"the language model uses {implementation!r} attention, which computes attention without a "
            "pattern to hook. Load it with attn_implementation='eager' (sinklens.load does), or call "
            "model.set_attn_implementation('eager') before wrapping it."
        )


def from_hf(model: Any, processor: Any, *, name: str | None = None) -> LoadedModel:
    """Describe an already-loaded HF model; it must use eager attention."""
    architecture = type(model).__name__
    catalogue = catalogue_for(architecture)
    _check_eager(model, catalogue)
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
    )


def load(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    hf_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a built-in model (`tiny-llava`), a hub id or a local path, with eager attention."""
    if name_or_path in BUILTINS:
        model, processor = BUILTINS[name_or_path]()
        return from_hf(model.to(device=device, dtype=dtype), processor, name=name_or_path)

    import transformers

    config = transformers.AutoConfig.from_pretrained(name_or_path, **dict(hf_kwargs or {}))
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        raise UnknownArchitectureError(f"{name_or_path}'s config names no architecture; load it yourself and use from_hf")
    catalogue_for(architectures[0])  # fail before downloading weights of an unsupported class
    model_class = getattr(transformers, architectures[0])
    model = model_class.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation="eager", **dict(hf_kwargs or {})
    ).to(device)
    processor = transformers.AutoProcessor.from_pretrained(name_or_path)
    return from_hf(model, processor, name=name_or_path)
