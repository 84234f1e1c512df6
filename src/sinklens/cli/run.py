"""`sinklens run`: find the sinks and answer a question about an image, with and without VAR."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sinklens.cli import common

LONG_GENERATION = 256  # tokens; above this `run` says the wait will be long


def add_arguments(run: argparse.ArgumentParser) -> None:
    common.add_model(run, remote=True)
    run.add_argument(
        "--image", required=True, type=Path, action="append",
        help="the image; repeat for several images in one prompt (shown in order)",
    )  # fmt: skip
    run.add_argument("--prompt", required=True, help="the question about the image")
    common.add_stack(run, var_default=True)
    run.add_argument("--max-new-tokens", type=int, default=64,
                     help="longest answer in tokens; answers stop at the end-of-sequence token (default: 64)")  # fmt: skip
    common.add_out(run, "folder for result.json")


def execute(args: argparse.Namespace) -> None:
    path = run(args)
    result = json.loads(path.read_text())
    print(f"answer without VAR: {result['answer_base']!r}")
    if result["answer_var"] is not None:
        print(f"answer with VAR:    {result['answer_var']!r}")
    for image, note in zip(result["image"], result["image_notes"]):
        if note:
            print(f"sinklens: note: --image {image}: {note}", file=sys.stderr)
    print(result["sink_summary"])
    for warning in result["warnings"]:
        print(f"sinklens: warning: {warning}", file=sys.stderr)
    print(f"result written to {path}")


def run(args: argparse.Namespace) -> Path:
    """Answer without and with VAR; write OUT/result.json (the sinks found, the answers, the settings)."""
    from sinklens.models.images import open_image, to_rgb

    started = time.perf_counter()
    common.check_out_folder(args.out)
    common.check_generation(args)
    find, var = common.stack(args, with_var=True)
    converted = [to_rgb(open_image(path, what="--image")) for path in args.image]  # corrupt, missing, a folder
    runner = common.open_model(args)
    lm = runner.loaded
    inputs = lm.prepare([image.image for image in converted], args.prompt)
    common.check_context(lm, int(inputs["input_ids"].shape[1]), args.max_new_tokens)
    if args.max_new_tokens > LONG_GENERATION:  # every step runs (EOS is suppressed): say so before a long wait
        print(f"sinklens: note: generating {args.max_new_tokens} tokens {'twice ' if args.var else ''}(every step "
              "runs; answers are cut at the end-of-sequence token afterwards): this takes a while", file=sys.stderr)
    base = runner.generate(inputs, [find], max_new_tokens=args.max_new_tokens)
    edited = runner.generate(inputs, [find, var], max_new_tokens=args.max_new_tokens) if args.var else None
    params = common.params(args, lm, find)
    sinks = _sink_positions(base.ctx)
    counts = {layer: {kind: len(found[kind]) for kind in ("visual", "text")} for layer, found in sinks.items()}
    result = {
        "model": lm.name,
        "remote": args.remote,
        "attention": lm.attention,
        "prompt": args.prompt,
        "image": [str(path) for path in args.image],
        "image_notes": [image.note for image in converted],
        "sink_dims": list(args.sink_dims or lm.sink_dims or ()),
        "sink_dims_source": "--sink-dims" if args.sink_dims else lm.sink_dims_source,
        "params": params,
        "n_image_tokens": int(base.ctx.image.mask.sum()),
        "image_grids": _image_grids(base.ctx),
        "sinks": sinks,
        "sink_counts": counts,
        "sink_summary": _sink_summary(counts, params["tau"]),
        "warnings": _sink_warnings(counts, args, params["tau"], lm.name),
        "n_image_centric": _image_centric_counts(edited.ctx) if edited else None,
        "answer_base": base.texts[0],
        "answer_var": edited.texts[0] if edited else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "result.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _sink_positions(ctx: Any) -> dict[str, dict[str, list[int]]]:
    image = ctx.image.mask[0]
    table = {}
    for layer, sinks in sorted(ctx.sinks.items()):
        found = sinks[0]
        table[str(layer)] = {
            "visual": (found & image).nonzero().flatten().tolist(),
            "text": (found & ~image).nonzero().flatten().tolist(),
        }
    return table


def _image_grids(ctx: Any) -> list[dict[str, Any]]:
    """Per image of the prompt: its span, each tile's (rows, cols) and its image-newline positions."""
    return [
        {
            "span": [image.start, image.stop],
            "tiles": {tile.name: list(tile.positions.shape) for tile in image.tiles},
            "newlines": list(image.newlines),
        }
        for image in ctx.image.images_of(0)
    ]


def _image_centric_counts(ctx: Any) -> dict[str, Any]:
    per_layer: dict[str, int] = {}
    for record in ctx.records.get("var", []):
        per_layer[str(record["layer"])] = per_layer.get(str(record["layer"]), 0) + record["n_image_centric"]
    return {"total": sum(per_layer.values()), "per_layer": per_layer}


def _layer_ranges(layers: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _sink_summary(counts: dict[str, dict[str, int]], tau: float) -> str:
    parts = []
    for kind in ("visual", "text"):
        layers = [int(layer) for layer, found in counts.items() if found[kind]]
        where = f"in {len(layers)} of {len(counts)} layers ({_layer_ranges(layers)})" if layers else f"in none of {len(counts)} layers"
        parts.append(f"{kind} sinks {where}")
    return f"sinks at tau {tau:g}: " + "; ".join(parts)


def _sink_warnings(counts: dict[str, dict[str, int]], args: argparse.Namespace, tau: float, model: str) -> list[str]:
    """What a first run must not leave unsaid: VAR acting on a model where no image token is a sink."""
    if not args.var or any(found["visual"] for found in counts.values()):
        return []
    if not any(found["text"] for found in counts.values()):
        return [
            f"no token is a sink at tau {tau:g} in any layer, so VAR had nothing to move and answer_var equals "
            "answer_base. Check --sink-dims (`sinklens discover-sink-dims`) or lower --tau."
        ]
    if args.convention == "released":
        return [
            f"no image token is a visual sink at tau {tau:g} in any layer; under the released convention VAR "
            "selects no head in a layer without a visual sink, so it changed nothing. Lower --tau to study "
            "the sinks this model has."
        ]
    return [
        f"no image token is a visual sink at tau {tau:g} in any layer, yet VAR acted: under the paper "
        "convention its budget is the attention on the text sinks (BOS and the like), which it moves onto "
        "the image tokens, so answer_var differs from answer_base for that reason. Lower --tau to study the "
        f"visual sinks this model has{' (a few image tokens pass --tau 16, in layers 23-24)' if model == 'toy-llava' else ''}, "
        "or pass --convention released (no head is selected in a layer without a visual sink)."
    ]
