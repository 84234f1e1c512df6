"""Command line: `sinklens run` and `sinklens draw-scene`.

    sinklens run --model tiny-llava --image scene.png --prompt "What is in the image?" --var --out out/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sinklens.errors import SinklensError


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sink-dims takes comma-separated integers, got {text!r}") from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinklens", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="find sinks and answer a question about an image, with and without VAR")
    run.add_argument(
        "--model", default="tiny-llava",
        help="built-in name (tiny-llava, tiny-llava-next, tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-internvl), "
        "hub id or local path (default: tiny-llava)",
    )
    run.add_argument(
        "--image", required=True, type=Path, action="append",
        help="the image; repeat for several images in one prompt (shown in order)",
    )
    run.add_argument("--prompt", required=True, help="the question about the image")
    run.add_argument("--var", action=argparse.BooleanOptionalAction, default=True, help="also answer with VAR (default: on)")
    run.add_argument("--tau", type=float, default=20.0, help="sink threshold on phi (default: 20)")
    run.add_argument("--rho", type=float, default=0.8, help="image-centric threshold (default: 0.8)")
    run.add_argument("--p", type=float, default=0.6, help="share of sink attention moved (default: 0.6)")
    run.add_argument("--summ", type=float, default=0.2, help="minimum image attention of a head (default: 0.2)")
    run.add_argument("--convention", choices=("paper", "released"), default="paper")
    run.add_argument("--sink-dims", type=_dims, default=None, help="comma-separated; default: the model's known ones")
    run.add_argument("--max-new-tokens", type=int, default=16)
    run.add_argument("--out", required=True, type=Path, help="folder for result.json")

    scene = commands.add_parser("draw-scene", help="draw the demo scene (a PNG) of a tiny built-in")
    scene.add_argument("--model", default="tiny-llava", help="the built-in whose planted sinks the scene shows")
    scene.add_argument("--out", required=True, type=Path)
    return parser


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


def run(args: argparse.Namespace) -> Path:
    from PIL import Image

    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.interventions import VAR, FindSinks
    from sinklens.models import load

    started = time.perf_counter()
    find = FindSinks(dims=args.sink_dims, tau=args.tau, convention=args.convention)
    var = VAR(p=args.p, rho=args.rho, summ=args.summ, convention=args.convention)
    for path in args.image:
        if not path.is_file():
            raise FileNotFoundError(f"--image {path} does not exist; draw one with `sinklens draw-scene --out PATH`")
    lm = load(args.model)
    runner = NnsightRunner(lm)
    inputs = lm.prepare([Image.open(path) for path in args.image], args.prompt)
    base = runner.generate(inputs, [find], max_new_tokens=args.max_new_tokens)
    edited = runner.generate(inputs, [find, var], max_new_tokens=args.max_new_tokens) if args.var else None
    result = {
        "model": lm.name,
        "prompt": args.prompt,
        "image": [str(path) for path in args.image],
        "sink_dims": list(args.sink_dims or lm.sink_dims or ()),
        "sink_dims_source": "--sink-dims" if args.sink_dims else lm.sink_dims_source,
        "params": {"tau": args.tau, "rho": args.rho, "p": args.p, "summ": args.summ, "convention": args.convention},
        "n_image_tokens": int(base.ctx.image.mask.sum()),
        "image_grids": _image_grids(base.ctx),
        "sinks": _sink_positions(base.ctx),
        "n_image_centric": _image_centric_counts(edited.ctx) if edited else None,
        "answer_base": base.texts[0],
        "answer_var": edited.texts[0] if edited else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "result.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            path = run(args)
            result = json.loads(path.read_text())
            print(f"answer without VAR: {result['answer_base']!r}")
            if result["answer_var"] is not None:
                print(f"answer with VAR:    {result['answer_var']!r}")
            print(f"result written to {path}")
        elif args.command == "draw-scene":
            from sinklens.models.loading import demo_scene

            args.out.parent.mkdir(parents=True, exist_ok=True)
            demo_scene(args.model).save(args.out)
            print(f"scene written to {args.out}")
    except (SinklensError, FileNotFoundError) as e:
        print(f"sinklens: error: {e}", file=sys.stderr)
        return 2
    return 0
