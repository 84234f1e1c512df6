"""Test-time registers: move the vision tower's outlier-making neurons onto extra tokens (Jiang et al., NeurIPS 2025).

"Vision Transformers Don't Need Trained Registers" (code: nickjiang2378/test-time-registers)
finds that a few MLP neurons ("register neurons") write the high-norm outlier
tokens of a ViT. Moving their activation from the patches onto an extra token
appended to the sequence moves the outliers there too, with no training:

1. `find_register_neurons`: over a set of images, the outlier tokens are those
   whose last vision layer's output norm exceeds `threshold` (the paper's 30,
   for CLIP ViT-L); every MLP neuron (`vision.blocks.{l}.mlp.hook_post`) is
   ranked by its mean |activation| at the outliers; the top `top_k` are the
   register neurons.
2. `TestTimeRegisters(neurons=...)`: appends `n_registers` zero tokens to the
   tower's sequence (`vision.blocks.0.hook_resid_pre`); in each register
   neuron's layer, sets its activation on the registers to `scale` x its
   (signed) maximum over the image's own tokens and zeroes it on those tokens;
   drops the registers again before the projector (`vision.hook_out`), so the
   language model sees as many image tokens as before.

Towers whose rows are images and whose encoder takes any length (CLIP, SigLIP,
DINOv2) are supported; the others are refused by name (Qwen's and Pixtral's
towers lay all images out in one sequence with a block mask, InternVL's
projector input is pixel-shuffled, SmolVLM's encoder carries a patch mask).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from sinklens.errors import ParameterError
from sinklens.hook_points import vision_block
from sinklens.interventions import params
from sinklens.run import Hook, RunContext

SUPPORTED_TOWERS = ("clip_vision_model", "siglip_vision_model", "dinov2")
PAPER_THRESHOLD = 30.0


@dataclass(frozen=True, kw_only=True)
class TestTimeRegisters:
    """Move the register neurons' activation from the image's tokens onto `n_registers` appended tokens.

    `neurons`: (vision layer, neuron) pairs, from `find_register_neurons`.
    Where the paper is silent: "the image's own tokens" are every token of the
    tower's row (a CLS token included); the registers start as zero vectors.
    """

    __test__ = False  # not a pytest class, whatever its name

    # the vision tower runs in the prefill of a whole prompt only, never in a continuation of a cached prefix
    prefix_safe: ClassVar[bool] = False

    neurons: Sequence[tuple[int, int]]
    n_registers: int = 1
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.neurons:
            raise ParameterError("TestTimeRegisters needs register neurons: find them with find_register_neurons")
        params.integer_in("n_registers", self.n_registers, 1, 64)
        params.non_negative("scale", self.scale)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        check_tower(ctx.spec.tower_type, ctx.model_name)
        layers = sorted({layer for layer, _ in self.neurons})
        if ctx.n_vision_layers and layers[-1] >= ctx.n_vision_layers:
            raise ParameterError(f"register neuron layers {layers} run past the vision tower's 0..{ctx.n_vision_layers - 1}")
        hooks = [Hook(vision_block(0, "hook_resid_pre"), partial(_append, n=self.n_registers), prefill_only=True,
                      resizes=True)]  # fmt: skip
        for layer in layers:
            neurons = tuple(neuron for l, neuron in self.neurons if l == layer)
            fn = partial(_move, neurons=neurons, n=self.n_registers, scale=self.scale)
            hooks.append(Hook(vision_block(layer, "mlp.hook_post"), fn, prefill_only=True))
        hooks.append(Hook("vision.hook_out", partial(_drop, n=self.n_registers), prefill_only=True, resizes=True))
        return hooks


def _append(resid: Tensor, ctx: RunContext, *, n: int) -> Tensor:
    return torch.cat([resid, resid.new_zeros(resid.shape[0], n, resid.shape[-1])], dim=1)


def _move(hidden: Tensor, ctx: RunContext, *, neurons: tuple[int, ...], n: int, scale: float) -> Tensor:
    index = torch.tensor(neurons, device=hidden.device)
    own = hidden[:, :-n, :].index_select(-1, index)  # [rows, tokens, neurons]
    out = hidden.clone()
    out[:, -n:, index] = (scale * own.max(dim=1).values)[:, None, :].to(hidden.dtype)
    out[:, :-n, index] = 0
    return out


def _drop(features: Tensor, ctx: RunContext, *, n: int) -> Tensor:
    return features[:, :-n]


def _keep(tensor: Tensor, ctx: RunContext, *, seen: dict[str, Tensor], name: str) -> None:
    seen[name] = tensor.detach().float()


def check_tower(tower: str | None, model: str | None) -> None:
    """Refuse, by name, a tower whose sequence cannot take appended tokens."""
    if tower not in SUPPORTED_TOWERS:
        raise ParameterError(
            f"test-time registers append tokens to the vision tower's sequence; {model}'s {tower} tower cannot "
            f"take them (see sinklens.interventions.registers); supported towers: {', '.join(SUPPORTED_TOWERS)}"
        )


def find_register_neurons(
    runner: Any, inputs: Iterable[Any], *, threshold: float = PAPER_THRESHOLD, top_k: int = 10
) -> tuple[tuple[int, int], ...]:
    """The top `top_k` (vision layer, neuron) pairs by mean |activation| at outlier tokens (last-layer norm > threshold).

    `runner`: an `NnsightRunner`; `inputs`: prepared prompts (their images are what counts).
    """
    loaded = runner.loaded
    check_tower(loaded.catalogue.tower_type, loaded.name)
    params.positive("threshold", threshold)
    layers = loaded.n_vision_layers
    totals, count = None, 0
    for prompt in inputs:
        seen: dict[str, Tensor] = {}
        names = [vision_block(l, "mlp.hook_post") for l in range(layers)] + [vision_block(layers - 1, "hook_resid_post")]
        runner.forward(prompt, [Hook(name, partial(_keep, seen=seen, name=name), writes=False) for name in names])
        outliers = torch.linalg.vector_norm(seen[vision_block(layers - 1, "hook_resid_post")], dim=-1) > threshold
        acts = torch.stack([seen[vision_block(l, "mlp.hook_post")] for l in range(layers)])  # [layer, rows, tokens, width]
        summed = acts.abs()[:, outliers].sum(1)  # [layer, width]
        totals = summed if totals is None else totals + summed
        count += int(outliers.sum())
    if not count:
        raise ParameterError(f"no token of these images has a last-layer norm above {threshold:g}: no outliers to find "
                             "register neurons from; lower threshold or give other images")  # fmt: skip
    mean = totals / count
    top = mean.flatten().topk(min(top_k, mean.numel())).indices
    return tuple((int(i) // mean.shape[1], int(i) % mean.shape[1]) for i in top)
