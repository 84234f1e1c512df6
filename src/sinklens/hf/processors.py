"""Processors without torchvision: image-only variants of the Qwen2-VL, Qwen2.5-VL and InternVL processors.

transformers 5 builds these processors with a video processor, and every video
processor needs torchvision. sinklens works on images, so where torchvision is
missing it loads the same processor class without its video processor: images
and text are processed exactly as by the full processor; videos are refused.
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
    "internvl": "InternVLProcessor",
}


@cache
def image_only(processor_class: type) -> type:
    """A subclass of `processor_class` whose only sub-processors are the image processor and the tokenizer.

    transformers reads a processor's parts off its `__init__` signature and its
    saved arguments off the code object's argument names, so each `__init__`
    names its arguments (the parent's, less `video_processor`) explicitly.
    """
    if "image_seq_length" in inspect.signature(processor_class.__init__).parameters:  # InternVL

        def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
            processor_class.__init__(
                self, image_processor, tokenizer, None, image_seq_length=image_seq_length,
                chat_template=chat_template, **kwargs,
            )

    else:  # Qwen2-VL, Qwen2.5-VL

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # the parent passes (image, tokenizer, video) on; ProcessorMixin keeps the two this signature names
            processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(f"ImageOnly{processor_class.__name__}", (processor_class,), {"__init__": __init__})


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
    if class_name is None:
        found = f"a {type(processor).__name__} with no image processor" if processor is not None else str(failure)
        raise MissingDependencyError(
            f"AutoProcessor.from_pretrained({name_or_path!r}) gave {found}. Check that the checkpoint ships a "
            "processor config, or load the processor yourself and use sinklens.from_hf(model, processor)."
        ) from failure
    try:
        return image_only(getattr(transformers, class_name)).from_pretrained(name_or_path)
    except (OSError, ImportError, ValueError) as e:
        raise MissingDependencyError(
            f"could not load {class_name} for {name_or_path!r}, with or without its video processor ({e}). "
            "Install torchvision for the full processor, or build one yourself and use sinklens.from_hf."
        ) from e
