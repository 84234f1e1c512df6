"""Remote runs without NDIF: nnsight's local simulation, measured, and a request served as NDIF serves it.

For tests and for measuring what a remote run costs; nothing here is needed to
run remotely. Pass a `Simulation` as a runner's `remote=`::

    sim = Simulation()
    NnsightRunner(lm).forward(inputs, [FindSinks(), VAR()], remote=sim)
    print(sim.payloads[-1].size)                      # bytes nnsight would send
    print(sim.payloads[-1].foreign)                   # modules an NDIF server lacks: should be empty

`Simulation(server=wrap(sinklens.load(...)))` runs each request as NDIF runs
it: deserialised against the server's model, executed there, and only the saved
values sent back through `torch.save`. `referenced_modules` reads which modules
a pickle imports (GLOBAL / STACK_GLOBAL opcodes and cloudpickle's subimports).
"""

from __future__ import annotations

import linecache
import pickletools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sinklens.backends._nnsight_private import (
    backend_base,
    local_simulation_backend,
    persistent_objects,
    pull_env,
    push_into_frame,
    request_env,
    request_model,
    set_request_env,
)

# what a shipped request may name by reference besides the standard library: an NDIF server's packages
SERVER_PACKAGES = frozenset({"torch", "numpy", "transformers", "einops", "nnsight", "accelerate", "cloudpickle"})


@dataclass(frozen=True)
class Payload:
    """One serialised request: its size in bytes and the modules it names by reference."""

    size: int
    modules: frozenset[str]
    blob: bytes | None = field(default=None, repr=False)  # the bytes, when the Simulation keeps them

    @property
    def foreign(self) -> frozenset[str]:
        """Modules named by reference that an NDIF server does not have (should be empty)."""
        return frozenset(
            name for name in self.modules
            if name.split(".")[0] not in SERVER_PACKAGES and name.split(".")[0] not in sys.stdlib_module_names
        )


@dataclass
class Simulation:
    """A remote request run here, keeping every request's `Payload`. Pass it as `remote=` to a runner.

    By default nnsight's local simulation (`LocalSimulationBackend`): the
    request is serialised as nnsight's remote backend would (uncompressed),
    measured, deserialised with local modules hidden, and run on the client's
    model. With `server` (an nnsight model holding the weights, e.g.
    `wrap(sinklens.load(...))`), the request is run as NDIF runs it instead:
    deserialised against the server's model (after applying the request's
    environment: its attention implementation), executed there, and only the
    saved values come back, through `torch.save` as NDIF sends them. The client
    can then be a weightless runner from `connect(..., check=False)`.
    `keep_bytes` keeps the request itself too (`Payload.blob`).
    """

    keep_bytes: bool = False
    server: Any = None
    payloads: list[Payload] = field(default_factory=list)
    results: list[Payload] = field(default_factory=list)  # what came back, when `server` ran it

    def backend(self, model: Any) -> Any:
        simulation = self

        class _Measured(local_simulation_backend()):
            def __call__(self, tracer: Any) -> None:
                simulation.payloads.append(measure(tracer, keep_bytes=simulation.keep_bytes))
                super().__call__(tracer)

        class _Served(backend_base()):
            def __call__(self, tracer: Any) -> None:
                payload = measure(tracer, keep_bytes=True)
                simulation.payloads.append(payload if simulation.keep_bytes else replace(payload, blob=None))
                # deserialising registers the block's source under the caller's file name; in this process
                # that would hide the real file from later requests' source lookups (as nnsight's local
                # simulation also guards against)
                filename = tracer.info.frame.f_code.co_filename
                real = linecache.cache.get(filename)
                try:
                    result, sent = serve(simulation.server, payload.blob, env=request_env(model))
                finally:
                    if real is not None:
                        linecache.cache[filename] = real
                    else:
                        linecache.cache.pop(filename, None)
                simulation.results.append(Payload(size=len(sent), modules=referenced_modules(_torch_pickle(sent))))
                _push(tracer, result)

        return _Served() if self.server is not None else _Measured(model)


def serve(server: Any, blob: bytes, *, env: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Run a serialised request on `server` (an nnsight model with weights) as NDIF would.

    Returns the saved values, after a round trip through `torch.save` /
    `torch.load` as NDIF sends them, and the bytes that round trip made.
    """
    import io

    import torch

    set_request_env(server, dict(env))
    restored = request_model().deserialize(blob, persistent_objects(server), compress=False)
    sent_in = dict(restored.info.frame.f_locals)  # what the request captured; the saved values are added to it
    restored.execute(restored.info.code)
    saved = {
        name: value for name, value in restored.info.frame.f_locals.items()
        if name not in sent_in or sent_in[name] is not value
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(saved, buffer, pickle_protocol=4)
    sent = buffer.getvalue()
    return torch.load(io.BytesIO(sent), map_location="cpu", weights_only=False), sent


def _torch_pickle(saved: bytes) -> bytes:
    """The pickle inside a `torch.save` archive (tensors' storages are beside it)."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(saved)) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return archive.read(name)


def _push(tracer: Any, result: Mapping[str, Any]) -> None:
    """Put a request's saved values into the caller's frame, as nnsight's RemoteBackend does."""
    import nnsight

    for value in result.values():
        nnsight.save(value)
    push_into_frame(tracer.info.frame, dict(result))


def measure(tracer: Any, *, keep_bytes: bool = False) -> Payload:
    """Serialise a captured trace as nnsight's remote backend does, and describe the bytes."""
    pull_env()
    blob = request_model().serialize(tracer, compress=False)
    return Payload(size=len(blob), modules=referenced_modules(blob), blob=blob if keep_bytes else None)


def referenced_modules(blob: bytes) -> frozenset[str]:
    """Every module a pickle imports when loaded: GLOBAL / STACK_GLOBAL owners and cloudpickle subimports."""
    modules: set[str] = set()
    strings: list[str | None] = []  # what each op pushed, when it was a string (None otherwise)
    memo: dict[int, str | None] = {}
    expect_module = False
    for opcode, arg, _ in pickletools.genops(blob):
        name = opcode.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
            if expect_module:
                modules.add(arg)
                expect_module = False
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
            continue
        if name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = strings[-1] if strings else None
            continue
        if name in ("BINGET", "LONG_BINGET", "GET"):
            value = memo.get(int(arg))
            strings.append(value)
            if expect_module and value is not None:
                modules.add(value)
                expect_module = False
            continue
        if name == "GLOBAL":
            module, _, attribute = arg.partition(" ")
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            module, attribute = strings[-2] or "", strings[-1] or ""
        else:
            strings.append(None)
            continue
        modules.add(module)
        # cloudpickle names a module pickled by reference through subimport("package.module")
        expect_module = attribute == "subimport"
        strings.append(None)
    modules.discard("")
    return frozenset(modules)
