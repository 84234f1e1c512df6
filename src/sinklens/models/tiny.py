"""tiny-llava: a real `LlavaForConditionalGeneration` built offline, for tests and quick runs.

Random weights from a small config (fixed seed), a word-level tokenizer made
with the `tokenizers` library and a CLIP image processor from a config: nothing
is downloaded. With `plant_sinks=True` (the default of the built-in) the weights
are edited so that BOS and every near-white image patch carry a massive value
in `TINY_SINK_DIM`, as trained LLaMA-family models do in their sink dimensions:

- the BOS embedding gets `SINK_VALUE` in the sink dimension;
- CLIP's patch embedding gives vision channel 0 the mean brightness of a patch,
  and the projector maps a high channel-0 value (a white patch) to a massive
  value in the sink dimension and anything darker to nothing.

Random weights cannot show the visual attention sink; planting it makes the
mechanics (detection, selection, redistribution) testable against an oracle.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

TINY_SINK_DIM = 7
SINK_VALUE = 40.0
IMAGE_SIZE = 84
PATCH_SIZE = 14

_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_WORDS = (
    "a chat about one image . , : ? ! user assistant system "
    "is are there the an in on of and or not no yes what which where how many colour color "
    "shape size position describe picture photo scene image object objects thing things "
    "red green blue yellow white black gray grey orange purple pink brown "
    "circle square triangle star ball box cube disk "
    "small large big tiny left right top bottom middle centre center corner background "
    "one two three it its this that see do does you can please answer word"
).split()
CHAT_TEMPLATE = (
    "a chat about one image ."
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %} user : "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% else %} assistant : {{ message['content'][0]['text'] }} </s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} assistant :{% endif %}"
)


def tiny_tokenizer(extra_special_tokens: dict[str, str] | None = None):
    """A lower-casing word-level tokenizer over a fixed scene vocabulary.

    `extra_special_tokens` (attribute name -> token, default `{"image_token": "<image>"}`)
    become tokenizer attributes (`tok.image_token`, `tok.image_token_id`); tokens
    not yet in the vocabulary are appended after it, so existing ids never move.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    extra = dict(extra_special_tokens or {"image_token": "<image>"})
    tokens = _SPECIAL + _WORDS
    tokens += [token for token in dict.fromkeys(extra.values()) if token not in tokens]
    vocab = {word: i for i, word in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra,
        padding_side="left",
    )


def tiny_processor():
    """A `LlavaProcessor` with a CLIP image processor at 84 px: a 6 x 6 patch grid."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llava_config(*, n_kv_heads: int = 8):
    """LLaVA-1.5's structure at toy size: CLIP tower, 2-layer MLP projector, LLaMA text model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    n_tokens = len(_SPECIAL) + len(_WORDS)
    text = LlamaConfig(
        vocab_size=n_tokens,
        hidden_size=512,  # phi is at most sqrt(d_model): 22.6 here, so tau = 20 is reachable
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=_SPECIAL.index("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )


@torch.no_grad()
def plant_sinks(model, dim: int = TINY_SINK_DIM, value: float = SINK_VALUE) -> None:
    """Give BOS and near-white image patches a massive activation in `dim` (see module doc)."""
    text = model.config.text_config
    model.model.language_model.embed_tokens.weight[text.bos_token_id, dim] = value
    # vision channel 0 = mean normalised brightness of the patch, scaled to dominate the others
    conv = model.model.vision_tower.embeddings.patch_embedding
    conv.weight[0] = 4.0 / conv.weight[0].numel()
    projector = model.model.multi_modal_projector
    unit = 0
    projector.linear_1.weight[unit] = 0.0
    projector.linear_1.weight[unit, 0] = 8.0
    projector.linear_1.bias[unit] = -20.0  # only a patch with channel 0 near its maximum gets through
    projector.linear_2.weight[:, unit] = 0.0
    projector.linear_2.weight[dim, unit] = 6.0


def build_tiny_llava(*, seed: int = 0, plant: bool = True, n_kv_heads: int = 8):
    """(model, processor): a tiny LLaVA in fp32 with eager attention, on the CPU."""
    from transformers import LlavaForConditionalGeneration

    config = tiny_llava_config(n_kv_heads=n_kv_heads)
    config._attn_implementation = "eager"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    if plant:
        plant_sinks(model)
    return model.eval(), tiny_processor()


def draw_scene(size: int = IMAGE_SIZE, *, white_patches: tuple[int, ...] = (0, 14)) -> Image.Image:
    """A dark scene with a red disk and a green box, and near-white patches at the given indices.

    Patch indices count row by row on the 6 x 6 grid of tiny-llava; each white
    patch is where the planted model puts a visual sink.
    """
    image = Image.new("RGB", (size, size), (40, 40, 60))
    draw = ImageDraw.Draw(image)
    draw.ellipse((14, 30, 40, 56), fill=(200, 30, 30))
    draw.rectangle((50, 50, 74, 74), fill=(30, 160, 60))
    per_row = size // PATCH_SIZE
    for index in white_patches:
        row, col = divmod(index, per_row)
        box = (col * PATCH_SIZE, row * PATCH_SIZE, (col + 1) * PATCH_SIZE - 1, (row + 1) * PATCH_SIZE - 1)
        draw.rectangle(box, fill=(250, 250, 250))
    return image
