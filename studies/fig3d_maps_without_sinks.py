"""Fig. 3d: attention maps with the visual sinks, and after ablating them (attention recomputed without them).

"Without" removes the text queries' attention to the visual sinks before the
softmax in every layer (SinkAblation), so the map shows where that attention
goes instead; the sink cells then read zero.
"""

from __future__ import annotations

import sinklens as sl
from sinklens.eval.figures import figure, overlay, short
from sinklens.eval.study import Study, map_layers
from sinklens.eval.study_settings import parse_args
from sinklens.interventions import image_map

NAME = "fig3d_maps_without_sinks"


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__.splitlines()[0], n=4, smoke_n=2, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    layers = map_layers(lm.n_layers)
    middle = layers[len(layers) // 2]
    maps = sl.AttentionMaps(layers=layers)
    examples = []
    fig, axes = figure(settings.n, 2, figsize=(6.6, 3.1 * settings.n), squeeze=False)
    for batch, inputs in study.batches():
        kept = study.runner.forward(inputs, [study.find_sinks(), maps]).ctx
        removed = study.runner.forward(inputs, [study.find_sinks(), sl.SinkAblation(), maps]).ctx
        for e in batch:
            s, question = e.source, e.question
            tile = max(kept.image.images_of(e.row)[0].tiles, key=lambda t: t.positions.numel())
            sinks = tile.gather(kept.sinks[middle][e.row].cpu())
            with_sinks, without = image_map(kept, layers, prompt=e.row), image_map(removed, layers, prompt=e.row)
            non_sink = ~sinks
            examples.append({
                "scene": study.source_name(s, e.index), "question": question, "objects": [o.phrase + " at " + o.position for o in s.objects],
                "visual_sinks": sinks.int(), "map_with_sinks": with_sinks, "map_without_sinks": without,
                "image_attention_with": float(with_sinks.sum()), "image_attention_without": float(without.sum()),
                "non_sink_attention_with": float(with_sinks[non_sink].sum()),
                "non_sink_attention_without": float(without[non_sink].sum()),
            })  # fmt: skip
            for ax, grid, what in ((axes[e.index, 0], with_sinks, "with sinks"), (axes[e.index, 1], without, "visual sinks ablated")):
                shown = overlay(ax, s.image(), grid, sinks=sinks, title=f"{short(question)}\n{what}: image attn {float(grid.sum()):.2f}")
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="attention")
    fig.suptitle(study.title("text-to-image attention with and without visual sinks", f"layers {layers[0]}-{layers[-1]}")
                 + f"\nsinks (x) at layer {middle}; ablation in every layer", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return study.finish(fig, {"layers": layers, "sink_layer": middle, "ablation_layers": "all", "examples": examples})


if __name__ == "__main__":
    main()
