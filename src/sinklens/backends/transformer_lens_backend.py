"""TransformerLens backend: run a stack on a `TransformerBridge` (TransformerLens 4).

The only module that imports transformer_lens, and only its public names. The bridge is built from the
loaded, in-memory HF model (`build_bridge_from_module`, never a hub call); it
rewires the module it wraps in place, so by default it wraps its own copy of
the weights and the `LoadedModel` stays usable with nnsight. Hook names are
sinklens' (`sinklens.hook_points`), mapped to the bridge's through the hook
catalogue's `[transformer_lens]` table; the functions see the same tensors in
the same layouts as under nnsight.

In one call::

    runner = TransformerLensRunner(lm)
    runner.forward(inputs, Stack(FindSinks(), VAR()))            # run_with_hooks
    runner.run_with_cache(inputs, stack, names=["blocks.2.attn.hook_pattern"])
    runner.generate(inputs, stack, max_new_tokens=8)              # bridge.generate, KV cache

or with the bridge's own API (one hook list and context per prompt: every
forward pass under the hooks is one step, the first is the prefill)::

    bridge = build_bridge(lm)
    ctx = make_context(lm, inputs)
    fwd_hooks = transformer_lens_hooks(lm, [FindSinks(), VAR()], ctx, bridge=bridge)
    logits = bridge.run_with_hooks(inputs["input_ids"], fwd_hooks=fwd_hooks,
                                   pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"])
    with bridge.hooks(fwd_hooks=transformer_lens_hooks(lm, stack, make_context(lm, inputs))):
        tokens = bridge.generate(inputs["input_ids"], pixel_values=..., attention_mask=..., do_sample=False)

Differences from nnsight that a hook can see: while decoding with the KV cache,
`attn.hook_v` holds only the new token's values (the bridge concatenates the
cache after that hook), where nnsight's holds every cached position; an edit
there in prefill also reaches the cache under TransformerLens but not under
nnsight. Every other point holds the same tensor in both backends.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import einops
import torch
from torch import Tensor

from sinklens.errors import BackendError, CatalogueError
from sinklens.hook_points import parse
from sinklens.models.loaded import LoadedModel
from sinklens.run import (
    CacheResult, ForwardResult, GenerationResult, Hook, Members, PlanPoint, Recorder, RunContext, apply_point, begin,
    finish_generation, make_context, module_weights, plan,
)
from sinklens.run.prefixes import PrefixStore, Sharing

__all__ = [
    "CacheResult",
    "ForwardResult",
    "GenerationResult",
    "TransformerLensRunner",
    "build_bridge",
    "make_context",
    "transformer_lens_hooks",
]

TLHook = tuple[str, Callable[..., Tensor | None]]
NO_SHARED_PREFIXES = (
    "the TransformerLens backend shares no image prefixes (bridge.generate starts every prompt from an empty "
    "cache): each prompt ran whole; NnsightRunner shares them"
)


@dataclass(frozen=True)
class _Layout:
    """einops patterns between the bridge's layout of a point and sinklens'."""

    to_sinklens: str
    to_bridge: str


# the bridge fires q/k/v and z per head: [batch, pos, head, d_head]
_LAYOUTS: dict[str, _Layout] = {
    "attn.hook_v": _Layout(
        "batch pos head d_head -> batch head pos d_head", "batch head pos d_head -> batch pos head d_head"
    ),
    "attn.hook_z": _Layout(
        "batch pos head d_head -> batch pos (head d_head)", "batch pos (head d_head) -> batch pos head d_head"
    ),
}


def build_bridge(loaded: LoadedModel, *, copy_model: bool = True) -> Any:
    """A `TransformerBridge` over the loaded model, built in memory.

    `copy_model=False` wraps `loaded.model` itself: the bridge then rewires it
    in place and nnsight's catalogue paths no longer resolve on it.
    """
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    model = copy.deepcopy(loaded.model) if copy_model else loaded.model
    architecture = loaded.catalogue.transformer_lens_architecture or type(model).__name__
    try:
        # no tokenizer: TransformerLens would reload it from the hub to add a BOS token;
        # sinklens tokenizes with the loaded processor and hands the bridge token ids
        return build_bridge_from_module(
            model, architecture, hf_config=model.config, post_adapter_hook=_wrap_unknown_vision_tower
        )
    except (ValueError, KeyError, NotImplementedError, ImportError) as e:
        raise BackendError(
            f"TransformerLens could not build a bridge for {architecture}: {e}. Use the nnsight backend "
            "(sinklens.NnsightRunner), which runs every architecture in hooks/."
        ) from e


# vision towers TransformerLens's LLaVA adapter maps submodule by submodule
_BRIDGED_VISION_TOWERS = ("clip_vision_model", "clip", "siglip_vision_model", "siglip")


def _wrap_unknown_vision_tower(adapter: Any) -> None:
    """Let the bridge carry a vision tower its adapter does not know (toy-llava's DINOv2) as one opaque block.

    sinklens hooks only the language model; the tower just has to run. The bridge
    otherwise assumes CLIP's submodule names and fails on any other tower.
    """
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    vision_config = getattr(adapter.cfg, "vision_config", None)
    mapping = getattr(adapter, "component_mapping", None) or {}
    if vision_config is None or "vision_encoder" not in mapping:
        return
    if getattr(vision_config, "model_type", "clip_vision_model") not in _BRIDGED_VISION_TOWERS:
        mapping["vision_encoder"] = GeneralizedComponent(name=mapping["vision_encoder"].name, config=adapter.cfg)


def transformer_lens_hooks(
    loaded: LoadedModel, interventions: Members, ctx: RunContext, *, bridge: Any = None, first_step: int = 0
) -> list[TLHook]:
    """The `fwd_hooks` that run a stack on a bridge: one function per bridge hook point, plus the step counter.

    Give `bridge` to check every name against it (a stack with a hook that
    reads weights, such as AttentionContribution, needs it: the weights are
    those of the bridge's component fed by the point). Every forward pass under
    these hooks advances `ctx.step`; the first is `first_step` (0: the prefill;
    give 1 to decode by hand from a cache that a prefill with `ctx` filled).
    """
    catalogue = loaded.catalogue
    counter = _Counter(forwards=first_step)
    fwd_hooks: list[TLHook] = [(catalogue.transformer_lens_entry, partial(_count_step, ctx=ctx, counter=counter))]
    groups = [(catalogue.transformer_lens_name(point.point), point) for point in plan(interventions, ctx)]
    if bridge is not None:
        missing = [tl_name for tl_name in [fwd_hooks[0][0], *(tl_name for tl_name, _ in groups)]
                   if tl_name not in bridge.hook_dict]  # fmt: skip
        if missing:
            raise CatalogueError(
                f"{catalogue.source} [transformer_lens] names {missing}, which this bridge does not have; "
                "fix the names in the catalogue file (bridge.hook_dict lists the bridge's)"
            )
    fed_by: dict[int, Any] | None = None
    for tl_name, point in groups:
        module = None
        if point.wants_weights:
            if bridge is None:
                raise BackendError(
                    f"a hook at {point.name!r} reads the weights of the module that point feeds: give "
                    "transformer_lens_hooks(..., bridge=bridge) so they can be found"
                )
            fed_by = _modules_by_input_hook(bridge) if fed_by is None else fed_by
            module = fed_by.get(id(bridge.hook_dict[tl_name]))
        fn = partial(_run_point, planned=point, ctx=ctx, layout=_LAYOUTS.get(point.point.kind), module=module)
        fwd_hooks.append((tl_name, fn))
    return fwd_hooks


def _modules_by_input_hook(bridge: Any) -> dict[int, Any]:
    """Each bridge component by (the id of) its input hook: the one fed by attn.hook_z is the output projection."""
    fed_by = {}
    for module in bridge.modules():
        hook_in = getattr(module, "hook_in", None)
        if hook_in is not None:
            fed_by.setdefault(id(hook_in), module)
    return fed_by


@dataclass
class _Counter:
    forwards: int = 0


def _count_step(tensor: Tensor, hook: Any, *, ctx: RunContext, counter: _Counter) -> None:
    ctx.enter_step(counter.forwards)
    counter.forwards += 1


def _run_point(
    tensor: Tensor, hook: Any, *, planned: PlanPoint, ctx: RunContext, layout: _Layout | None, module: Any
) -> Tensor | None:
    value = einops.rearrange(tensor, layout.to_sinklens) if layout else tensor
    weights = module_weights(module, repr(planned.name)) if planned.wants_weights else None
    result = apply_point(planned.hooks, value, ctx, weights)
    if result is None:
        return None
    if layout is None:
        return result
    return einops.rearrange(result, layout.to_bridge, head=tensor.shape[2])


def _model_kwargs(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """What the bridge takes besides the token ids: pixel_values, attention_mask and any other model input."""
    return {key: value for key, value in inputs.items() if key != "input_ids"}


class TransformerLensRunner:
    """One-call runs of a stack on a loaded model through a TransformerBridge."""

    def __init__(self, loaded: LoadedModel, *, bridge: Any = None) -> None:
        self.loaded = loaded
        self.bridge = bridge if bridge is not None else build_bridge(loaded)

    def hooks(self, interventions: Members, ctx: RunContext) -> list[TLHook]:
        return transformer_lens_hooks(self.loaded, interventions, ctx, bridge=self.bridge)

    def forward(self, inputs: Mapping[str, Tensor], interventions: Members = ()) -> ForwardResult:
        """One forward pass over the prompt with the stack applied (`run_with_hooks`)."""
        run = begin(self.loaded, inputs, interventions)
        with torch.no_grad():
            logits = self.bridge.run_with_hooks(
                run.inputs["input_ids"], fwd_hooks=self.hooks(interventions, run.ctx), **_model_kwargs(run.inputs),
            )
        return ForwardResult(logits=logits[: run.n_prompts], ctx=run.ctx)

    def run_with_cache(
        self, inputs: Mapping[str, Tensor], interventions: Members = (), *, names: Sequence[str]
    ) -> CacheResult:
        """A forward pass with the stack applied and the activations at `names` (sinklens names and layouts).

        The cache holds what the next computation used: the tensor after every
        member of the stack at that point ran.
        """
        run = begin(self.loaded, inputs, interventions)
        points = {name: parse(name) for name in names}
        tl_names = {self.loaded.catalogue.transformer_lens_name(point): name for name, point in points.items()}
        with torch.no_grad(), self.bridge.hooks(fwd_hooks=self.hooks(interventions, run.ctx)):
            logits, activations = self.bridge.run_with_cache(
                run.inputs["input_ids"], names_filter=list(tl_names), **_model_kwargs(run.inputs)
            )
        cache = {}
        for tl_name, name in tl_names.items():
            layout = _LAYOUTS.get(points[name].kind)
            tensor = activations[tl_name]
            cache[name] = einops.rearrange(tensor, layout.to_sinklens) if layout else tensor
        return CacheResult(logits=logits[: run.n_prompts], ctx=run.ctx, cache=cache)

    def generate(
        self,
        inputs: Mapping[str, Tensor],
        interventions: Members = (),
        *,
        max_new_tokens: int = 16,
        prefixes: PrefixStore | None = None,
    ) -> GenerationResult:
        """Greedy decoding with the KV cache (`bridge.generate`); the stack acts in prefill and at every step.

        Shares no image prefixes: `bridge.generate` starts every prompt from an
        empty cache, so with `prefixes` each prompt still runs whole, and
        `result.sharing` says so (the answers are the same; NnsightRunner shares).

        Runs exactly `max_new_tokens` steps, choosing with EOS suppressed as
        HF's `min_new_tokens` does, so both backends decode the same tokens.
        The prefill computes the logits of the last position only, as HF's
        `generate` does (`logits_to_keep=1`): `hook_logits` holds `[batch, 1,
        vocab]` on every step under both backends, and the unembedding runs on
        the same shape (a full-sequence GEMM sums in another order: 3e-5 apart
        on toy-llava's logits).
        """
        run = begin(self.loaded, inputs, interventions)
        recorder = Recorder()
        eos = self.loaded.tokenizer.eos_token_id
        suppress = Hook("hook_logits", partial(_suppress_token, token=eos))
        fwd_hooks = self.hooks([interventions, recorder, suppress], run.ctx)
        with torch.no_grad(), self.bridge.hooks(fwd_hooks=fwd_hooks):
            self.bridge.generate(
                run.inputs["input_ids"], max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=False,
                use_past_kv_cache=True, verbose=False, return_type="tokens", **_model_kwargs(run.inputs),
                # passed to the model on the prefill only (with the pixels); every later step is one position
                logits_to_keep=1,
            )
        result = finish_generation(self.loaded, run, recorder.store)
        if prefixes is None:
            return result
        return replace(result, sharing=Sharing(False, prompts=len(run.inputs["input_ids"]), reason=NO_SHARED_PREFIXES))


def _suppress_token(logits: Tensor, ctx: RunContext, *, token: int) -> Tensor:
    """What HF's min_new_tokens does to the scores it chooses from (after the recorder has read them)."""
    logits[:, -1, token] = float("-inf")
    return logits
