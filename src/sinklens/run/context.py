"""The state of one run: what it is about (`RunSpec`), what its members found (`Findings`), and where it is.

Three parts with three owners:

- `RunSpec`, fixed for the run and computed once from its inputs: image spans,
  padding, each prompt's text start, the model's facts, the batch rows of each
  pass when a member runs several (VCD).
- `Findings`, filled by the members through one method, `add`: FindSinks' sink
  sets and phi per layer, every other member's records under its own name. It
  is plain data, what a remote run sends back.
- `Cursor`, where the run is: the step (0 in prefill, k at the k-th decoding
  step) and, at an attention point, the prompt position of the first query row
  the tensor holds. Only the runner advances it (`RunContext.enter_step`,
  `RunContext.enter_point`); hook functions read `ctx.step`, `ctx.prefill` and
  `ctx.held_from`.

A hook function reads the rows it acts on through `ctx.query_rows(tensor)` and
writes them with `write_rows`, so it works whether the tensor at an attention
point holds every query row (eager) or only the rows from `ctx.held_from` on
(the rows route).

>>> import torch
>>> from sinklens.models.spans import ImageSpans
>>> image = torch.tensor([[False, True, True, False, False]])
>>> ctx = RunContext(RunSpec.of(ImageSpans(mask=image), torch.ones(1, 5, dtype=torch.bool), n_layers=2))
>>> ctx.spec.text_from, ctx.query_rows(torch.zeros(1, 1, 5, 5)).start
(3, 3)
>>> ctx.found.add("head_scores", torch.zeros(1, 4), layer=1)
>>> ctx.found.add("var", {"layer": 1, "n_image_centric": 3})
>>> sorted(ctx.records), ctx.records["var"]
(['head_scores', 'var'], [{'layer': 1, 'n_image_centric': 3}])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sinklens.errors import HookContractError, MissingSinksError
from sinklens.models.spans import ImageSpans
from sinklens.ops._typing import Bool

# FindSinks' findings, kept apart from the records because every sink-reading member reads them by layer
PER_LAYER_FINDINGS = ("sinks", "phi")


@dataclass(frozen=True)
class RunSpec:
    """What a run is about, computed once from its inputs: image spans, padding, model facts, passes."""

    image: ImageSpans
    attention_mask: Bool[Tensor, "batch pos"]
    n_layers: int
    text_start: Tensor  # [batch]: per prompt, the first position after its last image
    text_from: int  # the earliest text start of the batch: the first query row an intervention acts on
    sink_dims: tuple[int, ...] | None = None
    d_model: int | None = None
    default_tau: float | None = None  # the model's default sink threshold (absolute), if it has one
    model_name: str | None = None
    # the batch rows of each pass when a member runs several (VCD: "image", "noised"); empty otherwise
    passes: Mapping[str, slice] = field(default_factory=dict)
    # a continuation of cached image prefixes (sinklens.run.prefixes): the prompt position of the first row the
    # prefill's tensors hold (the cache holds the positions before it); 0 for a whole prompt
    first_position: int = 0
    # the image prefixes alone, to be cached: the prompts go on after these positions, so no row is a query
    is_prefix: bool = False
    n_vision_layers: int = 0  # the vision tower's layers (0: not known)
    tower_type: str | None = None  # the vision tower's kind (vision_config.model_type)

    @classmethod
    def of(
        cls, image: ImageSpans, attention_mask: Tensor, *, n_layers: int, sink_dims: tuple[int, ...] | None = None,
        d_model: int | None = None, default_tau: float | None = None, model_name: str | None = None,
        passes: Mapping[str, slice] | None = None, first_position: int = 0, is_prefix: bool = False,
        n_vision_layers: int = 0, tower_type: str | None = None,
    ) -> RunSpec:
        """The spec of a batch whose image spans are known (the text start is derived here, once)."""
        text_start = image.text_start
        return cls(image=image, attention_mask=attention_mask.bool(), n_layers=n_layers, text_start=text_start,
                   text_from=int(text_start.min()), sink_dims=sink_dims, d_model=d_model, default_tau=default_tau,
                   model_name=model_name, passes=dict(passes or {}), first_position=first_position,
                   is_prefix=is_prefix, n_vision_layers=n_vision_layers,
                   tower_type=tower_type)  # fmt: skip


@dataclass
class Findings:
    """What the members of a run found, as plain data that can travel back from a server.

    `sinks[l]` / `phi[l]`: FindSinks' sink masks `[batch, pos]` and phi values
    per layer; `records[name]`: every other member's results under its own
    name, either one entry per layer (`records["head_scores"][l]`) or a list
    of entries, one per hook call (`records["var"]`). Members write through
    `add` only.
    """

    sinks: dict[int, Tensor] = field(default_factory=dict)
    phi: dict[int, Tensor] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    positional: set[str] = field(default_factory=set)  # records laid out per prompt position (added with positions_from)

    def add(self, name: str, value: Any, *, layer: int | None = None, positions_from: int | None = None) -> None:
        """Record what a member found: `name`'s entry for `layer` (set), or, without a layer, one more entry of `name`.

        "sinks" and "phi" are FindSinks' and are read as `ctx.sinks[l]` and
        `ctx.phi[l]`; every other name lands in `records`. A name holds either
        per-layer entries or a list, never both. `positions_from` marks a value
        laid out per prompt position (`[batch, pos, ...]`) that covers the
        positions from there on (`ctx.held_from` at a residual point): it is
        written into the entry that holds the positions before it (a
        continuation of cached prefixes, whose prefix findings came first).
        """
        if positions_from is not None and layer is not None:
            value = self._positional(name, value, layer, positions_from)
            if name not in PER_LAYER_FINDINGS:
                self.positional.add(name)
        if name in PER_LAYER_FINDINGS:
            if layer is None:
                raise HookContractError(f"findings.add({name!r}, ...) needs layer=: {name} are kept per layer")
            getattr(self, name)[layer] = value
            return
        kind = dict if layer is not None else list
        entries = self.records.setdefault(name, kind())
        if not isinstance(entries, kind):
            raise HookContractError(
                f"records[{name!r}] holds {'per-layer entries' if isinstance(entries, dict) else 'a list'}; add "
                f"{'with' if isinstance(entries, dict) else 'without'} layer= under that name, or use another name"
            )
        if layer is None:
            entries.append(value)
        else:
            entries[layer] = value

    def _positional(self, name: str, value: Tensor, layer: int, start: int) -> Tensor:
        """`value` for the positions from `start`, written into the entry that holds the positions before it."""
        if start == 0:
            return value
        table = getattr(self, name) if name in PER_LAYER_FINDINGS else self.records.get(name, {})
        before = table.get(layer)
        if before is None or before.shape[1] < start:
            raise HookContractError(
                f"findings.add({name!r}, layer={layer}, positions_from={start}): no entry holds the positions "
                f"before {start}; a continuation starts from the findings of its prefixes"
            )
        out = before[:, :start].to(value.device, value.dtype)
        return torch.cat([out, value], dim=1)

    def state(self) -> dict[str, Any]:
        """The findings as plain data (what a remote run sends back)."""
        return {"sinks": dict(self.sinks), "phi": dict(self.phi), "records": dict(self.records),
                "positional": sorted(self.positional)}  # fmt: skip

    def update(self, state: Mapping[str, Any]) -> None:
        """Take in what `state()` returned (from a remote run, or from another context)."""
        self.sinks.update(state["sinks"])
        self.phi.update(state["phi"])
        self.records.update(state["records"])
        self.positional.update(state.get("positional", ()))


@dataclass
class Cursor:
    """Where a run is: advanced by the runner only, read by hook functions through the context."""

    step: int = 0  # 0 in prefill, k at the k-th decoding step
    held_from: int = 0  # at an attention point in prefill: the prompt position of the tensor's first query row


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
    points of one step (never sent anywhere); `cursor` says where the run is
    (`step`, `held_from`), and only the runner moves it.
    """

    spec: RunSpec
    found: Findings = field(default_factory=Findings)
    cursor: Cursor = field(default_factory=Cursor)
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "scratch": {}}  # scratch space never travels

    # the spec, the findings and the cursor, under the names interventions and users read
    image = property(lambda self: self.spec.image, doc="The prompt's image spans (`ImageSpans`).")
    attention_mask = property(lambda self: self.spec.attention_mask, doc="`[batch, pos]`, False on padding.")
    n_layers = property(lambda self: self.spec.n_layers)
    n_vision_layers = property(lambda self: self.spec.n_vision_layers)
    sink_dims = property(lambda self: self.spec.sink_dims)
    d_model = property(lambda self: self.spec.d_model)
    default_tau = property(lambda self: self.spec.default_tau)
    model_name = property(lambda self: self.spec.model_name)
    passes = property(lambda self: self.spec.passes, doc="Pass name -> its batch rows (VCD: 'image', 'noised').")
    sinks = property(lambda self: self.found.sinks, doc="Layer -> sink mask `[batch, pos]` (FindSinks).")
    phi = property(lambda self: self.found.phi, doc="Layer -> phi `[batch, pos]`, fp32 (FindSinks).")
    records = property(lambda self: self.found.records, doc="Each member's results by name.")
    step = property(lambda self: self.cursor.step, doc="0 in prefill, k at the k-th decoding step.")
    held_from = property(
        lambda self: self.cursor.held_from,
        doc="Prompt position of the first query row an attention point's tensor holds in prefill (0: every row).",
    )

    @property
    def prompt_length(self) -> int:
        return self.spec.image.mask.shape[-1]

    @property
    def prefill(self) -> bool:
        return self.cursor.step == 0

    # ---- the runner's: where the run is

    def enter_step(self, step: int) -> None:
        """The runner: the forward pass that starts now is step `step` (0: the prompt)."""
        self.cursor.step = step

    def enter_point(self, held_from: int) -> None:
        """The runner: the tensor at the point about to run holds the query rows from prompt position `held_from`.

        In a continuation of cached prefixes no tensor of the prefill holds a
        row before `spec.first_position`.
        """
        self.cursor.held_from = max(held_from, self.spec.first_position)

    # ---- what hook functions ask

    def keys(
        self, mask: Bool[Tensor, "batch pos"], key_length: int, device: torch.device | None = None
    ) -> Bool[Tensor, "batch key"]:
        """A prompt-position mask over the `key_length` keys of an attention tensor (on `device` if given).

        The keys are the last `key_length` positions of the sequence so far: every
        position in a full-attention layer, the window in a sliding-window layer
        while decoding (its cache keeps only the last keys). Tokens generated
        later are never image tokens or sinks: sink sets are found on the prompt
        and reused while decoding. Under a device map each layer's tensors live
        on that layer's device; masks are moved there.
        """
        mask = mask.to(device) if device is not None else mask
        total = self.prompt_length + (0 if self.prefill else self.cursor.step)
        extra = total - mask.shape[-1]
        full = torch.nn.functional.pad(mask, (0, extra)) if extra > 0 else mask
        return full[:, total - key_length : total]

    def text_queries(self, query_length: int, device: torch.device | None = None) -> Bool[Tensor, "batch query"]:
        """Queries VAR acts on: each prompt's text after its last image (prefill), every new token (decoding)."""
        device = device or self.spec.image.mask.device
        if not self.prefill:
            return torch.ones(self.spec.image.mask.shape[0], query_length, dtype=torch.bool, device=device)
        if self.spec.is_prefix:  # the prompts go on after these positions: the queries are not here
            return torch.zeros(self.spec.image.mask.shape[0], query_length, dtype=torch.bool, device=device)
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
        held_from = self.cursor.held_from
        start = max(self.spec.text_from - held_from, 0)
        queries = self.text_queries(held_from + n_rows, tensor.device)[:, held_from + start :]
        return QueryRows(start, queries)

    def last_rows(self, tensor: Tensor) -> QueryRows:
        """The rows of an attention tensor that are each prompt's last query: its last prompt position in prefill
        (found by absolute position, so a pass over a cached prefix or a prefix alone has none), the new token
        while decoding. `queries` marks, per prompt, its one row among those from `start`."""
        rows = self.query_rows(tensor)
        if not self.prefill:
            return rows
        positions = torch.arange(self.cursor.held_from + rows.start, self.cursor.held_from + tensor.shape[-2],
                                 device=tensor.device)  # fmt: skip
        last = self.spec.attention_mask.shape[-1] - 1  # left padding: every prompt ends at the last position
        return QueryRows(rows.start, rows.queries & (positions == last)[None, :])

    def layer_sinks(self, layer: int, who: str) -> Tensor:
        """The sink set of `layer` that FindSinks left, or a clear error naming the fix."""
        sinks = self.found.sinks.get(layer)
        if sinks is None:
            raise MissingSinksError(
                f"{who} at layer {layer} needs that layer's sink set: put FindSinks(...) before {who} in the "
                f"stack, with its layers covering {layer}"
            )
        return sinks

    # ---- what travels back from a server

    def state(self) -> dict[str, Any]:
        """What the members found, as plain data: sinks, phi and records by name.

        A remote run sends this back from the server (as torch-saved plain data,
        so records must hold tensors, numbers, strings and containers of them);
        `update` folds it into the client's context.
        """
        return self.found.state()

    def update(self, state: Mapping[str, Any]) -> None:
        """Take in what `state()` returned (from a remote run, or from this context itself)."""
        self.found.update(state)


def writable(tensor: Tensor) -> Tensor:
    """The tensor to edit: itself when autograd is off (no copy), a clone when something may need the original."""
    return tensor.clone() if torch.is_grad_enabled() else tensor


def write_rows(tensor: Tensor, rows: QueryRows, new_rows: Tensor) -> Tensor:
    """`tensor` with its rows from `rows.start` replaced by `new_rows` (cast to its dtype); in place when it can."""
    out = writable(tensor)
    out[..., rows.start :, :] = new_rows.to(tensor.dtype)
    return out
