"""Fig. 1: attention from the text to the image tokens, drawn over the image, visual sinks marked."""

from __future__ import annotations

import sinklens as sl
from sinklens.eval.figures import figure, overlay, short
from sinklens.eval.study import Study, map_layers
from sinklens.eval.study_settings import parse_args
from sinklens.interventions import image_map

NAME = "fig1_attention_maps"


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__, n=6, smoke_n=2, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    layers = map_layers(lm.n_layers)
    middle = layers[len(layers) // 2]
    examples, panels = [], []
    for batch, inputs in study.batches():
        ctx = study.runner.forward(inputs, [study.find_sinks(), sl.AttentionMaps(layers=layers)]).ctx
        for e in batch:
            s, question = e.source, e.question
            grid = image_map(ctx, layers, prompt=e.row)
            tile = max(ctx.image.images_of(e.row)[0].tiles, key=lambda t: t.positions.numel())
            sinks = tile.gather(ctx.sinks[middle][e.row].cpu())
            on_sinks = float((grid * sinks).sum() / grid.sum())
            examples.append({"scene": study.source_name(s, e.index), "question": question, "objects": [o.phrase + " at " + o.position for o in s.objects],
                             "background": s.background, "map": grid, "visual_sinks": sinks.int(),
                             "n_visual_sinks": int(sinks.sum()), "share_of_image_attention_on_sinks": on_sinks})  # fmt: skip
            panels.append((s.image(), grid, sinks, question, on_sinks))
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = figure(rows, cols, figsize=(3.2 * cols, 3.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (image, grid, sinks, question, on_sinks) in zip(axes.flat, panels):
        shown = overlay(ax, image, grid, sinks=sinks, title=f"{short(question)}\n{int(sinks.sum())} sinks (x), {on_sinks:.0%} of image attn")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="attention")
    span = f"layers {layers[0]}-{layers[-1]}"
    fig.suptitle(study.title("text-to-image attention (mean over heads and text queries)", span)
                 + f"\nvisual sinks (x) at layer {middle}", fontsize=10)
    fig.tight_layout()
    return study.finish(fig, {"layers": layers, "sink_layer": middle, "grid": lm.grid, "examples": examples,
                              "mean_share_on_sinks": sum(e["share_of_image_attention_on_sinks"] for e in examples) / len(examples)})  # fmt: skip


if __name__ == "__main__":
    main()
