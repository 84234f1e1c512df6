"""toy-llava: a `LlavaForConditionalGeneration` from real pretrained parts, trained here.

- language model: SmolLM2-135M-Instruct (30 layers, width 576, 9 heads, 3 KV heads);
- vision tower: DINOv2-S/14 (12 layers, width 384), its penultimate layer's patch tokens;
- projector: LLaVA-1.5's two-layer MLP (384 -> 576 -> 576, GELU), trained on synthetic
  scenes by `studies/train_toy_llava.py`, with a LoRA adapter on the language model's
  attention projections trained beside it; both ship in `sinklens/weights/`, and the
  adapter is merged into the weights on load (see `lora.py`), so the model is a plain
  `LlavaForConditionalGeneration`.

The prompt follows SmolLM2's chat format with a system turn first, so the image
sits after a system prompt (as in LLaVA-1.5) and not right after the first token::

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\n<image>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n

Loading reads the converted parts from the cache (see `parts.py`) and takes a few
seconds after the first time.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from sinklens.builtin import parts
from sinklens.errors import CacheError
from sinklens.builtin.tiny_shared import seeded

IMAGE_SIZE = 140  # 10 x 10 patches of 14 px: 100 image tokens
PATCH_SIZE = 14
IMAGE_TOKEN = "<image>"
SYSTEM = "You are a helpful assistant. You look at an image and answer questions about it."
CHAT_TEMPLATE = (
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROJECTOR_FILE = "toy_llava_projector.safetensors"
ADAPTER_FILE = "toy_llava_adapter.safetensors"
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
ASSEMBLY_FORMAT = 3  # bump when the assembled model changes, so cached assemblies are rebuilt
# what a complete cached assembly holds (an entry missing one is rebuilt)
ASSEMBLY_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json", "tokenizer.json")


def projector_path() -> Path:
    """The trained projector shipped with sinklens."""
    return Path(str(resources.files("sinklens") / "weights" / PROJECTOR_FILE))


def adapter_path() -> Path:
    """The trained LoRA adapter of the language model shipped with sinklens."""
    return Path(str(resources.files("sinklens") / "weights" / ADAPTER_FILE))


def toy_llava_processor(tokenizer: Any) -> Any:
    """A `LlavaProcessor`: DINOv2 preprocessing at `IMAGE_SIZE` px and SmolLM2's tokenizer with `<image>`."""
    from transformers import BitImageProcessorPil, LlavaProcessor

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.padding_side = "left"
    image_processor = BitImageProcessorPil(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        do_normalize=True,
        image_mean=list(parts.IMAGENET_MEAN),
        image_std=list(parts.IMAGENET_STD),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # DINOv2's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def position_table_at(vision_state: dict[str, torch.Tensor], vision_config: Any, image_size: int) -> torch.Tensor:
    """DINOv2's position table resampled to `image_size`, exactly as `Dinov2Embeddings` does at run time.

    Storing the resampled table lets the config say the true input size, so the patch
    grid (image_size // patch_size) is read from the config like any LLaVA checkpoint.
    """
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    embeddings = Dinov2Embeddings(vision_config)
    embeddings.position_embeddings.data.copy_(vision_state["embeddings.position_embeddings"])
    n_tokens = (image_size // vision_config.patch_size) ** 2 + 1
    with torch.no_grad():
        return embeddings.interpolate_pos_encoding(torch.zeros(1, n_tokens, vision_config.hidden_size), image_size, image_size)


def toy_llava_config(text_config: Any, vision_config: Any, image_token_id: int) -> Any:
    from transformers import LlavaConfig

    text = text_config.to_dict()
    text["vocab_size"] = image_token_id + 1
    return LlavaConfig(
        vision_config=vision_config.to_dict() | {"model_type": "dinov2", "image_size": IMAGE_SIZE},
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )


def load_toy_llava(*, progress: bool = True) -> tuple[Any, Any]:
    """The built-in toy-llava (shipped projector and adapter, eager attention), assembled once and cached.

    The first call converts the parts (see `parts.py`) and saves the assembled model
    under the cache, keyed by the hash of the trained weights; later calls read that folder.
    The folder is written beside it and renamed into place once complete, and rebuilt
    when a file is missing or unreadable (`parts.cached_entry`).
    """
    import hashlib

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    digest = hashlib.sha256()
    for weights in (projector_path(), adapter_path()):
        if not weights.is_file():
            raise parts.MissingPartError(
                f"the trained weights {weights} are missing; reinstall sinklens, or train them with "
                "`python studies/train_toy_llava.py --out DIR`"
            )
        digest.update(weights.read_bytes())
    digest = digest.hexdigest()[:16]
    directory = parts.cache_root() / f"toy-llava-{digest}-v{parts.FORMAT}.{ASSEMBLY_FORMAT}"
    built: list[tuple[Any, Any]] = []

    def write(folder: Path) -> None:
        model, processor = build_toy_llava(progress=progress)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        built.append((model, processor))

    def read(folder: Path) -> tuple[Any, Any]:
        if built:  # just built: no need to read it back
            return built[-1]
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        return model.eval(), AutoProcessor.from_pretrained(folder)

    loaded = parts.cached_entry(directory, ASSEMBLY_FILES, write, read)
    if built:
        import shutil

        for stale in parts.cache_root().glob("toy-llava-*"):  # assemblies of other trained weights
            if stale != directory and ".tmp" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    return loaded


def build_toy_llava(
    *,
    projector: Path | None | bool = True,
    adapter: Path | None | bool = True,
    attn_implementation: str = "eager",
    progress: bool = True,
) -> tuple[Any, Any]:
    """(model, processor) in fp32 on the CPU.

    `projector=True` loads the shipped trained projector, a path loads another one,
    and `None`/`False` keeps a freshly initialised one (for training). `adapter`
    likewise merges the shipped LoRA adapter, another one, or none (SmolLM2 as it is).
    """
    from transformers import LlavaForConditionalGeneration

    lm_state, text_config, tokenizer = parts.smollm2(progress=progress)
    vision_state, vision_config = parts.dinov2()
    processor = toy_llava_processor(tokenizer)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = toy_llava_config(text_config, vision_config, image_token_id)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = "sdpa" if attn_implementation != "eager" else "eager"

    # seeded: the projector's initialisation, for training runs
    model = seeded(lambda: LlavaForConditionalGeneration(config), 0)
    state = _pretrained_state(lm_state, vision_state, vision_config)
    if projector is True:
        projector = projector_path()
    if projector:
        from safetensors.torch import load_file

        state |= {f"model.multi_modal_projector.{k}": v for k, v in load_file(projector).items()}
    if adapter is True:
        adapter = adapter_path()
    if adapter:
        from sinklens.builtin.lora import load_adapter, merge_adapter

        state = merge_adapter(state, *load_adapter(adapter))
    _load_fitting(model, state, with_projector=bool(projector))
    model.tie_weights()
    return model.eval(), processor


def _load_fitting(model: Any, state: dict[str, Any], *, with_projector: bool) -> None:
    """Load `state` into `model`: every weight must fit, but the tied head (and an untrained projector)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = {"lm_head.weight"} | (
        set() if with_projector else {k for k in model.state_dict() if k.startswith("model.multi_modal_projector.")}
    )
    if set(missing) - expected_missing or unexpected:
        raise CacheError(
            f"toy-llava weights do not fit: missing {sorted(set(missing) - expected_missing)}, unexpected {unexpected}; "
            "delete the cache folder (SINKLENS_CACHE, else ~/.cache/sinklens) so that it is rebuilt, and reinstall "
            "sinklens if its trained weights (sinklens/weights) were changed"
        )


def _pretrained_state(lm_state: dict[str, Any], vision_state: dict[str, Any], vision_config: Any) -> dict[str, Any]:
    """SmolLM2's and DINOv2's weights under the LLaVA model's names (the <image> row added, positions resized)."""
    embeddings = lm_state.pop("model.embed_tokens.weight")
    # the <image> row is never looked up (image features replace it); give it the mean embedding
    lm_state["model.embed_tokens.weight"] = torch.cat([embeddings, embeddings.mean(0, keepdim=True)])
    state = {key.replace("model.", "model.language_model.", 1): value for key, value in lm_state.items()}
    vision_state = dict(vision_state)
    vision_state["embeddings.position_embeddings"] = position_table_at(vision_state, vision_config, IMAGE_SIZE)
    return state | {f"model.vision_tower.{key}": value for key, value in vision_state.items()}
