"""Logits-level members: VCD, a generic `LogitsHook`, and `OnPass` to choose a pass.

VCD (visual contrastive decoding, Leng et al., CVPR 2024) needs two passes per
step, one with the image and one with a noised image. sinklens runs both in
one batch: `VCD.expand_inputs` appends a noised copy of every prompt (rows
`[B, 2B)`), each pass keeps its own KV cache rows, and at `hook_logits` VCD
combines the two halves and writes the result to both, so both passes pick the
same next token. Other members act on both passes unless wrapped in `OnPass`::

    stack = Stack(FindSinks(), VAR(), VCD(alpha=1.0, beta=0.1))                  # VAR in both passes
    stack = Stack(FindSinks(), OnPass("image", VAR()), VCD())                     # VAR in the image pass only
    NnsightRunner(lm).generate(inputs, stack)                                     # results: the B prompts

`LogitsHook(fn)` is the hook for other decoding methods: `fn(next_token_logits,
ctx)` sees the last position's logits `[batch, vocab]` at every step (ctx.step,
and ctx.passes when a VCD-style member is in the stack) and returns new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.ops.contrastive import DIFFUSION_STEPS, contrastive_logits, diffusion_noise
from sinklens.errors import HookContractError, PassError
from sinklens.interventions import params
from sinklens.run import Hook, Member, RunContext, hooks_of, ordered_hooks, writable

PassName = Literal["image", "noised"]
IMAGE_PASS, NOISED_PASS = get_args(PassName)

LogitsFn = Callable[[Tensor, RunContext], Tensor | None]


@dataclass(frozen=True, kw_only=True)
class VCD:
    """`(1 + alpha) * logits(image) - alpha * logits(noised image)` over the tokens plausible under the image.

    The noised image is VCD's forward diffusion of the processed pixels at
    `noise_step` (of 1000), with noise drawn from `seed`. `beta` is the adaptive
    plausibility cut-off (tokens below `beta` times the most likely token's
    probability under the image pass get -inf); `beta = 0` turns it off.
    Acts on every position's logits, so a forward pass gives contrastive
    logits too. Defaults are VCD's: alpha 1, beta 0.1, noise step 500.
    """

    # shared image prefixes (sinklens.run.prefixes): acts on the logits; its noised image is a prefix of its own
    prefix_safe: ClassVar[bool] = True

    alpha: float = 1.0
    beta: float = 0.1
    noise_step: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        params.non_negative("alpha", self.alpha)
        params.unit_interval("beta", self.beta)
        params.integer_in("noise_step", self.noise_step, 0, DIFFUSION_STEPS - 1)

    def expand_inputs(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The inputs with a noised copy of every prompt appended: rows [0, B) image, [B, 2B) noised."""
        if "pixel_values" not in inputs:
            raise PassError("VCD needs pixel_values in the inputs: pass the processor's output unchanged")
        batch = inputs["input_ids"].shape[0]
        pixels = inputs["pixel_values"]
        noise = _image_noise(pixels, inputs.get("image_grid_thw"), self.seed).to(pixels.device, pixels.dtype)
        expanded: dict[str, Tensor] = {}
        for key, value in inputs.items():
            if key == "pixel_values":
                expanded[key] = torch.cat([value, diffusion_noise(value, noise, step=self.noise_step)])
            elif isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
                expanded[key] = torch.cat([value, value])
            else:
                expanded[key] = value
        return expanded

    def passes(self, n_rows: int) -> dict[str, slice]:
        """The rows of each pass in a batch of `n_rows` expanded rows: the image pass first, the noised one after it."""
        half = n_rows // 2
        return {IMAGE_PASS: slice(0, half), NOISED_PASS: slice(half, 2 * half)}

    def hooks(self, ctx: RunContext) -> list[Hook]:
        if ctx.spec.is_prefix:  # image prefixes alone: their logits are not used, so there is nothing to contrast
            return []
        image = ctx.image.mask
        half = image.shape[0] // 2
        if image.shape[0] % 2 or not torch.equal(image[:half], image[half:]):
            raise PassError(
                f"VCD runs the image and the noised-image pass in one batch, but the {image.shape[0]} prompt(s) "
                "are not two equal halves. Pass the inputs through sinklens.expand_inputs(stack, inputs) "
                "before your own trace (the runners do it)."
            )
        if dict(ctx.passes) != self.passes(image.shape[0]):
            raise PassError(
                "VCD's two passes are not named in this run's context: make it with "
                "make_context(lm, expanded_inputs, stack) (the stack names the passes), as the runners do"
            )
        fn = partial(_contrast, alpha=self.alpha, beta=self.beta)
        return [Hook("hook_logits", fn)]


