"""The run core: hooks, the plan of a run, the run state, and how a point's functions are applied.

Everything a backend needs besides finding a point, converting its layout and
writing it back. A run goes:

1. `begin(loaded, inputs, members)`: the model inputs for the stack (one member
   may add passes: VCD appends a noised copy of every prompt) and the run's
   `RunContext`, whose `RunSpec` (image spans, padding, text start, model facts)
   is computed here, once.
2. `plan(members, ctx)`: every member's `Hook`s in run order, grouped by hook
   point (`Plan`, a tuple of `PlanPoint`s). A stack takes each intervention at
   most once per hook point (see `ordered_hooks`).
3. at each point, the backend reads the tensor, calls `apply_point` with that
   point's hooks, and writes back what it returns (None: nothing changed).
4. what the members found (`RunContext.found`: sinks, phi, records) comes back
   to the client (`state()` / `update()` for a remote run) and into the result.

A hook function `fn(tensor, ctx)` reads the rows it acts on through
`ctx.query_rows(tensor)` and writes them with `write_rows`, so it works
whether the tensor at an attention point holds every query row or only the
rows from `ctx.held_from` on.

>>> import torch
>>> from sinklens.models.spans import ImageSpans
>>> image = torch.tensor([[False, True, True, False, False]])
>>> ctx = RunContext(RunSpec.of(ImageSpans(mask=image), torch.ones(1, 5, dtype=torch.bool), n_layers=2))
>>> ctx.spec.text_from, ctx.query_rows(torch.zeros(1, 1, 5, 5)).start
(3, 3)
>>> double = Hook("blocks.1.hook_resid_pre", lambda resid, ctx: resid * 2)
>>> [(point.name, len(point.hooks)) for point in plan([double], ctx)]
[('blocks.1.hook_resid_pre', 1)]
>>> apply_point(plan([double], ctx)[0].hooks, torch.ones(1, 5, 3), ctx).sum().item()
30.0
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sinklens.errors import HookContractError, LayerError, MissingSinksError, NonFiniteError, StackError
from sinklens.hook_points import HookPoint, parse
from sinklens.models.spans import ImageSpans
from sinklens.ops._typing import Bool

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel

HookFn = Callable[[Tensor, "RunContext"], Tensor | None]
ModuleWeights = tuple[Tensor, Tensor | None]  # (weight, bias) of the module a hook point feeds; bias may be None

# ---- hooks --------------------------------------------------------------------------------------

_occurrences = itertools.count()


@dataclass(frozen=True)
class Hook:
    """One function on one hook point.

    `prefill_only` hooks are skipped while decoding. `writes=False` declares a
    hook that only reads (FindSinks, recorders): returning a tensor from it is
    an error, so a stack's declared reads and writes are the ones that happen.
    `weights=True` declares a function that also needs the parameters of the
    module whose input the point is (at `attn.hook_z`: the attention's output
    projection, W_O); it is called `fn(tensor, ctx, weight=..., bias=...)`
    (`bias` None where the module has none). The backend reads them where the
    model runs, on the server in a remote run: an intervention holds no
    weights, and a request carries none.

    `member` names the stack member the hook comes from (for messages; empty
    for a user's own function) and `occurrence` tells that member's place in
    the stack apart from another member of the same kind; `plan` fills both.

    `query_rows=True` declares a function at an attention point that reads and
    writes only `ctx.query_rows(tensor)` (the text queries in prefill, the new
    token while decoding), as every built-in intervention does: the rows route
    then computes only those rows. Without it (a user's function, which may
    read any row) the rows route computes that layer's every row, eager's full
    pattern.
    """

    name: str
    fn: HookFn
    prefill_only: bool = False
    writes: bool = True
    weights: bool = False
    query_rows: bool = False
    member: str = ""
    occurrence: int | None = field(default=None, compare=False, repr=False)

    @property
    def point(self) -> HookPoint:
        """The parsed hook point (layer, stage) this hook runs at."""
        return parse(self.name)


@runtime_checkable
class Intervention(Protocol):
    """Anything that returns hooks for a run."""

    def hooks(self, ctx: RunContext) -> list[Hook]: ...


Member = Any  # an Intervention, a Hook, a (hook name, fn) pair, or an iterable of members (a Stack)
Members = Iterable[Member]  # what runners and backends take: a list, a tuple or a Stack of members


def _is_pair(member: Any) -> bool:
    return isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], str) and callable(member[1])


def hooks_of(member: Member, ctx: RunContext) -> list[Hook]:
    """The hooks of one stack member, in its own order, each labelled with the member it comes from.

    An intervention's hooks get its class name and one occurrence number, unless
    they already carry them (a Stack, or a wrapper such as OnPass, labels its
    own) or the member composes freely (`repeatable = True`: Edit, LogitsHook,
    Stack). A `Hook` or a `(hook name, fn)` pair is a user's function: unlabelled.
    """
    if isinstance(member, Hook):
        return [member]
    if _is_pair(member):
        return [Hook(member[0], member[1])]
    if isinstance(member, Intervention):
        hooks = member.hooks(ctx)
        bad = [hook for hook in hooks if not isinstance(hook, Hook)]
        if bad:
            raise StackError(
                f"{type(member).__name__}.hooks(ctx) returned {type(bad[0]).__name__} {bad[0]!r}; it must "
                "return a list of sinklens.Hook(name, fn)"
            )
        if getattr(member, "repeatable", False):
            return hooks
        occurrence = next(_occurrences)
        label = type(member).__name__
        return [hook if hook.occurrence is not None else replace(hook, member=hook.member or label, occurrence=occurrence)
                for hook in hooks]  # fmt: skip
    if isinstance(member, (list, tuple)):
        return [hook for inner in member for hook in hooks_of(inner, ctx)]
    raise StackError(
        f"a stack member must be an intervention (an object with hooks(ctx)), a sinklens.Hook or a "
        f"(hook name, fn) pair; got {type(member).__name__} {member!r}"
    )


def ordered_hooks(members: Members | Member, ctx: RunContext) -> list[Hook]:
    """Every hook of a stack in run order: (layer, stage), then list order (stable sort).

    The one rule for repeated members: a stack holds at most one member of
    each kind (its class; OnPass wrappers count per pass) at any hook point.
    Two of one kind at one point (two VAR, two FindSinks, two VCD) would each
    act on the other's output or overwrite what the other found, so they are
    refused; give them disjoint layers, or merge them into one member. A user's
    own functions (pairs, `Hook`, `Edit`, `LogitsHook`) compose freely, in list
    order.
    """
    if isinstance(members, Hook) or _is_pair(members) or not isinstance(members, Iterable):
        members = [members]  # one member given on its own
    hooks = [hook for member in members for hook in hooks_of(member, ctx)]
    owners: dict[tuple[str, str], int] = {}
    for hook in hooks:
        point = hook.point
        if point.in_block and not 0 <= point.layer < ctx.n_layers:
            raise LayerError(
                f"hook {hook.name!r} names layer {point.layer}, but the model has layers 0..{ctx.n_layers - 1}; "
                "use a layer in that range"
            )
        if hook.occurrence is None:
            continue
        first = owners.setdefault((hook.member, hook.name), hook.occurrence)
        if first != hook.occurrence:
            raise StackError(
                f"the stack holds two {hook.member} members acting at {hook.name!r}; a stack takes each "
                "intervention at most once per hook point (the second would act on the first's output, or "
                f"overwrite what it found). Merge them into one {hook.member}, or give them disjoint layers."
            )
    return sorted(hooks, key=lambda hook: (hook.point.layer, hook.point.stage))


@dataclass(frozen=True)
class PlanPoint:
    """One hook point of a run and the hooks applied there, in order."""

    name: str
    hooks: tuple[Hook, ...]

    @property
    def point(self) -> HookPoint:
        return parse(self.name)

    @property
    def prefill_only(self) -> bool:
        """Whether every hook here is prefill-only (the point is then not even read while decoding)."""
        return all(hook.prefill_only for hook in self.hooks)

    @property
    def wants_weights(self) -> bool:
        """Whether a hook here needs the weights of the module the point feeds (read only then)."""
        return any(hook.weights for hook in self.hooks)


Plan = tuple[PlanPoint, ...]


def plan(members: Members | Member, ctx: RunContext) -> Plan:
    """The plan of a stack for one run: its hooks in run order, grouped by hook point."""
    points: list[PlanPoint] = []
    for name, group in itertools.groupby(ordered_hooks(members, ctx), key=lambda hook: hook.name):
        points.append(PlanPoint(name, tuple(group)))
    return tuple(points)


# -inf means "masked" before a softmax or a choice; anywhere else a non-finite value is a bug
_NEG_INF_ALLOWED = ("attn.hook_attn_scores", "hook_logits")


def apply_point(
    hooks: Sequence[Hook], value: Tensor, ctx: RunContext, weights: ModuleWeights | None = None
) -> Tensor | None:
    """Apply the functions of one hook point in order; the new tensor, or None if none returned one.

    Skips `prefill_only` hooks while decoding, and refuses a tensor from a
    read-only hook, one whose shape differs from what the point holds, and one
    holding NaN or infinity (`NonFiniteError`, naming the hook; -inf is a mask
    at `attn.hook_attn_scores` and `hook_logits`, so it passes there).
    `weights` are the (weight, bias) of the module the point feeds, which the
    backend reads (`module_weights`) when a hook asks for them.
    """
    changed = False
    for hook in hooks:
        if hook.prefill_only and not ctx.prefill:
            continue
        if hook.weights:
            if weights is None:
                raise HookContractError(
                    f"{describe_hook(hook)} asks for the weights of the module this point feeds "
                    "(Hook(weights=True)), but the backend gave none: run it through NnsightRunner or "
                    "TransformerLensRunner (transformer_lens_hooks needs bridge=)"
                )
            result = hook.fn(value, ctx, weight=weights[0], bias=weights[1])
        else:
            result = hook.fn(value, ctx)
        if result is None:
            continue
        if not hook.writes:
            raise HookContractError(
                f"{describe_hook(hook)} is declared read-only (writes=False) but returned a "
                f"{type(result).__name__}; return None, or declare Hook(..., writes=True)"
            )
        if not isinstance(result, Tensor) or result.shape != value.shape:
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise HookContractError(
                f"{describe_hook(hook)} returned {got}, but the point holds a tensor of shape "
                f"{tuple(value.shape)}; return a tensor of the same shape, or None to leave it unchanged"
            )
        _check_finite(result, hook)
        value, changed = result, True
    return value if changed else None


def _check_finite(value: Tensor, hook: Hook) -> None:
    if not value.is_floating_point() or value.numel() == 0 or value.device.type == "meta":
        return
    low, high = torch.aminmax(value.detach())  # one pass; both propagate NaN
    masked_ok = hook.point.kind in _NEG_INF_ALLOWED
    if bool(torch.isfinite(high)) and (masked_ok or bool(torch.isfinite(low))):
        return
    found = "NaN" if bool(torch.isnan(high)) else "inf" if not bool(torch.isfinite(high)) else "-inf"
    raise NonFiniteError(
        f"{describe_hook(hook)} wrote {found} values; sinklens refuses non-finite values at every hook point "
        f"(-inf only as a mask, at {' and '.join(_NEG_INF_ALLOWED)}). Check the function for a division by "
        "zero or a log of zero, or return None to leave the tensor unchanged."
    )


def describe_hook(hook: Hook) -> str:
    """'VAR's hook function _redistribute_pattern at 'blocks.3.attn.hook_pattern'', for messages."""
    fn = hook.fn
    while isinstance(fn, partial):
        fn = fn.func
    owner = f"{hook.member}'s hook function" if hook.member else "hook function"
    return f"{owner} {getattr(fn, '__qualname__', repr(fn))} at {hook.name!r}"


def module_weights(module: Any, where: str) -> ModuleWeights:
    """(weight, bias) of the module whose input a hook point is: an nnsight envoy or a bridge component.

    Called next to the model (on the server in a remote run); `where` names
    the point for the error.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise HookContractError(
            f"a hook at {where} asks for the weights of the module this point feeds (Hook(weights=True)), "
            "but that is no module with a weight; ask for them at the input of one, such as "
            "blocks.{layer}.attn.hook_z (the attention's output projection)"
        )
    bias = getattr(module, "bias", None)
    return weight.detach(), bias.detach() if isinstance(bias, Tensor) else None


def resolve_layers(layers: Sequence[int] | None, n_layers: int, default: range) -> tuple[int, ...]:
    """Explicit layers checked against the model, or the default range clipped to it."""
    if layers is None:
        return tuple(layer for layer in default if 0 <= layer < n_layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise LayerError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}: pass layers in that range")
    return tuple(layers)


# ---- the run state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What a run is about, computed once from its inputs: image spans, padding, model facts."""

    image: ImageSpans
    attention_mask: Bool[Tensor, "batch pos"]
    n_layers: int
    text_start: Tensor  # [batch]: per prompt, the first position after its last image
    text_from: int  # the earliest text start of the batch: the first query row an intervention acts on
    sink_dims: tuple[int, ...] | None = None
    d_model: int | None = None
    default_tau: float | None = None  # the model's default sink threshold (absolute), if it has one
    model_name: str | None = None

    @classmethod
    def of(
        cls, image: ImageSpans, attention_mask: Tensor, *, n_layers: int, sink_dims: tuple[int, ...] | None = None,
        d_model: int | None = None, default_tau: float | None = None, model_name: str | None = None,
    ) -> RunSpec:
        """The spec of a batch whose image spans are known (the text start is derived here, once)."""
        text_start = image.text_start
        return cls(image=image, attention_mask=attention_mask.bool(), n_layers=n_layers, text_start=text_start,
                   text_from=int(text_start.min()), sink_dims=sink_dims, d_model=d_model, default_tau=default_tau,
                   model_name=model_name)  # fmt: skip


@dataclass
class Findings:
    """What the members of a run found, as plain data that can travel back from a server.

    `sinks[l]` / `phi[l]`: FindSinks' sink masks `[batch, pos]` and phi values
    per layer; `records[name]`: every other member's results under its own
    name ("var", "head_scores", "attention_maps", ...).
    """

    sinks: dict[int, Tensor] = field(default_factory=dict)
    phi: dict[int, Tensor] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryRows:
    """The query rows of an attention tensor a hook acts on: `tensor[..., start:, :]`, and which are text."""

    start: int  # first row of the tensor acted on
    queries: Bool[Tensor, "batch rows"]  # for the rows from `start`: text queries (prefill) or new tokens

    def of(self, tensor: Tensor) -> Tensor:
        """The rows `tensor[..., start:, :]` (a view)."""
        return tensor[..., self.start :, :]


@dataclass
class RunContext:
    """What the hook functions of one run share: the spec, what members found, and where the run is.

    `spec` is fixed for the run; `found` is filled by the members (and is what
    a remote run sends back); `scratch` holds what a member keeps between two
    points of one step (never sent anywhere). `step` is 0 during prefill and k
    during the k-th decoding step; `passes` names the batch rows of each pass
    when a member runs several (VCD: "image", "noised"). `held_from` is the
    prompt position of the first query row that the tensor at an attention
    point (`attn.hook_attn_scores`, `attn.hook_pattern`) holds in prefill: 0
    when it holds every row (eager attention); a backend that computes only the
    rows interventions touch sets it, and `query_rows` does the rest.
    """

    spec: RunSpec
    found: Findings = field(default_factory=Findings)
    step: int = 0
    passes: dict[str, slice] = field(default_factory=dict)
    held_from: int = 0
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "scratch": {}}  # scratch space never travels

    # the spec and the findings, under the names interventions and users read
    image = property(lambda self: self.spec.image, doc="The prompt's image spans (`ImageSpans`).")
    attention_mask = property(lambda self: self.spec.attention_mask, doc="`[batch, pos]`, False on padding.")
    n_layers = property(lambda self: self.spec.n_layers)
    sink_dims = property(lambda self: self.spec.sink_dims)
    d_model = property(lambda self: self.spec.d_model)
    default_tau = property(lambda self: self.spec.default_tau)
    model_name = property(lambda self: self.spec.model_name)
    sinks = property(lambda self: self.found.sinks, doc="Layer -> sink mask `[batch, pos]` (FindSinks).")
    phi = property(lambda self: self.found.phi, doc="Layer -> phi `[batch, pos]`, fp32 (FindSinks).")
    records = property(lambda self: self.found.records, doc="Each member's results by name.")

    @property
    def prompt_length(self) -> int:
        return self.spec.image.mask.shape[-1]

    @property
    def prefill(self) -> bool:
        return self.step == 0

    def keys(
        self, mask: Bool[Tensor, "batch pos"], key_length: int, device: torch.device | None = None
    ) -> Bool[Tensor, "batch key"]:
        """A prompt-position mask padded with False up to `key_length` keys (on `device` if given).

        Tokens generated later are never image tokens or sinks: sink sets are
        found on the prompt and reused while decoding. Under a device map each
        layer's tensors live on that layer's device; masks are moved there.
        """
        mask = mask.to(device) if device is not None else mask
        extra = key_length - mask.shape[-1]
        return torch.nn.functional.pad(mask, (0, extra)) if extra > 0 else mask[:, :key_length]

    def text_queries(self, query_length: int, device: torch.device | None = None) -> Bool[Tensor, "batch query"]:
        """Queries VAR acts on: each prompt's text after its last image (prefill), every new token (decoding)."""
        device = device or self.spec.image.mask.device
        if not self.prefill:
            return torch.ones(self.spec.image.mask.shape[0], query_length, dtype=torch.bool, device=device)
        positions = torch.arange(query_length, device=device)
        after_image = positions[None, :] >= self.spec.text_start.to(device)[:, None]
        return after_image & self.spec.attention_mask[:, :query_length].to(device)

    def query_rows(self, tensor: Tensor) -> QueryRows:
        """The rows of an attention tensor `[batch, head, query, key]` that interventions act on.

        Prefill: the rows from the earliest text start of the batch (each
        prompt's own text queries marked in `queries`); decoding: the new
        token's row. Works whether the tensor holds every query row or only
        those from `held_from` on; the masks are on the tensor's device.
        """
        n_rows = tensor.shape[-2]
        if not self.prefill:
            return QueryRows(0, self.text_queries(n_rows, tensor.device))
        start = max(self.spec.text_from - self.held_from, 0)
        queries = self.text_queries(self.held_from + n_rows, tensor.device)[:, self.held_from + start :]
        return QueryRows(start, queries)

    def layer_sinks(self, layer: int, who: str) -> Tensor:
        """The sink set of `layer` that FindSinks left, or a clear error naming the fix."""
        sinks = self.found.sinks.get(layer)
        if sinks is None:
            raise MissingSinksError(
                f"{who} at layer {layer} needs that layer's sink set: put FindSinks(...) before {who} in the "
                f"stack, with its layers covering {layer}"
            )
        return sinks

    def record(self, key: str, value: Any) -> None:
        """Append a value to a named list of records (one entry per hook call)."""
        self.found.records.setdefault(key, []).append(value)

    def state(self) -> dict[str, Any]:
        """What the interventions found, as plain data: sinks, phi and records by name.

        A remote run sends this back from the server (as torch-saved plain data,
        so records must hold tensors, numbers, strings and containers of them);
        `update` folds it into the client's context.
        """
        found = self.found
        return {"sinks": dict(found.sinks), "phi": dict(found.phi), "records": dict(found.records)}

    def update(self, state: Mapping[str, Any]) -> None:
        """Take in what `state()` returned (from a remote run, or from this context itself)."""
        self.found.sinks.update(state["sinks"])
        self.found.phi.update(state["phi"])
        self.found.records.update(state["records"])


