"""Remote execution on NDIF through nnsight, and its local simulation.

nnsight's `remote=True` sends a trace to NDIF, which runs it next to the weights
of a model it hosts; `remote="local"` serialises the same request, deserialises
it with local modules hidden (as a server would) and runs it here. sinklens
ships its hook functions, the run context and the ops they call *by value*
(`nnsight.register("sinklens")` for the length of the run), so the server needs
only what it has: torch, numpy, transformers, einops and nnsight. What travels,
what runs where and what it costs: docs/remote.md.

    runner = connect("llava-hf/llava-1.5-7b-hf")      # checks the API key and that NDIF hosts it
    result = runner.generate(inputs, [FindSinks(), VAR()], max_new_tokens=8)

Without a key, `NnsightRunner(sinklens.load("toy-llava"), remote="local")` runs
every intervention through the local simulation; `Simulation()` does the same
and keeps the size of every request::

    sim = Simulation()
    runner.forward(inputs, [FindSinks(), VAR()], remote=sim)
    print(sim.payloads[-1].size)                      # bytes nnsight would send

The status check is split so that tests need no network: `fetch_status()` is
the one call to NDIF, `check_ready(model, api_key=..., status=...)` decides on
the data it returned.
"""

from __future__ import annotations

import inspect
import linecache
import pickletools
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sinklens.errors import RemoteError

# NDIF deployment levels that serve requests (COLD: downloaded, not loaded), as nnsight.status counts them
SERVING_LEVELS = ("HOT", "WARM")
KEY_HELP = (
    "Get a free key at https://login.ndif.us, then set it in the environment (export NDIF_API_KEY=...) or "
    "store it once with `python -c \"import nnsight; nnsight.login()\"` (nnsight's config file). "
    "To try the remote path without a key, run with remote=\"local\" (nnsight's local simulation)."
)
# what a shipped request may name by reference besides the standard library: an NDIF server's packages
SERVER_PACKAGES = frozenset({"torch", "numpy", "transformers", "einops", "nnsight", "accelerate", "cloudpickle"})


# ---- is the request possible --------------------------------------------------------------


def fetch_status() -> dict[str, Any]:
    """NDIF's `/status` answer (the one network call of the checks); `{}` when NDIF does not answer."""
    import nnsight

    return dict(nnsight.status(raw=True) or {})


def api_key() -> str | None:
    """The NDIF API key nnsight will send: `NDIF_API_KEY`, else the one `nnsight.login()` stored."""
    from nnsight import CONFIG

    return CONFIG.API.APIKEY or None


def hosted_models(status: Mapping[str, Any]) -> dict[str, str]:
    """Repo id -> application state of every model NDIF has loaded (HOT or WARM), from a `/status` answer."""
    hosted: dict[str, str] = {}
    for name, deployment in dict(status.get("deployments") or {}).items():
        if deployment.get("deployment_level") not in SERVING_LEVELS:
            continue
        repo_id = deployment.get("repo_id", name)
        state = deployment.get("application_state", "UNHEALTHY")
        if hosted.get(repo_id) != "RUNNING":  # a RUNNING replica wins over one still deploying
            hosted[repo_id] = state
    return hosted


def check_ready(model: str, *, api_key: str | None, status: Mapping[str, Any]) -> None:
    """Raise `RemoteError`, saying what is missing, unless a key is set and NDIF runs `model`."""
    if not api_key:
        raise RemoteError(f"no NDIF API key is set, and remote=True needs one. {KEY_HELP}")
    hosted = hosted_models(status)
    if not hosted:
        raise RemoteError(
            "NDIF reports no hosted model: the service is down or unreachable from here "
            "(check https://status.ndif.us or nnsight.status()). Run with remote=\"local\" meanwhile."
        )
    state = hosted.get(model)
    if state == "RUNNING":
        return
    running = sorted(repo for repo, repo_state in hosted.items() if repo_state == "RUNNING")
    if state is not None:
        raise RemoteError(
            f"NDIF hosts {model} but it is {state}, not RUNNING; try again shortly. Running now: "
            f"{', '.join(running) or 'none'}."
        )
    raise RemoteError(
        f"NDIF does not host {model}. Models it runs now: {', '.join(running) or 'none'}. Pick one of them "
        "(an architecture sinklens knows, with eager attention), or run this model locally "
        "(sinklens.load) or with remote=\"local\"."
    )


def deployed_task(model: str, status: Mapping[str, Any]) -> str | None:
    """The pipeline task NDIF serves `model` under (part of the model key a request must match), if it says."""
    for name, deployment in dict(status.get("deployments") or {}).items():
        if deployment.get("repo_id", name) == model and deployment.get("application_state") == "RUNNING":
            return deployment.get("task")
    return None


def ensure_ready(model: str) -> dict[str, Any]:
    """`check_ready` on the configured key and NDIF's live status (which it returns): the check before `remote=True`."""
    key = api_key()
    if not key:  # no network call when the key alone decides
        check_ready(model, api_key=key, status={})
    status = fetch_status()
    check_ready(model, api_key=key, status=status)
    return status


