"""Train toy-llava's projector on synthetic scenes (LLaVA-style, vision tower and LM frozen).

    python studies/train_toy_llava.py --out out/train [--steps 700] [--smoke]

Each example is one scene and a conversation of `--turns` questions (half of them
"Is there a <shape>?", balanced yes/no; the rest captions, colour, size, position,
count and background questions). The loss is the cross-entropy of the answer
tokens only. Training uses sdpa attention; the shipped model is read with eager.

Writes the projector to `--weights` (default: the file sinklens ships), and
`training.json` (losses, settings, time) and `loss.png` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sinklens.data.questions import QA, training_turns
from sinklens.data.scenes import scene
from sinklens.models import toy_llava


def conversation_ids(tokenizer, turns: list[QA], image_token_id: int, n_image_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation in the toy-llava chat format; labels are -100 off the answers."""
    segments = [(f"<|im_start|>system\n{toy_llava.SYSTEM}<|im_end|>\n", False)]
    for k, qa in enumerate(turns):
        image = "<image>\n" if k == 0 else ""
        segments.append((f"<|im_start|>user\n{image}{qa.question}<|im_end|>\n<|im_start|>assistant\n", False))
        segments.append((f"{qa.answer}<|im_end|>\n", True))
    ids: list[int] = []
    labels: list[int] = []
    for text, supervised in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        expanded = [t for token in piece for t in ([token] * n_image_tokens if token == image_token_id else [token])]
        ids += expanded
        labels += expanded if supervised else [-100] * len(expanded)
    return ids, labels


def batch(split: str, indices: list[int], processor, turns: int, rng: random.Random, n_image_tokens: int):
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids(toy_llava.IMAGE_TOKEN)
    scenes = [scene(split, i) for i in indices]
    rows = [conversation_ids(tokenizer, training_turns(s, rng, turns), image_token_id, n_image_tokens) for s in scenes]
    length = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows])
    pixel_values = processor.image_processor([s.image() for s in scenes], return_tensors="pt")["pixel_values"]
    return input_ids, labels, attention_mask, pixel_values


def answer_loss(model, input_ids, labels, attention_mask, pixel_values) -> torch.Tensor:
    """Cross-entropy of the answer tokens, with the LM head applied to those positions only."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).last_hidden_state
    targets = labels[:, 1:]
    where = targets != -100
    logits = model.lm_head(hidden[:, :-1][where])
    return torch.nn.functional.cross_entropy(logits, targets[where])


def plot_loss(losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(1, len(losses) + 1)
    window = 25
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(steps, losses, color="0.75", linewidth=0.8, label="per step")
    ax.plot(steps, smooth, color="C0", linewidth=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("answer cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help="where to write the projector (default: the shipped file)")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--budget-minutes", type=float, default=85.0, help="stop early (and say so) past this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="3 steps of 2 examples, to check the pipeline")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.warmup = 3, 2, 1
    weights = args.weights or toy_llava.projector_path()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    model, processor = toy_llava.build_toy_llava(projector=None, attn_implementation="sdpa")
    model.requires_grad_(False)
    projector = model.model.multi_modal_projector
    projector.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(projector.parameters(), lr=args.lr, weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    n_image_tokens = (toy_llava.IMAGE_SIZE // toy_llava.PATCH_SIZE) ** 2
    losses: list[float] = []
    stopped_early = False
    bar = tqdm(range(args.steps), desc="train projector")
    for step in bar:
        indices = list(range(step * args.batch, (step + 1) * args.batch))  # every scene is seen once
        input_ids, labels, attention_mask, pixel_values = batch("train", indices, processor, args.turns, rng, n_image_tokens)
        loss = answer_loss(model, input_ids, labels, attention_mask, pixel_values)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if (time.perf_counter() - start) / 60 > args.budget_minutes:
            stopped_early = True
            break
        if (step + 1) % 100 == 0:
            _save(projector, weights)
    _save(projector, weights)
    seconds = time.perf_counter() - start

    record = {
        "steps": len(losses),
        "stopped_early_at_budget": stopped_early,
        "batch": args.batch,
        "turns_per_example": args.turns,
        "examples": len(losses) * args.batch,
        "lr": args.lr,
        "warmup": args.warmup,
        "schedule": "linear warm-up, cosine to 10%",
        "trainable": "multi_modal_projector (vision tower and language model frozen)",
        "trainable_parameters": sum(p.numel() for p in projector.parameters()),
        "attention": "sdpa",
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "loss_first_20": sum(losses[:20]) / len(losses[:20]),
        "loss_last_20": sum(losses[-20:]) / len(losses[-20:]),
        "losses": losses,
        "weights": str(weights),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1))
    plot_loss(losses, args.out / "loss.png", f"toy-llava projector training: {len(losses)} steps of {args.batch}, {seconds / 60:.0f} min")
    print(json.dumps({k: v for k, v in record.items() if k != "losses"}, indent=1))


def _save(projector: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in projector.state_dict().items()}, path)


if __name__ == "__main__":
    main()