def writable(tensor: Tensor) -> Tensor:
    """The tensor to edit: itself when autograd is off (no copy), a clone when something may need the original."""
    return tensor.clone() if torch.is_grad_enabled() else tensor


def write_rows(tensor: Tensor, rows: QueryRows, new_rows: Tensor) -> Tensor:
    """`tensor` with its rows from `rows.start` replaced by `new_rows` (cast to its dtype); in place when it can."""
    out = writable(tensor)
    out[..., rows.start :, :] = new_rows.to(tensor.dtype)
    return out


# ---- the inputs of a run ------------------------------------------------------------------------


def make_context(loaded: LoadedModel, inputs: Mapping[str, Tensor]) -> RunContext:
    """The run context of one prompt batch: image spans (checked against the images), padding, model facts."""
    spans = loaded.check_inputs(inputs)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(inputs["input_ids"])
    spec = RunSpec.of(spans, attention_mask, n_layers=loaded.n_layers, sink_dims=loaded.sink_dims,
                      d_model=loaded.d_model, default_tau=loaded.default_tau, model_name=loaded.name)  # fmt: skip
    return RunContext(spec)


def _flatten(members: Any) -> Iterator[Any]:
    """Every leaf member of a stack, through lists, tuples, Stacks and wrappers that hold `members`."""
    if isinstance(members, Hook) or _is_pair(members):
        return
    if isinstance(members, (list, tuple)) or hasattr(members, "members"):
        for member in members if isinstance(members, (list, tuple)) else members.members:
            yield from _flatten(member)
        return
    yield members