def connect(repo_id: str, *, check: bool = True, task: str | None = None) -> Any:
    """An `NnsightRunner` whose runs go to NDIF's deployment of `repo_id` (no weights are downloaded).

    Checks the key and the deployment first (`check=False` skips it). The
    client holds nnsight's meta model (config, module tree; no weights) and the
    processor; eager attention is requested with every request (nnsight sends
    the model's attention implementation, and the server switches to it). The
    task is the deployment's (it is part of the model key), else `task`, else
    "image-text-to-text".
    """
    from nnsight import TransformersModel

    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.models.loading import from_hf
    from sinklens.models.processors import load_processor

    if check:
        task = task or deployed_task(repo_id, ensure_ready(repo_id))
    from transformers import AutoConfig

    processor = load_processor(repo_id, AutoConfig.from_pretrained(repo_id).model_type)
    # a meta model: the config and the processor are fetched, no weights
    model = TransformersModel(
        repo_id, attn_implementation="eager", task=task or "image-text-to-text",
        processor=processor, tokenizer=processor.tokenizer,
    )
    loaded = from_hf(model._module, processor, name=repo_id)
    return NnsightRunner(loaded, model=model, remote=True)


# ---- what a run ships ----------------------------------------------------------------------


def check_remote_argument(remote: Any) -> Any:
    """`remote` as a runner takes it: False, True, "local", or a `Simulation`."""
    if remote is False or remote is True or remote == "local" or isinstance(remote, Simulation):
        return remote
    raise RemoteError(
        f"remote must be False (run here), True (NDIF), \"local\" (nnsight's local simulation of NDIF) or a "
        f"sinklens.backends.remote.Simulation(), got {remote!r}"
    )


@contextmanager
def shipping(loaded: Any, remote: Any) -> Iterator[None]:
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
        with unwrapped_checkers("sinklens"):
            yield
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(sinklens)


@contextmanager
def unwrapped_checkers(package: str) -> Iterator[None]:
    """Put back the plain functions of `package` that a run-time type checker wrapped, for a while.

    jaxtyping's import hook (`pytest --jaxtyping-packages=sinklens,...`) wraps
    every function, method and dataclass `__init__` of a package in a checker
    that lives in jaxtyping and holds weak references: neither can travel to a
    server. Inside this block the package's modules and classes hold the
    functions those checkers wrap (`__wrapped__`), so what is shipped is the
    plain code; on exit the checkers are back. Without such a hook (any normal
    run) there is nothing to put back.
    """
    swaps: list[tuple[Any, str, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for owner_name, owner in list(vars(module).items()):
            # the package's own functions and classes, wherever they are imported (a module's globals
            # are what a function shipped by value carries)
            home = str(getattr(owner, "__module__", None) or "")
            if not (home == package or home.startswith(package + ".")):
                continue
            if inspect.isclass(owner) and owner.__module__ == name:
                for attribute, value in list(vars(owner).items()):
                    if _plain(value) is not value:
                        swaps.append((owner, attribute, value))
            if _plain(owner) is not owner:
                swaps.append((module, owner_name, owner))
    for owner, attribute, value in swaps:
        setattr(owner, attribute, _plain(value))
    try:
        yield
    finally:
        for owner, attribute, value in reversed(swaps):
            setattr(owner, attribute, value)


def _plain(value: Any) -> Any:
    """The function a checker wraps (functions, methods, properties, class- and static methods), else `value`."""
    if inspect.isfunction(value) and hasattr(value, "__wrapped__"):
        return inspect.unwrap(value)
    if isinstance(value, property) and value.fget is not None and hasattr(value.fget, "__wrapped__"):
        return property(_plain(value.fget), _plain(value.fset) if value.fset else None, None, value.__doc__)
    if isinstance(value, (classmethod, staticmethod)) and hasattr(value.__func__, "__wrapped__"):
        return type(value)(inspect.unwrap(value.__func__))
    return value


def trace_options(model: Any, remote: Any) -> dict[str, Any]:
    """Keyword arguments of `model.trace` / `model.generate` for a `remote` value."""
    if remote is False:
        return {}
    if isinstance(remote, Simulation):
        return {"backend": remote.backend(model)}
    return {"remote": remote}


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
        from nnsight.intervention.backends.local import LocalSimulationBackend
        from nnsight.tracing.backend import Backend

        simulation = self

        class _Measured(LocalSimulationBackend):
            def __call__(self, tracer: Any) -> None:
                simulation.payloads.append(measure(tracer, keep_bytes=simulation.keep_bytes))
                super().__call__(tracer)

        class _Served(Backend):
            def __call__(self, tracer: Any) -> None:
                payload = measure(tracer, keep_bytes=True)
                simulation.payloads.append(payload if simulation.keep_bytes else replace(payload, blob=None))
                # deserialising registers the block's source under the caller's file name; in this process
                # that would hide the real file from later requests' source lookups (as nnsight's local
                # simulation also guards against)
                filename = tracer.info.frame.f_code.co_filename
                real = linecache.cache.get(filename)
                try:
                    result, sent = serve(simulation.server, payload.blob, env=model._remoteable_get_env())
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
    from nnsight.schema.request import RequestModel

    server._remoteable_set_env(dict(env))
    restored = RequestModel.deserialize(blob, server._remoteable_persistent_objects(), compress=False)
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
    from nnsight.tracing.util import push

    for value in result.values():
        nnsight.save(value)
    push(tracer.info.frame, dict(result))


def measure(tracer: Any, *, keep_bytes: bool = False) -> Payload:
    """Serialise a captured trace as nnsight's remote backend does, and describe the bytes."""
    from nnsight.ndif import pull_env
    from nnsight.schema.request import RequestModel

    pull_env()
    blob = RequestModel.serialize(tracer, compress=False)
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
