"""Train toy-llava on synthetic scenes, LLaVA-style: the projector, and a LoRA adapter on the LM's attention.

    python studies/train_toy_llava.py --out out/train [--steps 540] [--lora-rank 16] [--smoke]

The vision tower and the language model's own weights stay frozen. What trains is
the projector and, unless `--lora-rank 0`, a low-rank adapter on the q/k/v/o
projections of every language-model layer (merged into the weights when the model
loads; see `sinklens.builtin.lora`).

Each example is one scene and a conversation of `--turns` questions: a
`--presence-share` of them "Is there a <shape>?" (balanced yes/no, negatives drawn
the three POPE ways), the rest captions, colour, size, position, count and
background questions. The loss is the cross-entropy of the answer tokens only,
averaged over those tokens (`--loss answer` averages per answer instead, so a
one-token "Yes" counts as much as a caption of twenty).
Training uses sdpa attention and bf16 autocast (fp32 master weights); the shipped
model runs in fp32 with eager attention. Every `--eval-every` steps, presence
accuracy is measured on a validation set of held-out scenes that POPE does not use.

Writes the projector and the adapter to `--weights-dir` (default: the files sinklens
ships), and `training.json` (losses, validation, settings, time) and `loss.png` to `--out`.
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

from sinklens.data.questions import QA, presence, training_turns
from sinklens.data.scenes import SHAPES, scene
from sinklens.builtin import lora, toy_llava

VALIDATION_SCENES = range(1000, 1048)  # held out, and past the scenes POPE asks about


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


LENGTH_STEP = 32  # pad to a multiple: oneDNN prepares kernels per shape, and a new length every step costs seconds


def _pad(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, labels, attention mask), right-padded to a multiple of `LENGTH_STEP`."""
    length = -(-max(len(ids) for ids, _ in rows) // LENGTH_STEP) * LENGTH_STEP
    input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows])
    return input_ids, labels, attention_mask


def batch(split: str, indices: list[int], processor, turns: int, presence_share: float, rng: random.Random, n_image_tokens: int):
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids(toy_llava.IMAGE_TOKEN)
    scenes = [scene(split, i) for i in indices]
    rows = [conversation_ids(tokenizer, training_turns(s, rng, turns, presence_share), image_token_id, n_image_tokens)
            for s in scenes]  # fmt: skip
    input_ids, labels, attention_mask = _pad(rows, tokenizer.pad_token_id)
    pixel_values = processor.image_processor([s.image() for s in scenes], return_tensors="pt")["pixel_values"]
    return input_ids, labels, attention_mask, pixel_values


def answer_weights(supervised: torch.Tensor) -> torch.Tensor:
    """Per supervised token, 1 / the length of its answer (a run of supervised tokens), so every answer weighs 1."""
    flat = supervised.flatten()
    starts = flat & ~torch.cat([flat.new_zeros(1), flat[:-1]])
    answer = torch.cumsum(starts, 0)[flat] - 1
    return 1.0 / torch.bincount(answer).float()[answer]


def answer_loss(model, input_ids, labels, attention_mask, pixel_values, per_answer: bool = False) -> torch.Tensor:
    """Cross-entropy of the answer tokens (the LM head on those positions only).

    `per_answer` averages over answers, each the mean of its tokens, so a one-word
    "Yes" weighs as much as a caption; else the mean over tokens.
    """
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).last_hidden_state
    targets = labels[:, 1:]
    where = targets != -100
    logits = model.lm_head(hidden[:, :-1][where])
    losses = torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="none")
    if not per_answer:
        return losses.mean()
    weights = answer_weights(where)
    return (weights * losses).sum() / weights.sum()


class PresenceValidation:
    """Yes/no presence accuracy on held-out scenes POPE does not ask about: "Yes" against "No" at the answer."""

    def __init__(self, processor, n_image_tokens: int) -> None:
        tokenizer = processor.tokenizer
        image_token_id = tokenizer.convert_tokens_to_ids(toy_llava.IMAGE_TOKEN)
        self.yes, self.no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
        rows, self.labels, images = [], [], []
        for index in VALIDATION_SCENES:
            s = scene("heldout", index)
            absent = [shape for shape in SHAPES if shape not in s.shapes]
            for shape, present in ((sorted(s.shapes)[index % len(s.shapes)], True), (absent[index % len(absent)], False)):
                ids, _ = conversation_ids(tokenizer, [presence(shape, present)], image_token_id, n_image_tokens)
                answer_start = len(ids) - 3  # the answer is "Yes"/"No", "<|im_end|>", "\n"
                rows.append((ids[:answer_start], []))
                self.labels.append(present)
                images.append(s.image())
        self.input_ids, _, self.attention_mask = _pad(rows, tokenizer.pad_token_id)
        self.last = self.attention_mask.sum(1) - 1
        self.pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def __call__(self, model, chunk: int = 24) -> dict[str, float]:
        says_yes = []
        for start in range(0, len(self.labels), chunk):
            part = slice(start, start + chunk)
            hidden = model.model(input_ids=self.input_ids[part], attention_mask=self.attention_mask[part],
                                 pixel_values=self.pixel_values[part]).last_hidden_state  # fmt: skip
            rows = hidden[torch.arange(hidden.shape[0]), self.last[part]]
            logits = model.lm_head(rows).float()
            says_yes += (logits[:, self.yes] > logits[:, self.no]).tolist()
        correct = [y == label for y, label in zip(says_yes, self.labels)]
        return {"accuracy": sum(correct) / len(correct), "yes_ratio": sum(says_yes) / len(says_yes)}


