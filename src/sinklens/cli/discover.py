"""`sinklens discover-sink-dims`: find the sink dimensions of a model from data, with the evidence per layer."""

from __future__ import annotations

import argparse
import json

from sinklens.cli import common
from sinklens.errors import ParameterError


def add_arguments(discover: argparse.ArgumentParser) -> None:
    common.add_model(discover)
    discover.add_argument("--prompts", type=int, default=8, help="number of scene prompts (default: 8)")
    threshold = discover.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, default=None,
                           help="absolute threshold on |x_d|/RMS(x) (default: 20, as SPEC says)")  # fmt: skip
    threshold.add_argument("--threshold-fraction", type=float, default=None,
                           help="threshold as a fraction of sqrt(d_model), e.g. 0.3125 = the paper's 20 at width 4096")  # fmt: skip
    discover.add_argument("--first-layer", type=int, default=2)
    common.add_out(discover, "folder for sink_dims.json and sink_dims.png")


def execute(args: argparse.Namespace) -> None:
    from sinklens.eval.discovery import discover, plot_discovery

    if args.prompts < 1:
        raise ParameterError(f"--prompts must be >= 1 (the number of scene prompts to scan), got {args.prompts}")
    if args.first_layer < 0:
        raise ParameterError(f"--first-layer must be >= 0, got {args.first_layer}")
    if args.threshold is not None and not args.threshold > 0:
        raise ParameterError(f"--threshold must be > 0 (every dimension would pass {args.threshold:g}); SPEC's is 20")
    if args.threshold_fraction is not None and not 0 < args.threshold_fraction < 1:
        raise ParameterError(
            f"--threshold-fraction must be in (0, 1): it is a fraction of sqrt(d_model), which |x_d| / RMS(x) never "
            f"exceeds; got {args.threshold_fraction:g} (0.3125 gives the paper's 20 at width 4096)"
        )
    common.check_out_folder(args.out)
    runner = common.open_model(args)  # discover checks --first-layer and --threshold against the model before its scan
    result = discover(
        runner.loaded, runner, n_prompts=args.prompts, threshold=args.threshold,
        threshold_fraction=args.threshold_fraction, first_layer=args.first_layer,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sink_dims.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_discovery(result, args.out / "sink_dims.png")
    print(f"sink dimensions of {result['model']}: {result['sink_dims']} (threshold {result['threshold']})")
    print(f"evidence written to {args.out / 'sink_dims.json'}")
