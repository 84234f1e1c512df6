"""Fig. 4: heads ranked by visual non-sink ratio r (averaged over text queries and prompts), with example maps.

The example maps are the attention of the text queries in one head, for the
first prompt, from the three top and three bottom heads of layers 2..L-2.
"""

from __future__ import annotations

import torch

import sinklens as sl
from sinklens.eval.figures import figure, overlay
from sinklens.eval.study import Study
from sinklens.eval.study_settings import parse_args
from sinklens.interventions import image_map

NAME = "fig4_head_ranking"
EXAMPLES = 3


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__.splitlines()[0], n=20, smoke_n=2, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    layers = tuple(range(2, lm.n_layers - 1))
    scores, image_attention = [], []
    for batch, inputs in study.batches():
        ctx = study.runner.forward(inputs, [study.find_sinks(), sl.HeadScores(layers=layers)]).ctx
        for e in batch:
            scores.append(torch.stack([ctx.records["head_scores"][l][e.row] for l in layers]))  # [layer, head]
            image_attention.append(torch.stack([ctx.records["head_image_attention"][l][e.row] for l in layers]))
    score = torch.stack(scores).mean(0)
    attention = torch.stack(image_attention).mean(0)
    n_heads = score.shape[1]
    order = score.flatten().argsort(descending=True)
    ranked = [{"layer": layers[int(k) // n_heads], "head": int(k) % n_heads, "ratio": float(score.flatten()[k]),
               "image_attention": float(attention.flatten()[k])} for k in order]  # fmt: skip
    picks = ranked[:EXAMPLES] + ranked[-EXAMPLES:]
    s, question, inputs = study.prompt(0)
    shown = study.source_name(s, 0)
    fig = None
    fig, axes = figure(2, 1 + EXAMPLES, figsize=(3.0 * (1 + EXAMPLES), 6.2), squeeze=False,
                       gridspec_kw={"width_ratios": [2.2] + [1] * EXAMPLES})  # fmt: skip
    gs = axes[0, 0].get_gridspec()
    axes[0, 0].remove()
    axes[1, 0].remove()
    ranking_ax = fig.add_subplot(gs[:, 0])
    ranking_ax.plot(range(len(ranked)), [r["ratio"] for r in ranked], lw=1.2, label="visual non-sink ratio r")
    ranking_ax.plot(range(len(ranked)), [r["image_attention"] for r in ranked], ".", ms=2, alpha=0.6, label="image attention s")
    ranking_ax.axhline(0.8, color="k", ls="--", lw=0.7, label="rho = 0.8")
    ranking_ax.set_xlabel(f"head rank (of {len(ranked)} heads, layers {layers[0]}-{layers[-1]})")
    ranking_ax.set_ylabel("score (mean over text queries and prompts)")
    ranking_ax.legend(fontsize=7)
    ranking_ax.set_title("heads sorted by r", fontsize=9)
    for k, pick in enumerate(picks):
        ctx = study.runner.forward(inputs, [study.find_sinks(layers=[pick["layer"]]),
                                            sl.AttentionMaps(layers=[pick["layer"]], heads=[pick["head"]])]).ctx  # fmt: skip
        grid = image_map(ctx, [pick["layer"]])
        tile = max(ctx.image.images_of(0)[0].tiles, key=lambda t: t.positions.numel())
        sinks = tile.gather(ctx.sinks[pick["layer"]][0].cpu())
        pick["example_map"] = grid
        ax = axes[0 if k < EXAMPLES else 1, 1 + k % EXAMPLES]
        where = "top" if k < EXAMPLES else "bottom"
        overlay(ax, s.image(), grid, sinks=sinks, title=f"{where}: L{pick['layer']} H{pick['head']}, r = {pick['ratio']:.2f}")
    fig.suptitle(study.title(f"head ranking by visual non-sink ratio ({settings.n} prompts); example maps of {shown}, sinks (x)"),
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return study.finish(fig, {
        "layers": layers, "ratio": score, "image_attention": attention, "ranked": ranked, "examples": picks,
        "share_of_heads_with_r_at_least_0.8": float((score >= 0.8).float().mean()),
        "share_of_heads_with_r_at_least_0.5": float((score >= 0.5).float().mean()),
    })  # fmt: skip


if __name__ == "__main__":
    main()
