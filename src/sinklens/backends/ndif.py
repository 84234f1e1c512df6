"""NDIF, the service: is a remote run possible (API key, hosted models, deployment state).

The status check is split so that tests need no network: `fetch_status()` is
the one call to NDIF, `check_ready(model, api_key=..., status=...)` decides on
the data it returned. Public nnsight API only (`nnsight.CONFIG`, `nnsight.status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sinklens.errors import RemoteError

# NDIF deployment levels that serve requests (COLD: downloaded, not loaded), as nnsight.status counts them
SERVING_LEVELS = ("HOT", "WARM")
KEY_HELP = (
    "Get a free key at https://login.ndif.us, then set it in the environment (export NDIF_API_KEY=...) or "
    "store it once with `python -c \"import nnsight; nnsight.login()\"` (nnsight's config file). "
    "To try the remote path without a key, run with remote=\"local\" (nnsight's local simulation)."
)


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
