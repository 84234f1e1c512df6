"""Low-rank adapters (LoRA) on linear layers: trained as wrappers, shipped as a file, merged on load.

A LoRA adapter adds `scale * B @ A` to a frozen weight W (A: rank x in, B: out x rank,
scale = alpha / rank). Training wraps each chosen `nn.Linear` in a `LoRALinear`; the
shipped model merges the adapter into W once, so it is a plain HF model again and
every hook path is unchanged.

The file is safetensors with `<module path>.lora_A` / `.lora_B` tensors and the
rank and alpha in its metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from sinklens.errors import ParameterError, WeightsError


class LoRALinear(nn.Module):
    """`base(x) + scale * x A^T B^T`, with `base` frozen and B starting at zero (so training starts at `base`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ParameterError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features).normal_(std=base.in_features**-0.5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)


def add_lora(model: nn.Module, targets: Iterable[str], rank: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap every `nn.Linear` whose path ends with one of `targets` (e.g. "self_attn.q_proj"); return them by path."""
    targets = tuple(targets)
    chosen = [path for path, module in model.named_modules()
              if isinstance(module, nn.Linear) and path.endswith(targets)]  # fmt: skip
    if not chosen:
        raise ParameterError(f"no nn.Linear in the model ends with any of {targets}; name the attention projections "
                             "the model has (print its named_modules())")
    wrapped = {}
    for path in chosen:
        parent, _, name = path.rpartition(".")
        owner = model.get_submodule(parent)
        wrapped[path] = LoRALinear(getattr(owner, name), rank, alpha)
        setattr(owner, name, wrapped[path])
    return wrapped


def save_adapter(wrapped: Mapping[str, LoRALinear], path: Path) -> None:
    from safetensors.torch import save_file

    first = next(iter(wrapped.values()))
    rank = first.lora_A.shape[0]
    tensors = {}
    for name, module in wrapped.items():
        tensors[f"{name}.lora_A"] = module.lora_A.detach().contiguous()
        tensors[f"{name}.lora_B"] = module.lora_B.detach().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata={"rank": str(rank), "alpha": str(first.scale * rank)})


def load_adapter(path: Path) -> tuple[dict[str, Tensor], float]:
    """(tensors, scale) of an adapter file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if "rank" not in metadata or "alpha" not in metadata:
        raise WeightsError(f"{path} is not a sinklens LoRA adapter (no rank/alpha in its metadata); write adapters "
                           "with sinklens.builtin.lora.save_adapter")
    return load_file(path), float(metadata["alpha"]) / int(metadata["rank"])


def merge_adapter(state: dict[str, Tensor], adapter: Mapping[str, Tensor], scale: float) -> dict[str, Tensor]:
    """`state` with W + scale * B @ A for every adapted module (a new dict; `state` is not changed)."""
    merged = dict(state)
    modules = sorted({key.rsplit(".", 1)[0] for key in adapter})
    for module in modules:
        a, b = adapter.get(f"{module}.lora_A"), adapter.get(f"{module}.lora_B")
        if a is None or b is None:
            raise WeightsError(f"the adapter holds only one of {module}.lora_A / .lora_B: the file is incomplete, save it again")
        weight = state.get(f"{module}.weight")
        if weight is None:
            raise WeightsError(f"the adapter adapts {module}, which the model does not have: it was trained for another model")
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise WeightsError(f"the adapter of {module} is {b.shape[0]} x {a.shape[1]}, the weight {tuple(weight.shape)}: "
                               "it was trained for another model")
        merged[f"{module}.weight"] = weight + scale * (b.double() @ a.double()).to(weight.dtype)
    return merged
