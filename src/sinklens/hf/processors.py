"""Processors without torchvision: image-only variants of the processors that insist on videos.

transformers 5 builds the Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA-OneVision
and SmolVLM processors with a video processor, and every video processor needs
torchvision (SmolVLM's also wants num2words, for its video prompts). sinklens works
on images, so where those are missing it loads the same processor class without
its video processor: images and text are processed exactly as by the full
processor; videos are refused.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from sinklens.errors import MissingDependencyError

# model_type -> the transformers processor class that insists on a video processor
VIDEO_PROCESSOR_FAMILIES = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "internvl": "InternVLProcessor",
    "llava_onevision": "LlavaOnevisionProcessor",
    "smolvlm": "SmolVLMProcessor",
}


@cache
def image_only(processor_class: type) -> type:
    """A subclass of `processor_class` whose only sub-processors are the image processor and the tokenizer.

    transformers reads a processor's parts off its `__init__` signature and its
    saved arguments off the code object's argument names, so each `__init__`
    names its arguments (the parent's, less `video_processor`) explicitly.
    """
    parameters = inspect.signature(processor_class.__init__).parameters
    if "image_seq_length" in parameters:  # InternVL

        def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
            processor_class.__init__(
                self, image_processor, tokenizer, None, image_seq_length=image_seq_length,
                chat_template=chat_template, **kwargs,
            )

    elif "vision_aspect_ratio" in parameters:  # LLaVA-OneVision

        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):  # fmt: skip
            processor_class.__init__(
                self, image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs,
            )

    elif "image_seq_len" in parameters:  # SmolVLM: its __init__ also demands num2words, used for video prompts only

        def __init__(self, image_processor=None, tokenizer=None, image_seq_len=169, chat_template=None, **kwargs):
            from transformers import ProcessorMixin

            _smolvlm_tokens(self, tokenizer, image_seq_len)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    else:  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # the parent passes (image, tokenizer, video) on; ProcessorMixin keeps the two this signature names
            processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    methods: dict[str, Any] = {"__init__": __init__}
    if "image_seq_len" in parameters:
        from transformers import ProcessorMixin

        # SmolVLM's own apply_chat_template reads the video processor's frame defaults first
        methods["apply_chat_template"] = ProcessorMixin.apply_chat_template
    return type(f"ImageOnly{processor_class.__name__}", (processor_class,), methods)


def _smolvlm_tokens(processor: Any, tokenizer: Any, image_seq_len: int) -> None:
    """The attributes SmolVLMProcessor's own __init__ sets before the num2words check (its image path reads them)."""
    processor.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
    processor.image_token = getattr(tokenizer, "image_token", "<image>")
    processor.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    processor.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
    processor.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
    processor.image_seq_len = image_seq_len
    processor.video_token = getattr(tokenizer, "video_token", "<video>")


def load_processor(name_or_path: str, model_type: str) -> Any:
    """`AutoProcessor.from_pretrained`, or its image-only variant where the video processor cannot load."""
    import transformers

    try:
        processor = transformers.AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ImportError, ValueError) as e:
        processor, failure = None, e
    else:
        failure = None
    if processor is not None and hasattr(processor, "image_processor"):
        return processor
    class_name = VIDEO_PROCESSOR_FAMILIES.get(model_type)
    if model_type == "mistral3":  # PixtralProcessor is a torchvision placeholder; see pixtral_processor_class
        return _load(pixtral_processor_class(), "PixtralProcessor", name_or_path)
    if class_name is None:
        found = f"a {type(processor).__name__} with no image processor" if processor is not None else str(failure)
        raise MissingDependencyError(
            f"AutoProcessor.from_pretrained({name_or_path!r}) gave {found}. Check that the checkpoint ships a "
            "processor config, or load the processor yourself and use sinklens.from_hf(model, processor)."
        ) from failure
    return _load(image_only(getattr(transformers, class_name)), class_name, name_or_path)


def _load(processor_class: type, class_name: str, name_or_path: str) -> Any:
    try:
        return processor_class.from_pretrained(name_or_path)
    except (OSError, ImportError, ValueError) as e:
        raise MissingDependencyError(
            f"could not load {class_name} for {name_or_path!r}, with or without its video processor ({e}). "
            "Install torchvision for the full processor, or build one yourself and use sinklens.from_hf."
        ) from e


def pixtral_processor_class() -> type:
    """A processor for Pixtral's image layout (Mistral 3) that needs no torchvision.

    transformers' `PixtralProcessor` refuses to exist without torchvision (a
    backend check on the class), although its work is a tokenizer, an image
    processor and one placeholder rule; the PIL image processor
    (`PixtralImageProcessorPil`) needs no torchvision. This class is that rule
    over those two parts: each image's `[IMG]` becomes one row of `[IMG]` per
    `patch_size * spatial_merge_size` pixels of height, `[IMG]` per as many of
    width, each row closed by `[IMG_BREAK]` and the last by `[IMG_END]`. It
    saves and loads with `save_pretrained` / `from_pretrained` like any
    processor (its image processor as whatever class was given).
    """
    return _pixtral_processor()


@cache
def _pixtral_processor() -> type:
    from transformers import ProcessorMixin

    class ImageOnlyPixtralProcessor(ProcessorMixin):
        def __init__(self, image_processor=None, tokenizer=None, patch_size=16, spatial_merge_size=1,
                     chat_template=None, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                     image_end_token="[IMG_END]", **kwargs):  # fmt: skip
            super().__init__(image_processor, tokenizer, chat_template=chat_template)
            self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
            self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

        def _process_images(self, images, **images_kwargs):
            # the image processor resizes to whole merged patches
            images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
            return super()._process_images(images, **images_kwargs)

        def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
            step = self.patch_size * self.spatial_merge_size
            height, width = (int(v) for v in image_inputs["image_sizes"][image_idx])
            rows = [self.image_token * (width // step)] * (height // step)
            return self.image_break_token.join(rows) + self.image_end_token

        @property
        def model_input_names(self):
            return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]

    return ImageOnlyPixtralProcessor
