"""Remote execution on NDIF: `connect(hub_id)` builds a runner whose every call goes to NDIF.

    runner = connect("llava-hf/llava-1.5-7b-hf")      # checks the API key and that NDIF hosts it
    result = runner.generate(inputs, [FindSinks(), VAR()], max_new_tokens=8)

The layer above the nnsight backend. Below it: `sinklens.backends.shipping`
(what a remote run ships, and how) and `sinklens.backends.ndif` (the key and
status checks). Without a key, `NnsightRunner(sinklens.load("toy-llava"),
remote="local")` runs every intervention through nnsight's local simulation;
`sinklens.testing.Simulation()` (for tests and measurement) does the same and
keeps the size of every request.
"""

from __future__ import annotations

from typing import Any

from sinklens.backends._nnsight_private import underlying_module
from sinklens.backends.ndif import deployed_task, ensure_ready
from sinklens.backends.nnsight_backend import NnsightRunner


def connect(repo_id: str, *, check: bool = True, task: str | None = None) -> NnsightRunner:
    """An `NnsightRunner` whose runs go to NDIF's deployment of `repo_id` (no weights are downloaded).

    Checks the key and the deployment first (`check=False` skips it). The
    client holds nnsight's meta model (config, module tree; no weights) and the
    processor; eager attention is requested with every request (nnsight sends
    the model's attention implementation, and the server switches to it). The
    task is the deployment's (it is part of the model key), else `task`, else
    "image-text-to-text".
    """
    from nnsight import TransformersModel
    from transformers import AutoConfig

    from sinklens.models.loaded import from_hf
    from sinklens.hf.processors import load_processor

    if check:
        task = task or deployed_task(repo_id, ensure_ready(repo_id))
    processor = load_processor(repo_id, AutoConfig.from_pretrained(repo_id).model_type)
    # a meta model: the config and the processor are fetched, no weights
    model: Any = TransformersModel(
        repo_id, attn_implementation="eager", task=task or "image-text-to-text",
        processor=processor, tokenizer=processor.tokenizer,
    )
    loaded = from_hf(underlying_module(model), processor, name=repo_id)
    return NnsightRunner(loaded, model=model, remote=True)
