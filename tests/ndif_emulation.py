"""Run a sinklens request the way an NDIF server would: without sinklens or jaxtyping importable.

    python tests/ndif_emulation.py tiny-llava

The client half builds the requests of a forward pass and a generation (every
intervention in one stack) and keeps their bytes. Then every `sinklens` and
`jaxtyping` module is dropped from `sys.modules` and their import is refused,
as on a server that has only torch, numpy, transformers, einops and nnsight;
the requests are deserialised against a fresh nnsight wrapper of the same HF
module (what the server holds), executed, and their logits compared with the
local run. Prints one JSON line. nnsight's own `remote="local"` hides modules
that live outside site-packages, which a `src/` checkout or an editable install
is not, so it cannot show that sinklens travelled by value; this can.
"""

from __future__ import annotations

import importlib.abc
import json
import sys

import torch

BLOCKED = ("sinklens", "jaxtyping")


def damp_first_key(pattern, ctx):  # a user's own hook function, shipped by value like the rest
    pattern[..., 0] *= 0.9
    return pattern


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed on the server)")
        return None


def client(name: str) -> dict:
    import sinklens as sl
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.testing import Simulation
    from sinklens.interventions.scan import SinkDimensionScan
    from sinklens.builtin import demo_scene

    lm = sl.load(name)
    inputs = lm.prepare(demo_scene(name), "What is in the image?")
    stack = sl.Stack(
        sl.FindSinks(), SinkDimensionScan(layers=[2], dims=[0, 1]), sl.PAI(alpha=0.3), sl.VAR(),
        ("blocks.3.attn.hook_pattern", damp_first_key), sl.AttentionContribution(layers=[2]), sl.VCD(alpha=0.5),
    )  # AttentionContribution reads W_O from the server's model
    runner = NnsightRunner(lm)
    local_forward = runner.forward(inputs, stack)
    local_generate = runner.generate(inputs, stack, max_new_tokens=3)

    simulation = Simulation(keep_bytes=True)
    runner.forward(inputs, stack, remote=simulation)
    runner.generate(inputs, stack, max_new_tokens=3, remote=simulation)
    blobs = [payload.blob for payload in simulation.payloads]
    return {
        "model": lm.model, "processor": lm.processor, "blobs": blobs,
        "forward": local_forward.logits, "generate": local_generate.step_logits,
        "sinks": {layer: mask.clone() for layer, mask in local_forward.ctx.sinks.items()},
        "contribution": local_forward.ctx.records["contribution"][2],
    }


def server(model, processor, blob: bytes) -> dict:
    # sinklens.testing.serve does this too, but here sinklens must not be importable
    from nnsight import TransformersModel
    from nnsight.schema.request import RequestModel
    from nnsight.tracing.tracer import dec, inc

    envoy = TransformersModel(model, processor=processor, tokenizer=processor.tokenizer, task="image-text-to-text")
    tracer = RequestModel.deserialize(blob, envoy._remoteable_persistent_objects(), compress=False)
    inc()
    try:
        tracer.execute(tracer.info.code)
    finally:
        dec()
    return dict(tracer.info.frame.f_locals)


def main(name: str) -> None:
    made = client(name)
    for module in [key for key in sys.modules if key.split(".")[0] in BLOCKED]:
        del sys.modules[module]
    sys.meta_path.insert(0, _Refuse())
    forward = server(made["model"], made["processor"], made["blobs"][0])
    generate = server(made["model"], made["processor"], made["blobs"][1])
    n = made["forward"].shape[0]
    step_logits = torch.stack(generate["store"], dim=1)[:n]
    print(json.dumps({
        "payload_bytes": [len(blob) for blob in made["blobs"]],
        "forward_max_diff": (forward["logits"][:n] - made["forward"]).abs().nan_to_num(0.0).max().item(),
        "generate_max_diff": (step_logits - made["generate"]).abs().nan_to_num(0.0).max().item(),
        "same_inf": bool(torch.equal(torch.isinf(forward["logits"][:n]), torch.isinf(made["forward"]))),
        "sinks_equal": all(torch.equal(forward["state"]["sinks"][layer], mask) for layer, mask in made["sinks"].items()),
        "scan_layers": sorted(forward["state"]["records"].get("scan", {})),
        "contribution_max_diff": (forward["state"]["records"]["contribution"][2] - made["contribution"]).abs().max().item(),
        "sinklens_imported": any(key.split(".")[0] in BLOCKED for key in sys.modules),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
