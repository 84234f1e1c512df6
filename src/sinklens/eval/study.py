"""What the study scripts in `studies/` share: arguments, the model, prompts, POPE runs, figures, JSON.

Each study is `python studies/NAME.py --model MODEL --out DIR [--n N] [--smoke] [--remote local|ndif]`
and writes `DIR/NAME.png` and `DIR/NAME.json` (the numbers the figure draws,
with the model, the layers and n). `--smoke` runs a tiny version for CI.

    args = parse_args("fig1_attention_maps", "Text-to-image attention drawn over the image.", n=4, smoke_n=2)
    study = Study.start(args)                  # loads the model (toy-llava by default), makes the runner
    for index, image, question in study.prompts():
        ...
    study.finish(figure, {"layers": ...})      # writes NAME.png and NAME.json, closes the figure
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sinklens.data.questions import presence
from sinklens.data.scenes import scene
from sinklens.errors import ParameterError
from sinklens.run import Runner

DEFAULT_MODEL = "toy-llava"
REMOTE_MODES = ("off", "local", "ndif")
ATTENTION_CHOICES = ("eager", "rows")  # sinklens.models.loading.ATTENTION_ROUTES
# the paper's map layers (10-12 of LLaVA-1.5-7B's 32), at the same depth of other models
PAPER_MAP_LAYERS = (10, 12)
PAPER_LAYERS = 32


def parse_args(name: str, description: str, *, n: int, smoke_n: int, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`--model`, `--out`, `--n` (default `n`; `smoke_n` under `--smoke`), `--smoke`, `--seed`, `--tau`, `--remote`."""
    parser = argparse.ArgumentParser(prog=f"studies/{name}.py", description=description)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a built-in or a checkpoint (default {DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {name}.png and {name}.json")
    parser.add_argument("--n", type=int, default=None, help=f"prompts / POPE examples per setting (default {n}; {smoke_n} with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI: few prompts, few settings")
    parser.add_argument("--seed", type=int, default=0, help="seed of random draws (random ablation, random tokens)")
    parser.add_argument("--tau", type=float, default=None,
                        help="sink threshold on phi (default: the model's registered one, else the paper's 20)")
    parser.add_argument("--remote", choices=REMOTE_MODES, default="off",
                        help="off: run here; local: nnsight's local simulation of a remote request; "
                             "ndif: run on NDIF's deployment of --model (a hub id; needs an API key)")  # fmt: skip
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default="eager",
                        help="eager (default): every layer's full pattern; rows: sdpa, with explicit attention "
                             "only for the rows the study's stack acts on")  # fmt: skip
    args = parser.parse_args(argv)
    if args.remote == "ndif" and args.attention == "rows":
        raise ParameterError(
            "--attention rows needs sinklens' attention function next to the model, and NDIF runs its own "
            "(eager): use --attention eager with --remote ndif, or --remote off/local with --attention rows"
        )
    if args.n is None:
        args.n = smoke_n if args.smoke else n
    if args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    if args.tau is not None and not args.tau > 0:
        raise ParameterError(f"--tau must be > 0, got {args.tau}")
    args.name = name
    return args


def map_layers(n_layers: int) -> tuple[int, ...]:
    """The paper's layers 10-12 (of 32) at the same relative depth: 9-11 of 30 layers."""
    low = round(PAPER_MAP_LAYERS[0] / PAPER_LAYERS * n_layers)
    high = round(PAPER_MAP_LAYERS[1] / PAPER_LAYERS * n_layers)
    return tuple(range(max(low, 0), min(high, n_layers - 1) + 1))


def scene_prompt(index: int) -> tuple[Any, str]:
    """Held-out scene `index` and a question about its first object ("Is there a circle in the image?")."""
    s = scene("heldout", index)
    return s, presence(s.objects[0].shape, True).question


@dataclass
class Study:
    """One run of a study: its arguments, the loaded model and runner, the start time."""

    args: argparse.Namespace
    loaded: Any
    runner: Runner
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, args: argparse.Namespace) -> Study:
        import sinklens

        args.out.mkdir(parents=True, exist_ok=True)
        remote = getattr(args, "remote", "off")
        if remote == "ndif":
            from sinklens.backends.remote import connect

            runner = connect(args.model)  # fails fast, naming what is missing: the API key, or the hosted models
            return cls(args=args, loaded=runner.loaded, runner=runner)
        loaded = sinklens.load(args.model, attention=getattr(args, "attention", "eager"))
        return cls(args=args, loaded=loaded, runner=sinklens.NnsightRunner(loaded, remote="local" if remote == "local" else False))

    def find_sinks(self, **kwargs: Any) -> Any:
        """FindSinks with the run's `--tau` (the model's default when not given)."""
        import sinklens

        return sinklens.FindSinks(tau=self.args.tau, **kwargs)

    @property
    def tau(self) -> float:
        """The absolute sink threshold of this run."""
        return self.find_sinks().threshold(self.loaded.d_model, self.loaded.default_tau)

    @property
    def name(self) -> str:
        return self.args.name

    def prompts(self, n: int | None = None, desc: str | None = None) -> Iterator[tuple[int, Any, str, Any]]:
        """(scene index, scene, question, inputs) for the first `n` held-out scenes, with a progress bar."""
        from tqdm.auto import tqdm

        for index in tqdm(range(n or self.args.n), desc=desc or self.name):
            s, question = scene_prompt(index)
            yield index, s, question, self.loaded.prepare(s.image(), question)

    def title(self, what: str, layers: str | None = None) -> str:
        """`MODEL: what, layers ...`, for figure titles (`layers` is the whole phrase: "layers 9-11")."""
        where = f", {layers}" if layers else ""
        return f"{self.loaded.name} (tau = {self.tau:g}): {what}{where}"

    def pope(self, label: str, split: str, n: int, interventions: Sequence[Any] = ()) -> dict[str, Any]:
        """POPE metrics of one setting, through the resumable `evaluate_pope` (rows under OUT/NAME_pope/)."""
        from sinklens.eval.pope import evaluate_pope

        out = self.args.out / f"{self.name}_pope" / label / split
        result = evaluate_pope(self.loaded, self.runner, split=split, n=n, out=out, interventions=list(interventions))
        keep = ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")
        return {"setting": label, "split": split, **{k: result[k] for k in keep}}

    def finish(self, figure: Any, data: dict[str, Any]) -> dict[str, Any]:
        """Write NAME.png and NAME.json (with the model, n, smoke and the wall time); close the figure."""
        import matplotlib.pyplot as plt

        png = self.args.out / f"{self.name}.png"
        figure.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(figure)
        record = {
            "study": self.name,
            "model": self.loaded.name,
            "n": self.args.n,
            "smoke": self.args.smoke,
            "seed": self.args.seed,
            "n_layers": self.loaded.n_layers,
            "sink_dims": list(self.loaded.sink_dims or ()),
            "tau": self.tau,
            "remote": getattr(self.args, "remote", "off"),
            "attention": self.loaded.attention,
            **data,
            "seconds": round(time.time() - self.started, 1),
        }
        path = self.args.out / f"{self.name}.json"
        path.write_text(json.dumps(_plain(record), indent=1) + "\n")
        print(f"wrote {png} and {path}")
        return record


def short(question: str) -> str:
    """A question without POPE's answer instruction, for panel titles."""
    return question.split(" Answer")[0]


def figure(*args: Any, **kwargs: Any) -> Any:
    """`plt.subplots` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def mean_and_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (n - 1) and count of a list of numbers."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def overlay(ax: Any, image: Any, grid: torch.Tensor, *, sinks: torch.Tensor | None = None, title: str = "") -> Any:
    """Draw a `[row, col]` attention grid over the image (bilinear), with sink cells marked by white crosses."""
    import numpy as np

    side = image.size[0]
    rows, cols = grid.shape
    ax.imshow(image)
    shown = ax.imshow(grid.float().numpy(), cmap="jet", alpha=0.5, extent=(0, side, side, 0), interpolation="bilinear")
    if sinks is not None and sinks.any():
        r, c = np.nonzero(sinks.numpy())
        ax.scatter((c + 0.5) * side / cols, (r + 0.5) * side / rows, marker="x", s=18, c="white", linewidths=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _plain(value: Any) -> Any:
    """JSON-ready: tensors to lists, floats rounded to 6 significant digits, NaN to None."""
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    if isinstance(value, Path):
        return str(value)
    return value
