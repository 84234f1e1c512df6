"""What the route benchmarks share: a LLaVA-1.5-7B-shaped model, its prompt, and four interleaved arms.

Used by `benchmarks/gpu_scale.py` (the real configuration on a GPU) and by the
routes section of `benchmarks/var_overhead.py` (the same layer shape on a CPU,
fewer layers). A `Size` says the model's widths and depth, the image side (336
px: LLaVA-1.5's 576 image tokens; 756 px: 2,916, LLaVA-NeXT-7B's attention
length) and which layers FindSinks and VAR use. The routes take turns on one
copy of the weights (`Route.activate` switches the language model's attention
before each run, outside the timed part):

- `plain_sdpa`: sdpa everywhere, nothing attached;
- `plain_eager`: eager everywhere, nothing attached;
- `var_eager`: eager, FindSinks + VAR attached (every layer's full pattern);
- `var_rows`: the rows route (`attention="rows"`), FindSinks + VAR attached.

Each run is one nnsight trace that saves the logits; a decoding step is one
token against the prompt's KV cache (each arm its own, made on its route),
cropped back after every step. A random-weight LLaMA has no massive
activations, so the BOS embedding gets `SINK_VALUE` in `Size.sink_dim` (2533,
one of LLaMA-2-7B's sink dimensions) and FindSinks looks there.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from sinklens.backends.nnsight_backend import attach, make_context, wrap
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.var import VAR
from sinklens.models.loaded import LoadedModel, from_hf
from sinklens.run import RunContext

SEED = 0
SINK_VALUE = 200.0
N_TEXT_BEFORE = 4
N_TEXT_AFTER = 70
BOS, IMAGE_TOKEN, PAD = 1, 32000, 32001
ARMS = ("plain_sdpa", "plain_eager", "var_eager", "var_rows")
# the inputs are token ids made here: no processor, no tokenizer (nnsight's wrapper accepts None)
NO_PROCESSOR = SimpleNamespace(tokenizer=None)


@dataclass(frozen=True)
class Size:
    """The model's size (LLaVA-1.5-7B's by default), its image side and the layers VAR acts on."""

    text_width: int = 4096
    text_layers: int = 32
    text_heads: int = 32
    text_mlp: int = 11008
    vocab: int = 32064
    sink_dim: int = 2533  # a LLaMA-2-7B sink dimension; the BOS embedding gets SINK_VALUE there
    tau: float = 20.0  # FindSinks' threshold (phi is at most sqrt(width))
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    projection_dim: int = 768
    image_size: int = 336  # (image_size / 14)^2 image tokens: 576 at 336 px
    var_layers: tuple[int, ...] | None = None  # FindSinks' and VAR's layers; None: VAR's default (2..L-2)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // 14) ** 2


FULL = Size()
# the smoke size keeps the 336 px image (576 image tokens) and the prompt, shrinks widths and depth
SMOKE = Size(text_width=64, text_layers=5, text_heads=4, text_mlp=128, vocab=32064, sink_dim=13, tau=4.0, vision_width=32,
             vision_layers=1, vision_heads=2, vision_mlp=64, projection_dim=32)  # fmt: skip


def llava_config(size: Size) -> Any:
    """llava-1.5-7b's configuration (llava-hf/llava-1.5-7b-hf), at `size`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=size.vision_width, intermediate_size=size.vision_mlp, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, image_size=size.image_size, patch_size=14, projection_dim=size.projection_dim,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, vocab_size=32000,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=size.vocab, hidden_size=size.text_width, intermediate_size=size.text_mlp,
        num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads, num_key_value_heads=size.text_heads,
        max_position_embeddings=max(4096, size.image_tokens + 128), rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
        bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD, tie_word_embeddings=False,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=PAD,
    )  # fmt: skip


def build_model(size: Size, dtype: torch.dtype, device: str) -> Any:
    """Random weights (seeded) made directly on `device` in `dtype`, with the planted BOS sink; eager attention."""
    from transformers import LlavaForConditionalGeneration

    config = llava_config(size)
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[BOS, size.sink_dim] = SINK_VALUE
    return model


def build_inputs(size: Size, device: str, dtype: torch.dtype) -> dict[str, Tensor]:
    """BOS, 4 text tokens, the image tokens, 70 text tokens (random ids); random pixels."""
    generator = torch.Generator().manual_seed(SEED)

    def text(n: int) -> list[int]:
        return torch.randint(3, 31000, (n,), generator=generator).tolist()

    ids = [BOS, *text(N_TEXT_BEFORE), *[IMAGE_TOKEN] * size.image_tokens, *text(N_TEXT_AFTER)]
    input_ids = torch.tensor([ids], device=device)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, size.image_size, size.image_size, generator=generator).to(device=device, dtype=dtype),
    }


