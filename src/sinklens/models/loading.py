"""Load an LMM and describe it: `LoadedModel`.

Two attention routes (`load(..., attention=...)`): "eager" (the default)
computes every layer's full `[T, T]` pattern; "rows" runs sdpa and computes
scores and pattern only for the rows a stack acts on (`sinklens.models.attention`).

A model too large for one device loads with a device map (accelerate), through
the same call: `load("llava-hf/llava-1.5-13b-hf", dtype=torch.float16,
device_map="auto")`. Hook functions receive each tensor on the device of its
layer; sinklens moves its masks there.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sinklens.errors import (
    AttentionImplementationError,
    ImageSpanError,
    MissingDependencyError,
    PaddingError,
    ParameterError,
    UnknownArchitectureError,
    UnknownModelError,
)
from sinklens.models.builtins import BUILTIN_MODELS, DEFAULT_MODEL, builtin  # noqa: F401  (DEFAULT_MODEL: the CLI's)
from sinklens.models.catalogue import HookCatalogue, catalogue_for
from sinklens.models.images import as_images, to_rgb
from sinklens.models.processors import load_processor
from sinklens.models.sink_dims import known_sink_dims
from sinklens.models.spans import ImageSpans, image_spans, square_grid

# name -> () -> (model, processor), from the records in builtins.py
BUILTINS: dict[str, Callable[[], tuple[Any, Any]]] = {record.name: record.build for record in BUILTIN_MODELS}

# the attention routes a LoadedModel can run (docs/architecture.md, "Attention routes")
ATTENTION_ROUTES = ("eager", "rows")


# an image, or several images shown in one prompt (in order); a path (str or Path) is opened
Images = Image.Image | str | os.PathLike[str] | Sequence[Image.Image | str | os.PathLike[str]]


class ImageConversionWarning(UserWarning):
    """An image's values were changed to make it 8-bit RGB: 16-bit scaled, transparency composited (see images.py)."""


def demo_scene(name: str) -> Image.Image:
    """A scene whose white blocks the planted built-in `name` turns into visual sinks (toy-llava: a held-out scene)."""
    return builtin(name).scene()


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
    attention: str = "eager"  # the language model's route, one of ATTENTION_ROUTES

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
        """(rows, cols) of the patch grid of one image (LLaVA-1.5) or of one fixed-size tile.

        LLaVA-NeXT's base tile and InternVL's tiles have a fixed grid; Qwen2-VL's
        grid follows each image's size. The grid of every image of a run is in
        `check_inputs(inputs).images` (and `ctx.image.images`).
        """
        rule = self.catalogue.grid
        if rule in ("square", "anyres"):
            return square_grid(self.config)
        if rule == "tiles":
            side = int(square_grid(self.config)[0] * self.config.downsample_ratio)
            return side, side
        raise ValueError(
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
        images: list[Image.Image] = []
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
            shown = as_images(image, where=where)
            self._check_question(question, where.replace("the image", "the question"))
            for picture in shown:
                converted = to_rgb(picture)
                if converted.note:  # said, not silently done (sinklens run writes it to result.json)
                    warnings.warn(f"{where}: {converted.note}", ImageConversionWarning, stacklevel=3)
                images.append(converted.image)
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
        return image_spans(self.catalogue.grid, self.config, inputs, self.image_token_id)

    def decode(self, token_ids: torch.Tensor) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def _attention_route(model: Any, catalogue: HookCatalogue, attention: str | None) -> str:
    """The route of the language model, after switching it to `attention` if given; refuses sdpa and flash."""
    from sinklens.models.attention import ROWS, use_rows

    text_config = getattr(model.config, catalogue.text_config_field)
    if attention is not None:
        _check_route(attention)
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


def _check_route(attention: str) -> None:
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
    catalogue = catalogue_for(architecture)
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


def _require_accelerate() -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            "device_map needs the accelerate package, which is not installed: pip install accelerate "
            "(or leave device_map=None and pass device=...)."
        ) from e


def _dispatch(model: Any, device_map: str | Mapping[str, Any], offload_dir: str | None) -> Any:
    """Spread an in-memory model (a built-in) over devices as from_pretrained(device_map=...) would."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=dict(device_map), offload_dir=offload_dir)


def _offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) as huggingface_hub reads it."""
    from huggingface_hub import constants

    flags = (os.environ.get(var, "").upper() for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def builtins_hint(name: str) -> str:
    close = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.6)
    guess = f"Did you mean {close[0]!r}? " if close else ""
    return f"{guess}The built-ins are {', '.join(BUILTINS)}"


