"""Request shipping: what a remote or simulated nnsight run needs around its trace.

nnsight's `remote=True` sends a trace to NDIF, which runs it next to the weights
of a model it hosts; `remote="local"` serialises the same request, deserialises
it with local modules hidden (as a server would) and runs it here. sinklens
ships its hook functions, the run context and the ops they call *by value*
(`nnsight.register(sinklens)` for the length of the run), so the server needs
only what it has: torch, numpy, transformers, einops and nnsight. What travels,
what runs where and what it costs: docs/remote.md.

`remote` as a runner takes it: `False` (here), `True` (NDIF, checked first by
`sinklens.backends.ndif.ensure_ready`), `"local"`, or a request backend factory:
an object with `backend(model)` returning an nnsight backend, such as
`sinklens.testing.Simulation()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol, runtime_checkable

from sinklens.backends.ndif import ensure_ready
from sinklens.errors import RemoteError


@runtime_checkable
class RequestBackend(Protocol):
    """Something that runs a captured request in nnsight's place (`sinklens.testing.Simulation`)."""

    def backend(self, model: Any) -> Any: ...


RemoteValue = bool | Literal["local"] | RequestBackend
# what runners annotate: checked by `check_remote_argument`, whose message lists the values (a run-time
# type checker would otherwise refuse a wrong one first, with its own message)
Remote = Any


def check_remote_argument(remote: Any) -> RemoteValue:
    """`remote` as a runner takes it: False, True, "local", or a request backend (a `Simulation`)."""
    if remote is False or remote is True or remote == "local" or isinstance(remote, RequestBackend):
        return remote
    raise RemoteError(
        f"remote must be False (run here), True (NDIF), \"local\" (nnsight's local simulation of NDIF) or a "
        f"sinklens.testing.Simulation(), got {remote!r}"
    )


@contextmanager
def shipping(loaded: Any, remote: RemoteValue) -> Iterator[None]:
    """For a remote or simulated run: check NDIF (remote=True), and ship sinklens by value meanwhile."""
    if remote is False:
        yield
        return
    if remote is True:
        ensure_ready(loaded.name)
    import cloudpickle
    import nnsight

    import sinklens

    registered = "sinklens" in cloudpickle.list_registry_pickle_by_value()
    if not registered:
        nnsight.register(sinklens)  # nnsight's documented way: ship a module's source with the request
    try:
        yield
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(sinklens)


def trace_options(model: Any, remote: RemoteValue) -> dict[str, Any]:
    """Keyword arguments of `model.trace` / `model.generate` for a `remote` value."""
    if remote is False:
        return {}
    if isinstance(remote, RequestBackend):
        return {"backend": remote.backend(model)}
    return {"remote": remote}
