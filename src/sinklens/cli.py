"""Command line: `sinklens run`, `eval pope`, `discover-sink-dims` and `draw-scene`.

    sinklens draw-scene --out scene.png
    sinklens run --image scene.png --prompt "What is in the image?" --var --out out/
    sinklens eval pope --split random --n 300 --var --out out/pope
    sinklens discover-sink-dims --out out/dims

The model defaults to toy-llava; `--model` takes a built-in name, a hub id or a local path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sinklens.errors import ParameterError, SinklensError


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sink-dims takes comma-separated integers, got {text!r}") from e


def _add_model(command: argparse.ArgumentParser) -> None:
    from sinklens.models.loading import DEFAULT_MODEL

    command.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in name, hub id or local path (default: {DEFAULT_MODEL})"
    )
    command.add_argument(
        "--attention", choices=ATTENTION_CHOICES, default="eager",
        help="eager (default): every layer's full attention pattern; rows: sdpa, with explicit attention only "
        "for the rows the stack acts on (the same results, faster)",
    )


ATTENTION_CHOICES = ("eager", "rows")  # sinklens.models.loading.ATTENTION_ROUTES (not imported: --help stays fast)


def _check_remote_attention(remote: str, attention: str) -> None:
    """NDIF runs its own copy of the model with eager attention: the rows route runs only here."""
    if remote == "ndif" and attention == "rows":
        raise ParameterError(
            "--attention rows needs sinklens' attention function next to the model, and NDIF runs its own "
            "(eager): use --attention eager with --remote ndif, or --remote off/local with --attention rows"
        )


def _add_stack(command: argparse.ArgumentParser, *, var_default: bool) -> None:
    command.add_argument("--var", action=argparse.BooleanOptionalAction, default=var_default,
                         help=f"apply VAR (default: {'on' if var_default else 'off'})")  # fmt: skip
    threshold = command.add_mutually_exclusive_group()
    threshold.add_argument("--tau", type=float, default=None,
                           help="sink threshold on phi (default: the model's registered one, else 20)")  # fmt: skip
    threshold.add_argument("--tau-fraction", type=float, default=None,
                           help="sink threshold as a fraction of sqrt(d_model), phi's ceiling")  # fmt: skip
    command.add_argument("--rho", type=float, default=0.8, help="image-centric threshold (default: 0.8)")
    command.add_argument("--p", type=float, default=0.6, help="share of sink attention moved (default: 0.6)")
    command.add_argument("--summ", type=float, default=0.2, help="minimum image attention of a head (default: 0.2)")
    command.add_argument("--convention", choices=("paper", "released"), default="paper")
    command.add_argument("--sink-dims", type=_dims, default=None, help="comma-separated; default: the model's known ones")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinklens", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="find sinks and answer a question about an image, with and without VAR")
    _add_model(run)
    run.add_argument(
        "--image", required=True, type=Path, action="append",
        help="the image; repeat for several images in one prompt (shown in order)",
    )
    run.add_argument("--prompt", required=True, help="the question about the image")
    _add_stack(run, var_default=True)
    run.add_argument("--max-new-tokens", type=int, default=16)
    run.add_argument(
        "--remote", choices=("off", "local", "ndif"), default="off",
        help="off: run here; local: nnsight's local simulation of a remote request; ndif: run on NDIF "
        "(--model a hub id NDIF hosts; needs NDIF_API_KEY)",
    )
    run.add_argument("--out", required=True, type=Path, help="folder for result.json")

    evaluate = commands.add_parser("eval", help="evaluate on a benchmark")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    pope = benchmarks.add_parser("pope", help="POPE-style yes/no object probing on held-out synthetic scenes")
    _add_model(pope)
    pope.add_argument("--split", choices=("random", "popular", "adversarial"), default="random")
    pope.add_argument("--n", type=int, default=300, help="number of questions (default: 300)")
    _add_stack(pope, var_default=False)
    pope.add_argument("--vcd", action="store_true", help="visual contrastive decoding (with --var: VAR in both passes)")
    pope.add_argument("--vcd-alpha", type=float, default=1.0, help="VCD contrast strength (default: 1)")
    pope.add_argument("--vcd-beta", type=float, default=0.1, help="VCD plausibility cut-off (default: 0.1)")
    pope.add_argument("--max-new-tokens", type=int, default=3)
    pope.add_argument("--restart", action="store_true", help="discard a previous run in --out instead of resuming it")
    pope.add_argument("--out", required=True, type=Path, help="folder for pope.jsonl (one line per example) and pope.json")

    captions = benchmarks.add_parser("captions", help="caption accuracy per attribute on held-out synthetic scenes")
    _add_model(captions)
    captions.add_argument("--n", type=int, default=100, help="number of held-out scenes (default: 100)")
    _add_stack(captions, var_default=False)
    captions.add_argument("--max-new-tokens", type=int, default=48)
    captions.add_argument("--out", required=True, type=Path, help="folder for captions.json")

    discover = commands.add_parser("discover-sink-dims", help="find the sink dimensions of a model from data")
    _add_model(discover)
    discover.add_argument("--prompts", type=int, default=8, help="number of scene prompts (default: 8)")
    threshold = discover.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, default=None,
                           help="absolute threshold on |x_d|/RMS(x) (default: 20, as SPEC says)")  # fmt: skip
    threshold.add_argument("--threshold-fraction", type=float, default=None,
                           help="threshold as a fraction of sqrt(d_model), e.g. 0.3125 = the paper's 20 at width 4096")  # fmt: skip
    discover.add_argument("--first-layer", type=int, default=2)
    discover.add_argument("--out", required=True, type=Path, help="folder for sink_dims.json and sink_dims.png")

    scene = commands.add_parser("draw-scene", help="draw a scene (a PNG): a synthetic one, or a tiny built-in's demo")
    scene.add_argument("--split", choices=("train", "heldout"), default="heldout")
    scene.add_argument("--index", type=int, default=0)
    scene.add_argument("--model", default=None,
                       help="a tiny-* built-in: draw the demo scene whose white blocks it turns into visual sinks")  # fmt: skip
    scene.add_argument("--out", required=True, type=Path)
    return parser


def _stack(args: argparse.Namespace, *, with_var: bool) -> list[Any]:
    from sinklens.interventions import VAR, FindSinks

    find = FindSinks(dims=args.sink_dims, tau=args.tau, tau_fraction=args.tau_fraction, convention=args.convention)
    var = VAR(p=args.p, rho=args.rho, summ=args.summ, convention=args.convention)
    return [find, var] if with_var else [find]


def _params(args: argparse.Namespace, lm: Any, find: Any) -> dict[str, Any]:
    return {
        "tau": round(find.threshold(lm.d_model, lm.default_tau), 4),
        "tau_rule": "--tau" if args.tau is not None else "--tau-fraction" if args.tau_fraction is not None
        else "model default" if lm.default_tau is not None else "paper (20)",
        "rho": args.rho, "p": args.p, "summ": args.summ, "convention": args.convention,
    }  # fmt: skip


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
    from sinklens.models import load

    started = time.perf_counter()
    find, var = _stack(args, with_var=True)
    for path in args.image:
        if not path.is_file():
            raise FileNotFoundError(f"--image {path} does not exist; draw one with `sinklens draw-scene --out PATH`")
    _check_remote_attention(args.remote, args.attention)
    if args.remote == "ndif":
        from sinklens.backends.remote import connect

        runner = connect(args.model)  # fails fast, naming what is missing: the API key, or the hosted models
        lm = runner.loaded
    else:
        lm = load(args.model, attention=args.attention)
        runner = NnsightRunner(lm, remote="local" if args.remote == "local" else False)
    inputs = lm.prepare([Image.open(path) for path in args.image], args.prompt)
    base = runner.generate(inputs, [find], max_new_tokens=args.max_new_tokens)
    edited = runner.generate(inputs, [find, var], max_new_tokens=args.max_new_tokens) if args.var else None
    result = {
        "model": lm.name,
        "remote": args.remote,
        "attention": lm.attention,
        "prompt": args.prompt,
        "image": [str(path) for path in args.image],
        "sink_dims": list(args.sink_dims or lm.sink_dims or ()),
        "sink_dims_source": "--sink-dims" if args.sink_dims else lm.sink_dims_source,
        "params": _params(args, lm, find),
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


def eval_pope(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval import pope
    from sinklens.models import load

    stack = _stack(args, with_var=args.var)  # check parameters before loading anything
    if args.vcd:
        from sinklens.interventions import VCD

        stack.append(VCD(alpha=args.vcd_alpha, beta=args.vcd_beta))
    if args.restart:
        pope.restart(args.out)
    lm = load(args.model, attention=args.attention)
    return pope.evaluate_pope(
        lm, NnsightRunner(lm), split=args.split, n=args.n, out=args.out, interventions=stack,
        max_new_tokens=args.max_new_tokens, settings={"params": _params(args, lm, stack[0])},
    )  # fmt: skip


def eval_captions(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval.captions import evaluate_captions
    from sinklens.models import load

    stack = _stack(args, with_var=args.var)
    if args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    lm = load(args.model, attention=args.attention)
    result = evaluate_captions(lm, NnsightRunner(lm), n=args.n, interventions=stack, max_new_tokens=args.max_new_tokens)
    result["params"] = _params(args, lm, stack[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "captions.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def discover_sink_dims(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval.discovery import discover, plot_discovery
    from sinklens.models import load

    lm = load(args.model, attention=args.attention)
    result = discover(
        lm, NnsightRunner(lm), n_prompts=args.prompts, threshold=args.threshold,
        threshold_fraction=args.threshold_fraction, first_layer=args.first_layer,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sink_dims.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_discovery(result, args.out / "sink_dims.png")
    return result


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
        elif args.command == "eval" and args.benchmark == "captions":
            result = eval_captions(args)
            print(json.dumps({k: round(v, 3) for k, v in result["accuracy"].items()}))
            print(f"captions and scores written to {args.out / 'captions.json'}")
        elif args.command == "eval":
            result = eval_pope(args)
            print(json.dumps({k: result[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")}))
            print(f"metrics written to {args.out / 'pope.json'}")
        elif args.command == "discover-sink-dims":
            result = discover_sink_dims(args)
            print(f"sink dimensions of {result['model']}: {result['sink_dims']} (threshold {result['threshold']})")
            print(f"evidence written to {args.out / 'sink_dims.json'}")
        elif args.command == "draw-scene":
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if args.model is not None:
                from sinklens.models.loading import demo_scene

                demo_scene(args.model).save(args.out)
            else:
                from sinklens.data.scenes import scene

                drawn = scene(args.split, args.index)
                drawn.image().save(args.out)
                print(drawn.caption())
            print(f"scene written to {args.out}")
    except (SinklensError, FileNotFoundError) as e:
        print(f"sinklens: error: {e}", file=sys.stderr)
        return 2
    return 0
