"""`SinklensLMM`: the lmms-eval model behind `--model sinklens` (a "simple" model: doc_to_visual + doc_to_text).

Each request's prompt is what `LoadedModel.prepare_batch` builds from the
task's images and text: the model's own chat template with the images first,
then the task's text (`doc_to_text`, with its pre/post prompt), then the
assistant's turn. Generation is greedy and runs the stack in prefill and at
every step; an answer ends at EOS, at `max_new_tokens` (the task's; 1024 when a
task gives none, as lmms-eval's HF models do) or at the first stop string
(`until`). Log-likelihood scores the task's continuation after that prompt with
the stack applied. Requests are answered `batch_size` at a time (left-padded;
each prompt gets the answer it gets alone).

Data-parallel runs (`accelerate launch --num_processes N -m lmms_eval ...`):
lmms-eval gives each process its shard of the requests and gathers the results;
each process loads its own copy of the model on its accelerator device (cuda:k,
or the CPU). A model too large for one device: `device_map=auto` (passed to
`sinklens.load`, which spreads it with accelerate).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from loguru import logger
from PIL import Image
from tqdm import tqdm

import sinklens as sl
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
from lmms_eval.api.model import lmms
from sinklens.errors import ParameterError, UnsupportedError
from sinklens.integrations.lmms_eval import runs
from sinklens.integrations.lmms_eval.runs import by_image
from sinklens.integrations.lmms_eval.settings import PluginSettings, parse_model_args
from sinklens.run import PrefixStore

DEFAULT_MAX_NEW_TOKENS = 1024
IMAGE_WINDOW = 8  # batches of requests read ahead to ask the questions about one image together
IMAGE_PLACEHOLDER = "<image>"  # some tasks write it into their text; the chat template places the images


def _keep_pair(score: tuple[float, bool]) -> Any:
    """A (log-likelihood, is greedy) pair as lmms-eval's evaluator will store it, not as its str().

    lmms-eval 0.7.x passes every model output through `unwrap_generation_output`,
    which returns `str(output)` for a tuple that does not start with a string,
    so multiple-choice tasks get "(-1.2, True)" and fail in `zip(*results)`.
    Its `GenerationResult` wrapper is passed through unchanged, so the pair goes
    in one; where the evaluator keeps tuples as they are, the pair stays plain.
    """
    if isinstance(unwrap_generation_output(score)[0], tuple):
        return score
    return GenerationResult(text=score)  # type: ignore[arg-type]  # the evaluator stores .text as it is


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


class SinklensLMM(lmms):
    """A sinklens-loaded LMM answering lmms-eval requests with a stack (VAR, VCD, ...) applied."""

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.settings: PluginSettings = parse_model_args(model_args)  # checks everything before loading
        self.stack = self.settings.stack()
        # without an accelerator, ask for accelerate's CPU state: under a multi-process launch (torchrun
        # variables set) it is then MULTI_CPU over gloo, so lmms-eval's gathers work; alone it is plain CPU
        accelerator = Accelerator(cpu=not _has_accelerator())
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and accelerator.num_processes == 1:
            # lmms-eval would shard the requests over WORLD_SIZE ranks, but with no process group to gather them
            raise ParameterError(
                f"launched as {launched} processes, but accelerate set up a single-process state (no GPU, and "
                "accelerate was not told to use the CPU). On a CPU-only machine launch with "
                "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m lmms_eval ..."
            )
        device = self.settings.device
        if self.settings.device_map is None and (device is None or (accelerator.num_processes > 1 and device == "cuda")):
            device = str(accelerator.device)  # this process's device under accelerate launch (cuda:k or cpu)
        if self.settings.device_map is not None:
            self.loaded = sl.load(self.settings.pretrained, dtype=self.settings.torch_dtype,
                                  device_map=self.settings.device_map)  # fmt: skip
        else:
            self.loaded = sl.load(self.settings.pretrained, dtype=self.settings.torch_dtype, device=device)
        self.runner = sl.NnsightRunner(self.loaded)
        self.accelerator = accelerator
        self._device = self.loaded.model.device
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        if self._rank == 0:
            logger.info(f"sinklens: {self.settings.pretrained} on {self._device} x {self._world_size} process(es), "
                        f"stack {self.stack or '[] (plain model)'}, batch size {self.batch_size}")  # fmt: skip

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "SinklensLMM":
        """As lmms' own, except that a key given in --model_args wins over lmms-eval's --batch_size/--device."""
        from lmms_eval import utils

        args = {key: value for key, value in (additional_config or {}).items() if value is not None}
        args.update(utils.simple_parse_args_string(arg_string))
        return cls(**args)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        """Prompts per run (each prompt's answer, VCD's noise included, does not depend on its batch mates)."""
        return self.settings.batch_size

    # -- requests -----------------------------------------------------------------

    def _images(self, doc_to_visual: Callable[[Any], Any], task: str, split: str, doc_id: int) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        if not visuals:
            raise ParameterError(
                f"task {task} gives document {doc_id} no image: sinklens answers image tasks only "
                "(its interventions act on image tokens)"
            )
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise ParameterError(
                    f"task {task} gives document {doc_id} a {type(visual).__name__}, not a PIL image: "
                    "sinklens answers image tasks only (no video or audio)"
                )
        return [visual.convert("RGB") for visual in visuals]

    def _example(self, request: Instance) -> tuple[list[Image.Image], str]:
        context, _, doc_to_visual, doc_id, task, split = request.args
        return self._images(doc_to_visual, task, split, doc_id), self._text(context)

    @staticmethod
    def _text(context: str) -> str:
        # the chat template puts the images before the text, so a literal placeholder would be a second image
        return context.replace(IMAGE_PLACEHOLDER, "").strip() if IMAGE_PLACEHOLDER in context else context

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, batch_size at a time, grouped by (max_new_tokens, until), then by image.

        Within a window of requests (`IMAGE_WINDOW` batches) the requests about
        one image are asked together, and a `PrefixStore` keeps each image's
        prefix, so it is computed once (`shared_prefix=false` turns this off);
        the answers go back in the requests' order, and do not depend on it.
        """
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            gen_kwargs = dict(request.args[1] or {})
            groups[(self._max_new_tokens(gen_kwargs), self._until(gen_kwargs))].append(index)
        answers: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="sinklens answering")
        store = PrefixStore.for_stack(self.stack, capacity=self.batch_size + 1) if self.settings.shared_prefix else None
        window = IMAGE_WINDOW * self.batch_size
        for (max_new_tokens, until), indices in groups.items():
            for window_start in range(0, len(indices), window):
                examples = {index: self._example(requests[index]) for index in indices[window_start:window_start + window]}
                ordered = by_image(examples) if store is not None else list(examples)
                for start in range(0, len(ordered), self.batch_size):
                    chunk = ordered[start:start + self.batch_size]
                    texts = runs.generate(self.loaded, self.runner, self.stack, [examples[i] for i in chunk],
                                          max_new_tokens=max_new_tokens, stops=until, prefixes=store)  # fmt: skip
                    for index, text in zip(chunk, texts):
                        answers[index] = text
                    bar.update(len(chunk))
        bar.close()
        logger.info(f"sinklens: rank {self.rank} of {self.world_size} answered {len(requests)} generate_until requests")
        return answers

    def _max_new_tokens(self, gen_kwargs: dict[str, Any]) -> int:
        if gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0 or (gen_kwargs.get("num_beams") or 1) > 1:
            logger.warning(f"sinklens decodes greedily; ignoring the task's sampling/beam settings {gen_kwargs}")
        value = gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"the task asks for max_new_tokens={value!r}; it must be a whole number >= 1")
        return value

    @staticmethod
    def _until(gen_kwargs: dict[str, Any]) -> tuple[str, ...]:
        until = gen_kwargs.get("until") or ()
        if isinstance(until, str):
            until = [until]
        return tuple(str(stop) for stop in until)

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """(mean negative log-likelihood of the continuation, is greedy) per request, batch_size at a time."""
        scores: list[runs.ContinuationScore] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="sinklens scoring")
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            examples, continuations = [], []
            for request in chunk:
                if len(request.args) != 6:
                    raise ParameterError(
                        "sinklens scores continuations after an image prompt only; this task asks for an "
                        "unconditional log-likelihood (acc_mutual_info), which has no image"
                    )
                context, target, doc_to_visual, doc_id, task, split = request.args
                continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                examples.append((self._images(doc_to_visual, task, split, doc_id), self._text(context)))
                continuations.append(str(continuation))
            scores += runs.loglikelihood(self.loaded, self.runner, self.stack, examples, continuations)
            bar.update(len(chunk))
        bar.close()
        # lmms-eval's convention, not its docstring's: the loss (mean NLL per continuation token, as its HF
        # models return), and its multiple_choice takes the argmin
        return [_keep_pair((score.mean_nll, score.greedy)) for score in scores]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise UnsupportedError(
            "--model sinklens answers single-round tasks (generate_until, loglikelihood, multiple_choice); "
            "multi-round tasks are not supported"
        )