def plot_training(losses: list[float], validation: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(1, len(losses) + 1)
    window = 25
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
    fig, (ax, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    ax.plot(steps, losses, color="0.75", linewidth=0.8, label="per step")
    ax.plot(steps, smooth, color="C0", linewidth=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("answer cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.legend()
    if validation:
        at = [v["step"] for v in validation]
        right.plot(at, [v["accuracy"] for v in validation], "o-", color="C2", label="presence accuracy")
        right.plot(at, [v["yes_ratio"] for v in validation], "s--", color="C1", label="yes-ratio")
        right.axhline(0.5, color="0.6", linewidth=0.8)
    right.set_ylim(0, 1)
    right.set_xlabel("step")
    right.set_title(f"validation: {2 * len(VALIDATION_SCENES)} held-out yes/no questions", fontsize=9)
    right.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where to write the projector and adapter (default: the shipped files)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=540)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--presence-share", type=float, default=0.6)
    parser.add_argument("--lr", type=float, default=1e-3, help="the projector's learning rate")
    parser.add_argument("--lora-rank", type=int, default=16, help="0 trains the projector only")
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--loss", choices=("token", "answer"), default="token",
                        help="token: every answer token weighs the same (default; the shipped weights); "
                             "answer: every answer does, so a one-word yes/no weighs as much as a caption")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--eval-every", type=int, default=60)
    parser.add_argument("--budget-minutes", type=float, default=84.0, help="stop early (and say so) past this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="3 steps of 2 examples, to check the pipeline")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.warmup, args.eval_every = 3, 2, 1, 0
    weights_dir = args.weights_dir or toy_llava.projector_path().parent
    projector_file, adapter_file = weights_dir / toy_llava.PROJECTOR_FILE, weights_dir / toy_llava.ADAPTER_FILE
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    model, processor = toy_llava.build_toy_llava(projector=None, adapter=None, attn_implementation="sdpa")
    model.requires_grad_(False)
    projector = model.model.multi_modal_projector.requires_grad_(True)
    groups = [{"params": list(projector.parameters()), "lr": args.lr}]
    adapters = {}
    if args.lora_rank:
        adapters = lora.add_lora(model.model.language_model, toy_llava.LORA_TARGETS, args.lora_rank, args.lora_alpha)
        adapters = {f"model.language_model.{path}": module for path, module in adapters.items()}
        groups.append({"params": [p for m in adapters.values() for p in (m.lora_A, m.lora_B)], "lr": args.lora_lr})
    trainable = [p for group in groups for p in group["params"]]
    model.train()
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def save() -> None:
        _save(projector, projector_file)
        if adapters:
            lora.save_adapter(adapters, adapter_file)

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    n_image_tokens = (toy_llava.IMAGE_SIZE // toy_llava.PATCH_SIZE) ** 2
    validate = PresenceValidation(processor, n_image_tokens) if args.eval_every else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32)
    losses: list[float] = []
    validation: list[dict] = []

    def evaluate(step: int) -> None:
        model.eval()
        with autocast:
            validation.append({"step": step, **validate(model)})
        model.train()
        tqdm.write(f"step {step}: validation {validation[-1]}")

    stopped_early = False
    bar = tqdm(range(args.steps), desc="train projector + adapter" if adapters else "train projector")
    for step in bar:
        indices = list(range(step * args.batch, (step + 1) * args.batch))  # every scene is seen once
        input_ids, labels, attention_mask, pixel_values = batch(
            "train", indices, processor, args.turns, args.presence_share, rng, n_image_tokens
        )
        with autocast:
            loss = answer_loss(model, input_ids, labels, attention_mask, pixel_values, per_answer=args.loss == "answer")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if validate and (step + 1) % args.eval_every == 0:
            evaluate(step + 1)
            save()
        if (time.perf_counter() - start) / 60 > args.budget_minutes:
            stopped_early = True
            break
    save()
    if validate and (not validation or validation[-1]["step"] != len(losses)):
        evaluate(len(losses))
    seconds = time.perf_counter() - start

    record = {
        "steps": len(losses),
        "stopped_early_at_budget": stopped_early,
        "batch": args.batch,
        "turns_per_example": args.turns,
        "presence_share": args.presence_share,
        "loss": "mean over answers of each answer's mean token cross-entropy" if args.loss == "answer"
                else "mean token cross-entropy over answer tokens",
        "examples": len(losses) * args.batch,
        "lr_projector": args.lr,
        "lr_adapter": args.lora_lr if adapters else None,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha if adapters else None,
        "lora_targets": list(toy_llava.LORA_TARGETS) if adapters else [],
        "warmup": args.warmup,
        "schedule": "linear warm-up, cosine to 10%",
        "trainable": "multi_modal_projector" + (" and a LoRA adapter on the LM's attention" if adapters else ""),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "precision": "fp32" if args.fp32 else "bf16 autocast, fp32 weights",
        "attention": "sdpa",
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "loss_first_20": sum(losses[:20]) / len(losses[:20]),
        "loss_last_20": sum(losses[-20:]) / len(losses[-20:]),
        "validation": validation,
        "losses": losses,
        "weights": [str(projector_file)] + ([str(adapter_file)] if adapters else []),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1))
    plot_training(losses, validation, args.out / "loss.png",
                  f"toy-llava training: {len(losses)} steps of {args.batch}, {seconds / 60:.0f} min")  # fmt: skip
    print(json.dumps({k: v for k, v in record.items() if k != "losses"}, indent=1))


def _save(projector: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in projector.state_dict().items()}, path)


if __name__ == "__main__":
    main()
