"""Fig. 3c: attention contribution || a_ij W_O^h W_V^h x~_j || of visual sinks against random image tokens, per layer.

Per prompt and layer, a token's contribution is summed over heads and averaged
over the text queries; the figure shows the mean per token of the visual sinks
and of as many random non-sink image tokens (seeded), with the attention they
receive for comparison (sinks get much attention but contribute little).
"""

from __future__ import annotations

import torch

import sinklens as sl
from sinklens import ops
from sinklens.eval.figures import figure, mean_and_spread
from sinklens.eval.study import Study
from sinklens.eval.study_settings import parse_args

NAME = "fig3c_contribution"


def log_scale(ax) -> None:
    """Log y axis and a legend where something was drawn; a note where no layer had a visual sink."""
    if any(len(line.get_ydata()) for line in ax.lines):
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no visual sink in any layer at this tau", transform=ax.transAxes, ha="center", fontsize=9)


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__.splitlines()[0], n=20, smoke_n=2, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    layers = tuple(range(2, lm.n_layers))
    contribution = sl.AttentionContribution(layers=layers)
    keys = ("contribution", "attention")
    series = {(kind, what): {l: [] for l in layers} for kind in ("sinks", "random") for what in keys}
    generator = torch.Generator().manual_seed(settings.seed)
    for batch, inputs in study.batches():
        ctx = study.runner.forward(inputs, [study.find_sinks(), contribution, sl.AttentionMaps(layers=layers)]).ctx
        queries = ctx.text_queries(inputs["input_ids"].shape[1])[:, ctx.spec.text_from:].cpu()
        per_key = {}  # layer -> [batch, key]: contribution summed over heads, averaged over each prompt's text queries
        for l in layers:
            summed = ctx.records["contribution"][l].sum(1)  # [batch, query, key]
            per_key[l] = (summed * queries[..., None]).sum(1) / queries.sum(-1, keepdim=True)
        for e in batch:  # on its own positions, so the random draw is the one it gets alone (same shape, same order)
            image = e.own(ctx.image.mask).cpu()
            for l in layers:
                sinks = e.own(ctx.sinks[l]).cpu() & image
                if not sinks.any():
                    continue
                chosen = ops.random_keys((image & ~sinks)[None], sinks.sum()[None], generator)[0]
                for kind, mask in (("sinks", sinks), ("random", chosen)):
                    series[(kind, "contribution")][l].append(float(e.own(per_key[l])[mask].mean()))
                    series[(kind, "attention")][l].append(float(e.own(ctx.records["attention_maps"][l])[mask].mean()))
    per_layer = [{"layer": l, **{f"{kind}_{what}": mean_and_spread(series[(kind, what)][l])
                                 for kind in ("sinks", "random") for what in keys}} for l in layers]  # fmt: skip
    for row in per_layer:  # contribution per unit of attention: how large the tokens' head outputs ||W_O v_j|| are
        for kind in ("sinks", "random"):
            c, a = row[f"{kind}_contribution"]["mean"], row[f"{kind}_attention"]["mean"]
            row[f"{kind}_contribution_per_attention"] = c / a if row[f"{kind}_contribution"]["n"] and a > 0 else None
    fig, axes = figure(1, 3, figsize=(14, 3.8))
    for ax, what, unit in zip(axes, keys, ("contribution per token (L2 norm, summed over heads)", "attention per token (mean over heads)")):
        for kind, colour, label in (("sinks", "C3", "visual sinks"), ("random", "C0", "random image tokens")):
            xs = [row["layer"] for row in per_layer if row[f"{kind}_{what}"]["n"]]
            mean = torch.tensor([row[f"{kind}_{what}"]["mean"] for row in per_layer if row[f"{kind}_{what}"]["n"]])
            std = torch.tensor([row[f"{kind}_{what}"]["std"] for row in per_layer if row[f"{kind}_{what}"]["n"]])
            ax.plot(xs, mean, "o-", ms=3, color=colour, label=label)
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2)
        ax.set_xlabel("layer")
        ax.set_ylabel(unit, fontsize=8)
        log_scale(ax)
    for kind, colour, label in (("sinks", "C3", "visual sinks"), ("random", "C0", "random image tokens")):
        xs = [row["layer"] for row in per_layer if row[f"{kind}_contribution_per_attention"] is not None]
        axes[2].plot(xs, [row[f"{kind}_contribution_per_attention"] for row in per_layer
                          if row[f"{kind}_contribution_per_attention"] is not None], "o-", ms=3, color=colour, label=label)  # fmt: skip
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("contribution / attention", fontsize=8)
    log_scale(axes[2])
    axes[2].set_title("contribution per unit attention (~ ||W_O W_V x_j||)", fontsize=9)
    axes[0].set_title("attention contribution ||a_ij W_O W_V x_j||", fontsize=9)
    axes[1].set_title("attention received", fontsize=9)
    fig.suptitle(study.title(f"visual sinks vs random image tokens (mean over text queries, {settings.n} prompts, +/- 1 s.d.)",
                             f"layers {layers[0]}-{layers[-1]}"), fontsize=9)  # fmt: skip
    fig.tight_layout()
    ratio = [row["sinks_contribution"]["mean"] / row["random_contribution"]["mean"] for row in per_layer
             if row["sinks_contribution"]["n"] and row["random_contribution"]["mean"] > 0]  # fmt: skip
    attention_ratio = [row["sinks_attention"]["mean"] / row["random_attention"]["mean"] for row in per_layer
                       if row["sinks_attention"]["n"] and row["random_attention"]["mean"] > 0]  # fmt: skip
    return study.finish(fig, {
        "layers": layers, "per_layer": per_layer,
        "mean_sink_over_random_contribution": sum(ratio) / len(ratio) if ratio else None,
        "mean_sink_over_random_attention": sum(attention_ratio) / len(attention_ratio) if attention_ratio else None,
    })  # fmt: skip


if __name__ == "__main__":
    main()
