"""Answer and score batches of (images, text) prompts with a stack; what the lmms-eval model calls.

Nothing here imports lmms-eval: these functions take sinklens objects and plain
Python values, so they are tested on their own as well as through lmms-eval.

- `generate`: greedy answers, each cut at EOS and at the first stop string.
- `loglikelihood`: log P(continuation | prompt), its length in tokens, and
  whether greedy decoding would produce it, from one forward pass over prompt + continuation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from PIL import Image

from sinklens import LoadedModel
from sinklens.run import PrefixStore

Images = Any  # one PIL image, or several shown in one prompt (in order), as LoadedModel.prepare_batch takes them

# greedy decoding is prefix-stable, so a run of k steps gives the first k tokens of a longer
# run: start short, and rerun longer only the prompts still talking (see `generate`)
FIRST_STEPS = 8


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest of the stop strings (lmms-eval's `until`); empty stops are ignored."""
    ends = [text.find(stop) for stop in stops if stop]
    ends = [end for end in ends if end >= 0]
    return text[: min(ends)] if ends else text


def generate(
    loaded: LoadedModel,
    runner: Any,
    stack: Sequence[Any],
    examples: Sequence[tuple[Images, str]],
    *,
    max_new_tokens: int,
    stops: Sequence[str] = (),
    prefixes: PrefixStore | None = None,
) -> list[str]:
    """Greedy answers of `runner.generate` for a batch, cut at EOS and at the first stop string.

    The runner decodes a fixed number of steps (EOS is read off the raw argmax
    afterwards), so a task's `max_new_tokens: 128` would cost 128 steps for a
    one-word answer. Greedy decoding is deterministic and each step depends only
    on the steps before it, so the first k tokens of a k-step run are those of
    the full run: decode `FIRST_STEPS` steps, keep every answer that has ended
    (EOS or a stop string), and decode the rest again with twice the steps, up
    to `max_new_tokens`. The answers are the full run's answers. With
    `prefixes` (a `PrefixStore` of the stack) each image prefix is computed
    once, and the longer reruns continue from it too.
    """
    answers: list[str | None] = [None] * len(examples)
    todo = list(range(len(examples)))
    steps = min(FIRST_STEPS, max_new_tokens)
    while todo:
        kwargs = {"prefixes": prefixes} if prefixes is not None else {}
        result = runner.generate(loaded.prepare_batch([examples[i] for i in todo]), stack, max_new_tokens=steps, **kwargs)
        still = []
        for i, tokens, text in zip(todo, result.tokens, result.texts):
            cut = cut_at_stops(text, stops)
            if len(tokens) < steps or cut != text or steps == max_new_tokens:
                answers[i] = cut
            else:
                still.append(i)
        todo, steps = still, min(2 * steps, max_new_tokens)
    return [answer for answer in answers if answer is not None]


def image_key(images: Images) -> str:
    """A key equal for equal images (mode, size and pixels), one image or several in order."""
    digest = hashlib.sha256()
    for image in images if isinstance(images, (list, tuple)) else [images]:
        digest.update(f"{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def by_image(examples: Mapping[int, tuple[Images, str]]) -> list[int]:
    """The indices of `examples`, those about the same image(s) together, in the order each image first comes."""
    groups: dict[str, list[int]] = {}
    for index, (images, _) in examples.items():
        groups.setdefault(image_key(images), []).append(index)
    return [index for group in groups.values() for index in group]


def continuation_ids(loaded: LoadedModel, prompt: str, continuation: str) -> list[int]:
    """The tokens `continuation` adds after `prompt`, tokenized together (as the prompt would be continued)."""
    tokenizer = loaded.tokenizer
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    if whole[: len(head)] == head:
        return list(whole[len(head):])
    # the boundary merged into one token: tokenize the continuation on its own
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


def append_tokens(inputs: Mapping[str, Tensor], tails: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """The left-padded batch with `tails[i]` appended to prompt i, padded on the left again.

    Tensors laid out per token (`[batch, pos]`, like `mm_token_type_ids`) get 0
    (text) for the appended tokens; the image tensors do not depend on positions
    and pass unchanged.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    batch, length = ids.shape
    per_token = [key for key, value in inputs.items() if key != "input_ids" and value.shape[:2] == (batch, length)]
    rows = []
    for row in range(batch):
        kept = mask[row]
        tail = torch.tensor(list(tails[row]), dtype=ids.dtype, device=ids.device)
        row_values = {"input_ids": torch.cat([ids[row][kept], tail])}
        for key in per_token:
            value = inputs[key][row][kept]
            filler = torch.ones_like(tail) if key == "attention_mask" else torch.zeros_like(tail)
            row_values[key] = torch.cat([value, filler.to(value.dtype)])
        rows.append(row_values)
    width = max(len(r["input_ids"]) for r in rows)
    out = {key: value for key, value in inputs.items() if key not in per_token and key != "input_ids"}
    for key in ["input_ids", *per_token]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.stack([
            torch.cat([torch.full((width - len(r[key]),), fill, dtype=r[key].dtype, device=r[key].device), r[key]])
            for r in rows
        ])  # fmt: skip
    return out


@dataclass(frozen=True)
class ContinuationScore:
    """How a model scores a continuation after a prompt."""

    logprob: float  # log P(continuation | prompt), summed over its tokens
    tokens: int  # how many tokens the continuation is
    greedy: bool  # whether greedy decoding would produce it

    @property
    def mean_nll(self) -> float:
        """The mean negative log-likelihood per token: what HF's loss gives, and what lmms-eval's models return."""
        return -self.logprob / self.tokens if self.tokens else 0.0


def loglikelihood(
    loaded: LoadedModel,
    runner: Any,
    stack: Sequence[Any],
    examples: Sequence[tuple[Images, str]],
    continuations: Sequence[str],
) -> list[ContinuationScore]:
    """How each (images, text) prompt scores its continuation, under the stack.

    The prompt is the one `generate` answers (the chat template, images first,
    then the text, then the assistant's turn); the continuation follows it. One
    forward pass with the stack over prompt + continuation scores every
    continuation token. The first one sees exactly what generation's first step
    sees; later ones see the continuation as part of the prompt (so FindSinks
    may mark a continuation token as a text sink, where generation finds sinks on
    the prompt only).
    """
    inputs = loaded.prepare_batch(examples)
    prompts = [loaded.prompt(1 if isinstance(images, Image.Image) else len(images), text) for images, text in examples]
    tails = [continuation_ids(loaded, prompt, cont) for prompt, cont in zip(prompts, continuations)]
    pad_id = loaded.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = loaded.tokenizer.eos_token_id
    full = append_tokens(inputs, tails, pad_id)
    logits = runner.forward(full, stack).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    width = full["input_ids"].shape[1]
    scores = []
    for row, tail in enumerate(tails):
        if not tail:
            scores.append(ContinuationScore(0.0, 0, True))
            continue
        n = len(tail)
        target = full["input_ids"][row, width - n:].to(logprobs.device)
        predicted = logprobs[row, width - n - 1: width - 1]  # position t predicts token t + 1
        chosen = predicted.gather(-1, target[:, None]).squeeze(-1)
        scores.append(ContinuationScore(float(chosen.sum()), n, bool((predicted.argmax(-1) == target).all())))
    return scores