def check_model_name(name_or_path: str, *, cache_dir: str | None = None) -> str:
    """Where `name_or_path` would load from ("builtin", "path" or "hub"), without touching the network.

    A name that is neither a built-in, an existing path nor a hub id (`org/name`)
    is refused with the built-ins and the closest one; a hub id that is not in the
    local hub cache is refused when the hub is off (HF_HUB_OFFLINE=1).
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise UnknownModelError(f"the model name must be a non-empty string, got {name_or_path!r}. {builtins_hint('')}")
    if name_or_path in BUILTINS:
        return "builtin"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return "path"
    if path.exists():
        raise UnknownModelError(f"{name_or_path} is a file; give the folder that holds the model's config.json and weights")
    parts = name_or_path.split("/")
    if len(parts) != 2 or not all(parts) or name_or_path.startswith((".", "~")):
        raise UnknownModelError(
            f"unknown model {name_or_path!r}: not a built-in, an existing folder or a hub id (org/name). "
            f"{builtins_hint(name_or_path)}."
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", cache_dir=cache_dir)
    if not isinstance(cached, str) and _offline():
        raise UnknownModelError(
            f"{name_or_path} is not in the local hub cache and the hub is off (HF_HUB_OFFLINE=1): download it "
            f"on a connected machine (`hf download {name_or_path}`), give a local folder, or use a built-in. "
            f"{builtins_hint(parts[1])}."
        )
    return "hub"


def _probe_hub(name: str, hf_kwargs: Mapping[str, Any]) -> None:
    """Fail in about a second, not after the hub client's retries, when an uncached hub id cannot be fetched."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json", cache_dir=hf_kwargs.get("cache_dir")), str):
        return
    try:
        model_info(name, timeout=10, token=hf_kwargs.get("token"))
    except GatedRepoError as e:
        raise UnknownModelError(f"{name} is gated on the hub: accept its licence there and log in (`hf auth login`)") from e
    except RepositoryNotFoundError as e:
        raise UnknownModelError(f"no model {name!r} on the hub (or it is private). {builtins_hint(name.split('/')[1])}.") from e
    except Exception as e:  # connection errors come from the hub client's HTTP library
        raise UnknownModelError(
            f"{name} is not in the local hub cache and the hub cannot be reached ({type(e).__name__}: {e}). "
            f"Download it on a connected machine (`hf download {name}`) and copy the cache, or give a local folder."
        ) from e


def load(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    hf_kwargs: Mapping[str, Any] | None = None,
    attention: str = "eager",
) -> LoadedModel:
    """Load a built-in model (see `BUILTINS`), a hub id or a local path.

    `attention` is the language model's route: "eager" (every layer's full
    pattern) or "rows" (sdpa, plus explicit scores and pattern for the rows a
    stack acts on; the vision tower then runs sdpa).

    `device` puts the whole model on one device (default: the CPU). `device_map`
    spreads it over several (accelerate): "auto", or a dict from module name to
    device ("cpu", a GPU index, or "disk" with `hf_kwargs={"offload_folder": ...}`),
    as `from_pretrained(device_map=...)` takes it. Give one of the two.
    """
    _check_route(attention)
    if device is not None and device_map is not None:
        raise ParameterError(
            f"give device ({device!r}) or device_map ({device_map!r}), not both: a device map already says "
            "where every module goes."
        )
    if device_map is not None:
        _require_accelerate()
    hf_kwargs = dict(hf_kwargs or {})
    where = check_model_name(name_or_path, cache_dir=hf_kwargs.get("cache_dir"))
    if where == "builtin":
        model, processor = BUILTINS[name_or_path]()
        model = model.to(dtype=dtype)
        if device_map is None:
            model = model.to(device or "cpu")
        else:
            model = _dispatch(model, device_map, hf_kwargs.get("offload_folder"))
        return from_hf(model, processor, name=name_or_path, attention=attention)

    import transformers

    if where == "hub":
        _probe_hub(name_or_path, hf_kwargs)
    config = transformers.AutoConfig.from_pretrained(name_or_path, **hf_kwargs)
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        raise UnknownArchitectureError(f"{name_or_path}'s config names no architecture; load it yourself and use from_hf")
    catalogue_for(architectures[0])  # fail before downloading weights of an unsupported class
    model_class = getattr(transformers, architectures[0])
    model = model_class.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation="eager", device_map=device_map, **hf_kwargs
    )
    if device_map is None:
        model = model.to(device or "cpu")
    processor = load_processor(name_or_path, config.model_type)
    return from_hf(model, processor, name=name_or_path, attention=attention)
