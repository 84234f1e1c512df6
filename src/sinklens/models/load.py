"""Load a model by name: a built-in, a hub id or a local path (`load`), with a device map if it is large.

A model too large for one device loads with a device map (accelerate), through
the same call: `load("llava-hf/llava-1.5-13b-hf", dtype=torch.float16,
device_map="auto")`. Hook functions receive each tensor on the device of its
layer; sinklens moves its masks there. A name is checked before any network
call (`check_model_name`: the closest built-in; an uncached hub id offline).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sinklens.builtin import BUILTINS
from sinklens.errors import MissingDependencyError, ParameterError, UnknownArchitectureError, UnknownModelError
from sinklens.hf.processors import load_processor
from sinklens.models.catalogue import catalogue_for
from sinklens.models.loaded import LoadedModel, check_route, from_hf


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
    check_route(attention)
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
    else:
        model, processor = _from_pretrained(name_or_path, where, dtype, device, device_map, hf_kwargs)
    return from_hf(model, processor, name=name_or_path, attention=attention)


def _from_pretrained(
    name_or_path: str, where: str, dtype: torch.dtype, device: str | torch.device | None,
    device_map: str | Mapping[str, Any] | None, hf_kwargs: dict[str, Any],
) -> tuple[Any, Any]:
    """(model, processor) of a hub id or a local folder, its class checked against the catalogue before any weight."""
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
    return model, load_processor(name_or_path, config.model_type)
