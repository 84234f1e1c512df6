"""`sinklens draw-scene`: a synthetic scene, or a tiny built-in's demo scene, as an image file."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinklens.cli import common
from sinklens.errors import ParameterError, UnknownModelError


def add_arguments(scene: argparse.ArgumentParser) -> None:
    scene.add_argument("--split", choices=("train", "heldout"), default="heldout")
    scene.add_argument("--index", type=int, default=0)
    scene.add_argument("--model", default=None,
                       help="a tiny-* built-in: draw the demo scene whose white blocks it turns into visual sinks")  # fmt: skip
    scene.add_argument("--out", required=True, type=Path)


def execute(args: argparse.Namespace) -> None:
    from sinklens.builtin import BUILTINS, demo_scene

    common.check_out_image(args.out)
    if args.index < 0:
        raise ParameterError(f"--index must be >= 0 (scenes are numbered from 0), got {args.index}")
    if args.model is not None and args.model not in BUILTINS:
        from sinklens.models.load import builtins_hint

        raise UnknownModelError(
            f"draw-scene --model takes a built-in (it draws that built-in's demo scene), got {args.model!r}. "
            f"{builtins_hint(args.model)}."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        demo_scene(args.model).save(args.out)
    else:
        from sinklens.data.scenes import scene

        drawn = scene(args.split, args.index)
        drawn.image().save(args.out)
        print(drawn.caption())
    print(f"scene written to {args.out}")