def var_stack(prefill: bool, size: Size) -> list[Any]:
    """FindSinks + VAR for a prefill, VAR alone for a decoding step (the sink sets come from the prefill)."""
    layers = list(size.var_layers) if size.var_layers is not None else None
    var = VAR(layers=layers)
    return [FindSinks(dims=(size.sink_dim,), tau=size.tau, layers=layers), var] if prefill else [var]


# ---- arms -------------------------------------------------------------------------------------


@dataclass
class Route:
    """One attention route over the shared weights: its LoadedModel and nnsight wrapper."""

    name: str  # "sdpa", "eager" or "rows"
    loaded: LoadedModel
    nnsight_model: Any

    def activate(self) -> None:
        """Switch the shared model to this route (the routes take turns on one copy of the weights)."""
        if self.name == "sdpa":
            self.loaded.model.set_attn_implementation("sdpa")
        else:
            from_hf(self.loaded.model, NO_PROCESSOR, name=self.loaded.name, attention=self.name)


def routes(model: Any) -> dict[str, Route]:
    made = {}
    for name in ("sdpa", "rows", "eager"):
        loaded = from_hf(model, NO_PROCESSOR, name="llava-1.5-7b-config-random", attention="eager" if name == "sdpa" else name)
        made[name] = Route(name, loaded, wrap(loaded))
    return made


@dataclass
class Arm:
    """What one arm runs: `activate` (untimed: switch the route), then `run` (timed)."""

    route: Route
    run: Callable[[], Tensor]


ARM_ROUTES = {"plain_sdpa": "sdpa", "plain_eager": "eager", "var_eager": "eager", "var_rows": "rows"}


def trace(route: Route, inputs: Mapping[str, Any], stack: list[Any], ctx: RunContext | None) -> Tensor:
    with torch.no_grad(), route.nnsight_model.trace(**inputs):
        if stack:
            attach(route.nnsight_model, route.loaded, stack, inputs, ctx=ctx)
        logits = route.nnsight_model.output.logits.save()
    return logits


def prefill_arms(made: dict[str, Route], inputs: dict[str, Tensor], size: Size) -> dict[str, Arm]:
    def arm(name: str) -> Arm:
        route = made[ARM_ROUTES[name]]

        def run() -> Tensor:
            if name.startswith("plain"):
                return trace(route, inputs, [], None)
            return trace(route, inputs, var_stack(True, size), make_context(route.loaded, inputs))

        return Arm(route, run)

    return {name: arm(name) for name in ARMS}


def prefill_cache(route: Route, inputs: dict[str, Tensor], stack: list[Any]) -> tuple[RunContext, Any]:
    """A prefill with use_cache=True on `route`: its context (sink sets) and the prompt's cache."""
    route.activate()
    ctx = make_context(route.loaded, inputs)
    with torch.no_grad(), route.nnsight_model.trace(**inputs, use_cache=True):
        if stack:
            attach(route.nnsight_model, route.loaded, stack, inputs, ctx=ctx)
        cache = route.nnsight_model.output.past_key_values.save()
    return ctx, cache


def decode_arms(made: dict[str, Route], inputs: dict[str, Tensor], size: Size, only: str | None = None) -> dict[str, Arm]:
    """One token against the prompt's cache (each arm its own, made on its route), cropped back after each step."""
    length = inputs["input_ids"].shape[1]
    step_inputs = {
        "input_ids": inputs["input_ids"][:, -1:].clone(),
        "attention_mask": torch.ones(1, length + 1, dtype=torch.long, device=inputs["input_ids"].device),
    }

    def arm(name: str) -> Arm:
        route = made[ARM_ROUTES[name]]
        with_var = name.startswith("var")
        ctx, cache = prefill_cache(route, inputs, var_stack(True, size) if with_var else [])
        ctx.enter_step(1)  # a generated token: VAR acts on it with the prompt's sink sets

        def run() -> Tensor:
            try:
                step = {**step_inputs, "past_key_values": cache, "use_cache": True}
                return trace(route, step, var_stack(False, size) if with_var else [], ctx)
            finally:
                extra = cache.get_seq_length() - length
                if extra:
                    cache.crop(-extra)

        return Arm(route, run)

    return {name: arm(name) for name in ([only] if only else ARMS)}


