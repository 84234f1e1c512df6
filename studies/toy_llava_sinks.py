"""Where toy-llava's visual sinks are, how much attention they take, and whether position explains them.

    python studies/toy_llava_sinks.py --out DIR [--model toy-llava] [--n 40] [--smoke]

For `--n` held-out scenes, asked "Describe the image.", it finds sinks with the
model's default FindSinks and reads text-to-image attention (text queries after
the image, mean over heads) at every layer. Per layer it reports:

- how many image tokens are sinks (and text tokens);
- the share of text-to-image attention the visual sinks take, against their share of tokens;
- whether sinks sit on background (a patch with < 5% object pixels), against the base rate;
- a position control: the same scenes mirrored left-right. If sinks follow content, the
  mirrored image's sinks sit at the mirrored positions; if they follow the token order
  (position), they stay where they were. Both overlaps (IoU) are reported.

Writes DIR/NAME.json, DIR/NAME.png (per-layer curves) and DIR/NAME_examples.png
(sinks over two scenes and their mirrors); NAME is `--name` (default toy_llava_sinks).
`--tau` runs the same analysis at another threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import ImageOps
from tqdm.auto import tqdm

from sinklens import FindSinks, Hook
from sinklens.data.scenes import object_mask, scene
from sinklens.eval.settings import ModelSettings, add_model_arguments
from sinklens.hook_points import block

BACKGROUND_COVERAGE = 0.05
QUESTION = "Describe the image."
SWEEP = (8.0, 12.0, 16.0, 20.0)  # thresholds at which image tokens are also counted (phi's ceiling is 24)


@dataclass(frozen=True)
class TextToImageAttention:
    """Records, per layer, the attention each key gets from the text queries after the image (mean over heads)."""

    layers: tuple[int, ...]

    def hooks(self, ctx):
        return [Hook(block(layer, "attn.hook_pattern"), partial(_read, layer=layer), writes=False) for layer in self.layers]


def _read(pattern, ctx, *, layer):
    rows = ctx.query_rows(pattern)  # the text rows, however many rows the tensor holds
    queries = rows.queries.float()  # [batch, query]
    per_query = rows.of(pattern).float().mean(1)  # [batch, query, key]
    per_key = torch.einsum("bq,bqk->bk", queries, per_query) / queries.sum(-1, keepdim=True)
    ctx.found.add("text_to_image", per_key.cpu(), layer=layer)


def patch_coverage(s, side: int, patch: int) -> torch.Tensor:
    """Fraction of object pixels in each patch of the image as the model sees it ([rows * cols])."""
    mask = object_mask(s, side).resize((side, side))
    pixels = torch.tensor(list(mask.getdata()), dtype=torch.float32).view(side, side) / 255
    rows = side // patch
    return pixels[: rows * patch, : rows * patch].reshape(rows, patch, rows, patch).mean((1, 3)).flatten()


def iou(a: torch.Tensor, b: torch.Tensor) -> float | None:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else None


def measure(lm, runner, image, layers, find):
    inputs = lm.prepare(image, QUESTION)
    ctx = runner.forward(inputs, [find, TextToImageAttention(layers)]).ctx
    image_mask = ctx.image.mask[0].cpu()
    return {
        "sinks": {layer: ctx.sinks[layer][0].cpu() for layer in layers},
        "phi": {layer: ctx.phi[layer][0].cpu() for layer in layers},
        "attention": ctx.records["text_to_image"],
        "image": image_mask,
    }


def mirror_grid(flags: torch.Tensor, rows: int) -> torch.Tensor:
    return flags.view(rows, rows).flip(-1).flatten()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40, help="held-out scenes (default: 40)")
    parser.add_argument("--tau", type=float, default=None, help="sink threshold (default: the model's)")
    parser.add_argument("--name", default="toy_llava_sinks", help="file name stem of the outputs")
    parser.add_argument("--smoke", action="store_true", help="2 scenes, to check the pipeline")
    args = parser.parse_args(argv)
    n = 2 if args.smoke else args.n
    started = time.perf_counter()

    runner = ModelSettings.from_args(args).open()
    lm = runner.loaded
    rows, cols = lm.grid
    side = lm.processor.image_processor.size["height"]
    patch = side // rows
    layers = tuple(range(lm.n_layers))
    find = FindSinks(tau=args.tau)
    tau = find.threshold(lm.d_model, lm.default_tau)

    keys = ("visual", "text", "attention_share", "token_share", "on_background", "iou_content", "iou_position",
            "phi_first_token", "phi_image_max", "phi_image_median", *(f"image_phi_over_{t:g}" for t in SWEEP))
    per_layer = {layer: {k: [] for k in keys} for layer in layers}
    background_rate = []
    examples = []
    for index in tqdm(range(n), desc="scenes (original and mirrored)"):
        s = scene("heldout", index)
        picture = s.image()
        original = measure(lm, runner, picture, layers, find)
        mirrored = measure(lm, runner, ImageOps.mirror(picture), layers, find)
        coverage = patch_coverage(s, side, patch)
        background = coverage < BACKGROUND_COVERAGE
        background_rate.append(background.float().mean().item())
        image = original["image"]
        for layer in layers:
            sinks = original["sinks"][layer]
            visual = sinks[image]  # [rows * cols], raster order
            attention = original["attention"][layer][0][image]
            record = per_layer[layer]
            record["visual"].append(int(visual.sum()))
            record["text"].append(int((sinks & ~image).sum()))
            phi = original["phi"][layer]
            record["phi_first_token"].append(phi[0].item())
            record["phi_image_max"].append(phi[image].max().item())
            record["phi_image_median"].append(phi[image].median().item())
            for t in SWEEP:
                record[f"image_phi_over_{t:g}"].append(int((phi[image] >= t).sum()))
            record["token_share"].append(visual.float().mean().item())
            record["attention_share"].append((attention[visual].sum() / attention.sum()).item())
            if visual.any():
                record["on_background"].append(background[visual].float().mean().item())
            flipped = mirrored["sinks"][layer][mirrored["image"]]
            for key, value in (("iou_content", iou(flipped, mirror_grid(visual, rows))), ("iou_position", iou(flipped, visual))):
                if value is not None:
                    record[key].append(value)
        if index < 2:
            examples.append((s, picture, original, mirrored))

    def stats(values):
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": round(t.mean().item(), 4), "std": round(t.std().item(), 4) if len(values) > 1 else 0.0,
                "n": len(values)} if values else None  # fmt: skip

    summary = {
        "model": lm.name,
        "sink_dims": list(lm.sink_dims or ()),
        "tau": tau,
        "question": QUESTION,
        "n_scenes": n,
        "grid": [rows, cols],
        "background_rule": f"patch with < {BACKGROUND_COVERAGE:.0%} object pixels",
        "background_rate": stats(background_rate),
        "per_layer": {str(layer): {key: stats(values) for key, values in record.items()} for layer, record in per_layer.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_layers(summary, args.out / f"{args.name}.png")
    plot_examples(examples, lm, rows, args.out / f"{args.name}_examples.png", tau=tau)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_layer"}, indent=1))


def plot_layers(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [int(k) for k in summary["per_layer"]]

    def curve(key):
        values = [summary["per_layer"][str(layer)][key] for layer in layers]
        return [v["mean"] if v else float("nan") for v in values], [v["std"] if v else 0.0 for v in values]

    def panel(ax, series, title, ylabel, share=False):
        for key, label in series:
            mean, std = curve(key)
            ax.errorbar(layers, mean, yerr=std, marker="o", ms=3, capsize=2, label=label)
        ax.set(xlabel="layer", ylabel=ylabel, title=title, **({"ylim": (0, 1.02)} if share else {}))
        ax.legend(fontsize=8)

    fig, axes = plt.subplots(2, 3, figsize=(16, 7.5), dpi=110)
    axes[0, 2].axhline(summary["tau"], color="k", ls="--", lw=0.8, label=f"tau = {summary['tau']:g}")
    axes[1, 0].axhline(summary["background_rate"]["mean"], color="k", ls="--", lw=0.8,
                       label="share of all patches on background")  # fmt: skip
    panel(axes[0, 0], [("visual", "image tokens that are sinks"), ("text", "text tokens that are sinks")],
          "How many sinks", "tokens per prompt (mean ± sd)")  # fmt: skip
    panel(axes[0, 1], [("attention_share", "share of text-to-image attention on visual sinks"),
                       ("token_share", "share of image tokens that are visual sinks")],
          "How much attention they take", "share (0-1)", share=True)  # fmt: skip
    panel(axes[0, 2], [("phi_first_token", "first token (BOS)"), ("phi_image_max", "image tokens: largest"),
                       ("phi_image_median", "image tokens: median")],
          "Sink-dimension value phi", "phi = |x_d| / RMS(x) on the sink dims")  # fmt: skip
    panel(axes[1, 0], [("on_background", "share of visual sinks on background")],
          "Do they sit on background?", "share (0-1)", share=True)  # fmt: skip
    panel(axes[1, 1], [("iou_content", "mirrored image vs mirrored sink positions (content)"),
                       ("iou_position", "mirrored image vs same positions (token order)")],
          "Position control: mirror the image", "IoU of visual sink sets", share=True)  # fmt: skip
    panel(axes[1, 2], [(f"image_phi_over_{t:g}", f"phi >= {t:g}") for t in SWEEP],
          "Image tokens over other thresholds", "image tokens per prompt (mean ± sd)")  # fmt: skip
    fig.suptitle(f"{summary['model']}: visual sinks at hook_resid_pre, tau = {summary['tau']:g} on dims "
                 f"{summary['sink_dims']}, {summary['n_scenes']} held-out scenes, layers 0-{layers[-1]}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_examples(examples, lm, rows, path, tau: float, layer: int | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = layer if layer is not None else max(1, round(lm.n_layers * 0.8))
    fig, axes = plt.subplots(len(examples), 2, figsize=(7, 3.5 * len(examples)), dpi=110, squeeze=False)
    for row, (s, picture, original, mirrored) in enumerate(examples):
        for col, (shown, measured, name) in enumerate(((picture, original, "original"),
                                                       (ImageOps.mirror(picture), mirrored, "mirrored"))):  # fmt: skip
            ax = axes[row, col]
            ax.imshow(shown)
            cell = shown.size[0] / rows
            visual = measured["sinks"][layer][measured["image"]].view(rows, rows)
            for r, c in visual.nonzero().tolist():
                ax.add_patch(plt.Rectangle((c * cell, r * cell), cell, cell, fill=False, ec="red", lw=1.2))
            ax.set_title(f"scene {s.index}, {name}: {int(visual.sum())} visual sinks (red)", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{lm.name}: image tokens with phi >= {tau:g} at layer {layer} (patch grid {rows} x {rows})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
