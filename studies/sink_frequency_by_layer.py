"""Appendix figure: the share of image tokens that are visual sinks, per layer."""

from __future__ import annotations

import torch

import sinklens as sl
from sinklens.eval.figures import figure, mean_and_spread
from sinklens.eval.study import Study
from sinklens.eval.study_settings import parse_args

NAME = "sink_frequency_by_layer"


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__, n=40, smoke_n=4, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    finder = study.find_sinks()
    shares = [[] for _ in range(lm.n_layers)]
    text_sinks = [[] for _ in range(lm.n_layers)]
    for batch, inputs in study.batches():
        ctx = study.runner.forward(inputs, [finder]).ctx
        for e in batch:  # its own positions: left padding is neither image nor text
            image = e.own(ctx.image.mask)
            for layer in range(lm.n_layers):
                sinks = e.own(ctx.sinks[layer])
                shares[layer].append(float((sinks & image).sum() / image.sum()))
                text_sinks[layer].append(int((sinks & ~image).sum()))
    tau = finder.threshold(lm.d_model, lm.default_tau)
    per_layer = [{"layer": l, "visual_sink_share": mean_and_spread(shares[l]),
                  "text_sinks": mean_and_spread(text_sinks[l])} for l in range(lm.n_layers)]  # fmt: skip
    fig, ax = figure(figsize=(6.4, 3.6))
    mean = torch.tensor([row["visual_sink_share"]["mean"] for row in per_layer])
    std = torch.tensor([row["visual_sink_share"]["std"] for row in per_layer])
    ax.plot(range(lm.n_layers), 100 * mean, "o-", ms=3, label="visual sinks / image tokens")
    ax.fill_between(range(lm.n_layers), 100 * (mean - std).clamp_min(0), 100 * (mean + std), alpha=0.25, label="+/- 1 s.d. over prompts")
    ax.set_xlabel("layer (hook_resid_pre)")
    ax.set_ylabel("image tokens that are sinks (%)")
    ax.set_title(study.title(f"share of image tokens with phi >= {tau:g}", f"layers 0-{lm.n_layers - 1}") + f", n = {settings.n}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return study.finish(fig, {"tau": tau, "n_image_tokens": int(image.sum()), "per_layer": per_layer})


if __name__ == "__main__":
    main()