def expand_inputs(members: Any, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Model inputs for a stack: unchanged, or as the one member that runs extra passes makes them.

    VCD runs its noised-image pass in the same batch as the image pass: it
    returns the inputs with a noised copy of every prompt appended. Runners call
    this; call it yourself before your own trace or bridge run of such a stack.
    """
    expanders = [member for member in _flatten(members) if callable(getattr(member, "expand_inputs", None))]
    if len(expanders) > 1:
        raise StackError(
            f"{len(expanders)} members run extra passes ({', '.join(map(repr, expanders))}); a stack "
            "holds at most one (one VCD), since each would double the batch its own way"
        )
    if not expanders:
        return dict(inputs)
    return expanders[0].expand_inputs(inputs)


@dataclass(frozen=True)
class RunInputs:
    """What a runner feeds the model for a stack, how many rows are the user's prompts, and the run's context."""

    inputs: dict[str, Tensor]
    n_prompts: int
    ctx: RunContext


def begin(loaded: LoadedModel, inputs: Mapping[str, Tensor], members: Any) -> RunInputs:
    """The inputs of a run (extra passes expanded) and its context, whose spec is computed here once."""
    expanded = expand_inputs(members, inputs)
    return RunInputs(expanded, inputs["input_ids"].shape[0], make_context(loaded, expanded))


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardResult:
    logits: Tensor  # [batch, pos, vocab], the user's prompts only
    ctx: RunContext  # over every row the model ran (2 x batch under VCD)


@dataclass(frozen=True)
class CacheResult:
    """A forward pass with the stack applied and the activations at the named hook points."""

    logits: Tensor
    ctx: RunContext
    cache: dict[str, Tensor]  # hook name -> tensor in sinklens' layout (sinklens.hook_points), every row


@dataclass(frozen=True)
class GenerationResult:
    """Greedy generation: tokens up to (not including) the first EOS of each example."""

    tokens: list[list[int]]
    step_logits: Tensor  # [batch, step, vocab], the logits each step chose from (before EOS suppression)
    texts: list[str]
    ctx: RunContext


@dataclass(frozen=True)
class Recorder:
    """Keeps the last-position logits of every step (a member that only reads; put it last)."""

    store: list[Tensor] = field(default_factory=list)
    repeatable = True  # the runner's own reader, not a user's member

    def hooks(self, ctx: RunContext) -> list[Hook]:
        return [Hook("hook_logits", partial(_keep_last_logits, store=self.store), writes=False)]


def _keep_last_logits(logits: Tensor, ctx: RunContext, *, store: list[Tensor]) -> None:
    store.append(logits[:, -1].detach().clone())


def finish_generation(loaded: LoadedModel, run: RunInputs, store: Sequence[Tensor]) -> GenerationResult:
    """Tokens and texts from the recorded step logits, for the user's prompts."""
    step_logits = torch.stack(list(store), dim=1)[: run.n_prompts]
    eos = loaded.tokenizer.eos_token_id
    # EOS is suppressed while choosing (min_new_tokens); the raw argmax says where greedy decoding stops
    tokens = []
    for row in step_logits.argmax(-1).tolist():
        tokens.append(row[: row.index(eos)] if eos in row else row)
    texts = [loaded.decode(torch.tensor(row, dtype=torch.long)) for row in tokens]
    return GenerationResult(tokens=tokens, step_logits=step_logits, texts=texts, ctx=run.ctx)