# ---- measuring --------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arms: dict[str, Arm], repeats: int, warmup: int, device: str) -> dict[str, Any]:
    """Arms interleaved (order rotated every round): wall times, peak memory per arm, last logits."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    peak: dict[str, int] = {name: 0 for name in names}
    last: dict[str, Tensor] = {}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            arms[name].route.activate()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            last[name] = arms[name].run()
            sync(device)
            elapsed = time.perf_counter() - start
            if device.startswith("cuda"):
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated())
            if round_ >= warmup:
                times[name].append(elapsed)
    return {"times": times, "peak": peak, "last": last}


def summary(measured: dict[str, Any], device: str) -> dict[str, Any]:
    times = measured["times"]
    out: dict[str, Any] = {
        "seconds": {name: {"min": round(min(t), 5), "median": round(statistics.median(t), 5), "max": round(max(t), 5)}
                    for name, t in times.items()},  # fmt: skip
        "ratios": {
            "var_rows_over_plain_sdpa": _ratios(times["var_rows"], times["plain_sdpa"]),
            "var_eager_over_plain_eager": _ratios(times["var_eager"], times["plain_eager"]),
            "var_rows_over_var_eager": _ratios(times["var_rows"], times["var_eager"]),
        },
        "repeats": len(times["plain_sdpa"]),
    }
    if device.startswith("cuda"):
        out["max_memory_allocated_bytes"] = measured["peak"]
    return out


def _ratios(arm: list[float], base: list[float]) -> dict[str, float]:
    paired = [a / b for a, b in zip(arm, base, strict=True)]
    return {"of_minimums": round(min(arm) / min(base), 4), "min": round(min(paired), 4),
            "median": round(statistics.median(paired), 4), "max": round(max(paired), 4)}  # fmt: skip




def sinks_found(ctx: RunContext) -> dict[str, list[int]]:
    """Sink positions FindSinks found in the first prompt, per layer."""
    return {str(layer): sinks[0].nonzero().flatten().tolist() for layer, sinks in sorted(ctx.sinks.items())}


# ---- the CPU section of benchmarks/var_overhead.py: two attention shapes ---------------------------

# LLaVA-1.5-7B's text layer shape with `layers` decoder layers and a small CLIP tower (the tower's
# width does not change the attention shape): 336 px gives LLaVA-1.5's 576 image tokens (T = 651);
# 756 px gives 2,916 (T = 2,991), LLaVA-NeXT-7B's attention length (its 4 tiles of 576 + a base
# image of 576 + 48 newlines are 2,928 image tokens; one square grid of the same length here).
CPU_SHAPES = {"llava_1_5_7b": 336, "llava_next_7b": 756}
TARGETS = {"rows_over_plain_sdpa": 1.05, "eager_over_plain_eager": 1.10, "rows_memory_over_plain_sdpa": 1.10}


def cpu_size(image_size: int, layers: int, smoke: bool = False) -> Size:
    """LLaVA-1.5-7B's text layers (`layers` of them) and a small vision tower; `smoke`: SMOKE's widths instead."""
    if smoke:
        return Size(**{**asdict(SMOKE), "text_layers": layers, "image_size": image_size, "var_layers": tuple(range(layers))})
    return Size(text_layers=layers, vision_width=64, vision_layers=2, vision_heads=2, vision_mlp=128,
                projection_dim=64, image_size=image_size, var_layers=tuple(range(layers)))  # fmt: skip


def cpu_inputs(size: Size) -> dict[str, Any]:
    """The prompt, unembedding the last position only (as generation does), so the LM head stays small."""
    return {**build_inputs(size, "cpu", torch.float32), "logits_to_keep": 1}


def var_arithmetic_share(made: dict[str, Route], inputs: dict[str, Any], size: Size, plain: dict[str, float]) -> dict[str, Any]:
    """Seconds of VAR's own hook function on the rows it reads, all layers, over the plain forward's minimum."""
    ctx, _ = prefill_cache(made["rows"], inputs, var_stack(True, size))
    text_from = int(ctx.image.text_start.min())
    n_keys = inputs["input_ids"].shape[1]
    hooks = var_stack(False, size)[0].hooks(ctx)
    generator = torch.Generator().manual_seed(SEED)
    out = {}
    for case, n_rows, step in (("prefill", n_keys - text_from, 0), ("decode_step", 1, 1)):
        ctx.enter_step(step)
        ctx.enter_point(text_from if step == 0 else 0)  # the rows route's tensors hold rows from text_from
        width = n_keys + step
        pattern = torch.softmax(torch.randn(1, size.text_heads, n_rows, width, generator=generator), dim=-1)
        times = []
        for _ in range(6):
            fresh = [pattern.clone() for _ in hooks]  # the hook edits in place without autograd
            start = time.perf_counter()
            with torch.no_grad():
                for hook, tensor in zip(hooks, fresh):
                    hook.fn(tensor, ctx)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times[1:])
        out[case] = {"seconds": round(seconds, 6), "share_of_plain_sdpa": round(seconds / plain[case], 5),
                     "pattern_rows": n_rows, "keys": width, "layers": len(hooks)}  # fmt: skip
    return out


def memory_of_arm(arm: str, image_size: int, layers: int, smoke: bool = False) -> dict[str, int]:
    """In this process (run it in a fresh one): peak resident memory of one prefill and one decoding step of `arm`.

    Linux's high-water mark (VmHWM) is reset (/proc/self/clear_refs) after the
    model is built, so the weights' construction does not hide the arm's peak;
    `*_peak_bytes` include the weights, `*_over_weights_bytes` are the part the
    run added to the memory held before it.
    """
    size = cpu_size(image_size, layers, smoke)
    model = build_model(size, torch.float32, "cpu")
    made = routes(model)
    inputs = cpu_inputs(size)
    route = made[ARM_ROUTES[arm]]
    with_var = arm.startswith("var")
    route.activate()
    report = {}
    before = _reset_peak()
    ctx = make_context(route.loaded, inputs)
    trace(route, inputs, var_stack(True, size) if with_var else [], ctx)
    report["prefill_peak_bytes"], report["prefill_over_weights_bytes"] = (peak := _peak()), peak - before
    decode = decode_arms({ARM_ROUTES[arm]: route}, inputs, size, only=arm)[arm]
    before = _reset_peak()
    decode.run()
    report["decode_step_peak_bytes"], report["decode_step_over_weights_bytes"] = (peak := _peak()), peak - before
    return report


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory is measured on Linux only")


def _reset_peak() -> int:
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current resident size
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def cpu_section(
    *, layers: dict[str, int], repeats: int, decode_repeats: int, memory: bool, smoke: bool = False
) -> dict[str, Any]:
    """Every arm at each shape: interleaved timings, ratios, VAR's arithmetic share, and peak memory per arm."""
    import subprocess
    import sys

    section: dict[str, Any] = {"shapes": {}, "targets": TARGETS}
    for shape, image_size in CPU_SHAPES.items():
        if shape not in layers:
            continue
        size = cpu_size(image_size, layers[shape], smoke)
        started = time.perf_counter()
        model = build_model(size, torch.float32, "cpu")
        made = routes(model)
        inputs = cpu_inputs(size)
        prefill = measure(prefill_arms(made, inputs, size), repeats, warmup=1, device="cpu")
        decode = measure(decode_arms(made, inputs, size), decode_repeats, warmup=2, device="cpu")
        plain = {"prefill": min(prefill["times"]["plain_sdpa"]), "decode_step": min(decode["times"]["plain_sdpa"])}
        ctx, _ = prefill_cache(made["rows"], inputs, var_stack(True, size))
        section["shapes"][shape] = {
            "prompt_tokens": inputs["input_ids"].shape[1], "image_tokens": size.image_tokens, "layers": size.text_layers,
            "prefill": summary(prefill, "cpu"), "decode_step": summary(decode, "cpu"),
            "var_arithmetic": var_arithmetic_share(made, inputs, size, plain),
            "sinks_per_layer": sinks_found(ctx),
            "image_centric_pairs": sum(r["n_image_centric"] for r in ctx.records.get("var", [])),
            "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        del model, made
        if memory:
            peaks = {}
            for arm in ARMS:
                code = (f"import json, routes; print(json.dumps(routes.memory_of_arm({arm!r}, {image_size}, "
                        f"{layers[shape]}, smoke={smoke})))")  # fmt: skip
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      cwd=str(__import__("pathlib").Path(__file__).parent))  # fmt: skip
                peaks[arm] = json.loads(done.stdout.strip().splitlines()[-1])
            section["shapes"][shape]["peak_memory"] = peaks
    return section
