"""Command line: `sinklens run`, `eval pope | vqa | captions`, `discover-sink-dims`, `explore` and `draw-scene`.

    sinklens draw-scene --out scene.png
    sinklens run --image scene.png --prompt "What is in the image?" --var --out out/
    sinklens eval pope --split random --n 300 --var --out out/pope
    sinklens eval pope --data coco_pope_random.json --images val2014/ --batch-size 8 --out out/pope
    sinklens eval vqa --data questions.jsonl --images images/ --out out/vqa
    sinklens discover-sink-dims --out out/dims
    sinklens explore --image scene.png --prompt "Describe the image." --out out/explore

The model defaults to toy-llava; `--model` takes a built-in name, a hub id or a local path.

One module per command (`COMMANDS`: name, help, the module's `add_arguments`
and `execute`); `common.py` holds the argument groups, the checks and the one
load preamble they share. Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sinklens.cli import compare, discover, evaluate, explore, run, scene
from sinklens.errors import SinklensError

# name -> (help, module with add_arguments(parser) and execute(args)); `eval` adds a sub-command per benchmark
COMMANDS = {
    "run": ("find sinks and answer a question about an image, with and without VAR", run),
    "eval": ("evaluate on a benchmark", evaluate),
    "compare": ("several stacks on the same questions, with paired statistics against the first", compare),
    "discover-sink-dims": ("find the sink dimensions of a model from data", discover),
    "explore": ("write an interactive attention explorer (one self-contained HTML file) for an image and prompt", explore),
    "draw-scene": ("draw a scene (a PNG): a synthetic one, or a tiny built-in's demo", scene),
}


def parser() -> argparse.ArgumentParser:
    """The whole command line (building it imports nothing heavy)."""
    top = argparse.ArgumentParser(prog="sinklens", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, (help_text, module) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        if hasattr(module, "execute"):
            command.set_defaults(execute=module.execute)
        module.add_arguments(command)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.execute(args)
    except (SinklensError, FileNotFoundError) as e:  # every refusal: one line that names the fix, no traceback
        print(f"sinklens: error: {e}", file=sys.stderr)
        return 2
    return 0
