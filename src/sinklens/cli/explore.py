"""`sinklens explore`: one self-contained HTML page to explore the attention of an image and prompt."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinklens.cli import common
from sinklens.errors import ParameterError


def add_arguments(explore: argparse.ArgumentParser) -> None:
    common.add_model(explore)
    explore.add_argument("--image", required=True, type=Path, action="append",
                         help="the image; repeat for several images in one prompt (shown in order)")  # fmt: skip
    explore.add_argument("--prompt", required=True, help="the question about the image")
    common.add_stack(explore, var_default=True)
    explore.add_argument("--max-new-tokens", type=int, default=16)
    explore.add_argument("--heads", choices=("auto", "all", "mean"), default="auto",
                         help="keep every head's attention, the layer mean only, or every head when it fits "
                         "in --max-mb (default: auto)")  # fmt: skip
    explore.add_argument("--max-mb", type=float, default=16.0, help="size budget of --heads auto (default: 16)")
    common.add_out(explore, "folder for index.html")


def execute(args: argparse.Namespace) -> None:
    from sinklens.explorer import explore as build
    from sinklens.models.images import open_image, to_rgb

    find, var = common.stack(args, with_var=True)  # check parameters before loading anything
    common.check_generation(args)
    if not args.max_mb > 0:
        raise ParameterError(f"--max-mb must be > 0, got {args.max_mb}")
    images = [to_rgb(open_image(path, what="--image")).image for path in args.image]  # corrupt, missing, a folder
    common.check_out_folder(args.out)
    lm = common.open_model(args).loaded
    page = build(lm, images, args.prompt, find=find, var=var if args.var else None,
                 max_new_tokens=args.max_new_tokens, heads=args.heads, max_mb=args.max_mb)  # fmt: skip
    path, sizes = page.save(args.out), page.sizes
    print(f"explorer written to {path} ({sizes['html'] / 1e6:.2f} MB: attention data "
          f"{sizes['attention_bytes'] / 1e6:.2f} MB, inlined JSON {sizes['json_bytes'] / 1e6:.2f} MB)")  # fmt: skip