def _image_noise(pixels: Tensor, grid_thw: Tensor | None, seed: int) -> Tensor:
    """Gaussian noise for `pixels`, drawn per image so that no prompt's noise depends on its batch mates.

    Each image (Qwen2-VL: its rows, by `image_grid_thw`; LLaVA-NeXT: each of its
    patches, seeded `seed + patch`; otherwise each leading row: an image, or an
    InternVL tile) gets noise from a generator seeded afresh. A LLaVA prompt alone
    gets exactly the noise of `torch.randn(pixels.shape)` seeded with `seed`.
    """

    def draw(shape: torch.Size, offset: int = 0) -> Tensor:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed + offset), dtype=torch.float32)

    if grid_thw is not None:
        sizes = [int(n) for n in grid_thw.prod(-1)]
        return torch.cat([draw(chunk.shape) for chunk in pixels.split(sizes)])
    if pixels.dim() == 5:  # [image, patch, channel, height, width]
        return torch.stack([draw(pixels.shape[2:], patch) for patch in range(pixels.shape[1])]).expand(pixels.shape)
    return draw(pixels.shape[1:]).expand(pixels.shape)

def _contrast(logits: Tensor, ctx: RunContext, *, alpha: float, beta: float) -> Tensor:
    image, noised = logits[ctx.passes[IMAGE_PASS]], logits[ctx.passes[NOISED_PASS]]
    combined = contrastive_logits(image.float(), noised.float(), alpha=alpha, beta=beta).to(logits.dtype)
    return torch.cat([combined, combined])


@dataclass(frozen=True)
class LogitsHook:
    """A decoding method's function on the next-token logits, at every step.

    `fn(logits, ctx)` gets the last position's logits `[batch, vocab]` and returns
    new ones (or None). Earlier positions are left alone; for every position use
    `Edit("hook_logits", fn)`.
    """

    fn: LogitsFn
    repeatable: ClassVar[bool] = True  # a user's function: several compose, in list order

    def hooks(self, ctx: RunContext) -> list[Hook]:
        # next-token logits only: nothing of a prompt's image prefix
        return [Hook("hook_logits", partial(_next_token_logits, fn=self.fn), prefix_safe=True)]


def _next_token_logits(logits: Tensor, ctx: RunContext, *, fn: LogitsFn) -> Tensor | None:
    new = fn(logits[:, -1], ctx)
    if new is None:
        return None
    expected = logits.shape[:1] + logits.shape[2:]
    if not isinstance(new, Tensor) or new.shape != expected:
        got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
        raise HookContractError(
            f"LogitsHook function returned {got}; it gets and must return next-token logits of shape {tuple(expected)}"
        )
    out = writable(logits)
    out[:, -1] = new
    return out


class OnPass:
    """Run members in one pass of a multi-pass stack only (VCD: "image" or "noised").

    Writing hooks see the whole batch and the rows of the other passes are put
    back afterwards, so a member acts only on its pass's rows as long as it
    treats rows independently (every sinklens intervention does). Reading
    hooks run as they are.
    """

    def __init__(self, pass_name: PassName, *members: Member) -> None:
        if pass_name not in (IMAGE_PASS, NOISED_PASS):
            raise PassError(f"OnPass takes {IMAGE_PASS!r} or {NOISED_PASS!r} (VCD's passes), got {pass_name!r}")
        self.pass_name = pass_name
        self.members = members

    repeatable: ClassVar[bool] = True  # its hooks keep their members' labels (see sinklens.run.hooks_of)

    def __repr__(self) -> str:
        return f"OnPass({self.pass_name!r}, {', '.join(map(repr, self.members))})"

    def hooks(self, ctx: RunContext) -> list[Hook]:
        # each inner member keeps its own label and place, under this pass: OnPass("image", VAR()) and
        # OnPass("noised", VAR()) are two members; two VAR in one pass are refused like two VAR anywhere
        wrapped = []
        for hook in ordered_hooks([hook for member in self.members for hook in hooks_of(member, ctx)], ctx):
            fn = partial(_on_pass, fn=hook.fn, pass_name=self.pass_name) if hook.writes else hook.fn
            member = f"OnPass({self.pass_name!r}, {hook.member})" if hook.member else hook.member
            wrapped.append(replace(hook, fn=fn, member=member))
        return wrapped


def _on_pass(tensor: Tensor, ctx: RunContext, *, fn: Callable[..., Tensor | None], pass_name: PassName) -> Tensor:
    if pass_name not in ctx.passes:
        raise PassError(
            f"OnPass({pass_name!r}, ...) needs a member that runs that pass; add VCD(...) to the stack "
            f"(passes in this run: {sorted(ctx.passes) or 'none'})"
        )
    others = torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device)
    others[ctx.passes[pass_name]] = False
    original = tensor[others].clone()  # the member may edit in place
    result = fn(tensor, ctx)
    out = writable(tensor if result is None else result)
    out[others] = original
    return out
