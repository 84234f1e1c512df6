"""What the tiny built-ins share: tokenizer, chat templates, text model, seeded construction, planted sinks, scenes.

Every tiny built-in is a real transformers class at toy size with random
weights (a fixed seed, `seeded`), one text model shape (`tiny_text_config`), a
word-level tokenizer (`tiny_tokenizer`) and a processor built from a config:
nothing is downloaded. BOS and near-white image patches carry a planted
massive value in `TINY_SINK_DIM`, so the visual attention sink exists by
construction and VAR can be tested against an oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw

TINY_SINK_DIM = 7
SINK_VALUE = 40.0

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


def tiny_tokenizer(extra_special_tokens: dict[str, str] | None = None, added_tokens: Sequence[str] = ()):
    """A lower-casing word-level tokenizer over a fixed scene vocabulary.

    `extra_special_tokens` (attribute name -> token, default `{"image_token": "<image>"}`)
    become tokenizer attributes (`tok.image_token`, `tok.image_token_id`); tokens
    not yet in the vocabulary are appended after it, so existing ids never move.
    `added_tokens` (e.g. SmolVLM's `<row_1_col_1>` markers) are appended after those
    as special tokens without an attribute.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    extra = dict(extra_special_tokens or {"image_token": "<image>"})
    tokens = _SPECIAL + _WORDS
    tokens += [token for token in dict.fromkeys([*extra.values(), *added_tokens]) if token not in tokens]
    vocab = {word: i for i, word in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra,
        padding_side="left",
    )
    if added_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added_tokens)})
    return tokenizer


# a dark background and two coloured shapes, as in tiny.draw_scene
BACKGROUND = (40, 40, 60)
WHITE = (250, 250, 250)


def chat_template(image_markup: str) -> str:
    """tiny-llava's chat template with `image_markup` in place of each `<image>`."""
    return CHAT_TEMPLATE.replace("<image> ", image_markup + " ")


def vocab_size(tokenizer: Any) -> int:
    """Embedding rows the tokenizer needs (its vocabulary may skip ids)."""
    return max(tokenizer.get_vocab().values()) + 1


def tiny_text_config(tokenizer: Any, *, n_kv_heads: int, rope: dict[str, Any] | None = None) -> dict[str, Any]:
    """The language model of every tiny built-in (6 layers, width 512, 8 query heads), as config keyword arguments.

    `n_kv_heads` < 8 gives GQA; `rope` replaces the default rotary parameters
    (theta 10000), e.g. with Qwen2-VL's multimodal sections.
    """
    return {
        "vocab_size": vocab_size(tokenizer),
        "hidden_size": 512,  # phi is at most sqrt(d_model): 22.6 here, so tau = 20 is reachable
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": n_kv_heads,
        "max_position_embeddings": 512,
        "rope_parameters": rope or {"rope_type": "default", "rope_theta": 10000.0},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Run `build` under `torch.manual_seed(seed)`, leaving the global generator as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def build_eager(
    model_class: Any, make_config: Callable[[Any], Any], processor: Any, plant: Callable[[Any], None] | None, seed: int,
) -> tuple[Any, Any]:
    """(model, processor): `model_class` from `make_config(processor.tokenizer)` in fp32 with eager attention,
    built under `seed`, its sinks planted by `plant` (None: random weights only)."""
    config = make_config(processor.tokenizer)
    config._attn_implementation = "eager"
    model = seeded(lambda: model_class(config), seed)
    if plant is not None:
        plant(model)
    return model.eval(), processor


@torch.no_grad()
def plant_text_sink(embed_tokens: torch.nn.Embedding, token_id: int, dim: int = TINY_SINK_DIM) -> None:
    """The BOS embedding gets `SINK_VALUE` in the sink dimension."""
    embed_tokens.weight[token_id, dim] = SINK_VALUE


@torch.no_grad()
def brightness_channel(weight: torch.Tensor, scale: float = 4.0) -> None:
    """Make output channel 0 of a patch embedding the (scaled) mean normalised brightness of the patch."""
    weight[0] = scale / weight[0].numel()


@torch.no_grad()
def plant_white_detector(
    first: torch.nn.Linear, second: torch.nn.Linear, inputs: Sequence[int], *, weight: float, bias: float,
    dim: int = TINY_SINK_DIM, out: float = 6.0,
) -> None:
    """Hidden unit 0 of a two-layer projector fires when the summed `inputs` are high (white patches).

    Unit 0 reads only the given input channels (channel 0 of each merged
    sub-patch); the bias keeps anything darker than white below zero, and the
    second layer writes the unit into the sink dimension alone.
    """
    first.weight[0] = 0.0
    first.weight[0, list(inputs)] = weight
    first.bias[0] = bias
    second.weight[:, 0] = 0.0
    second.weight[dim, 0] = out


@torch.no_grad()
def plant_siglip_white_channel(tower: Any, channel: int, *, scale: float = 8.0) -> None:
    """A SigLIP tower whose output `channel` is large at white patches only, and near zero elsewhere.

    The patch embedding's channel 0 is the patch brightness; the last layer's MLP
    writes `channel` only when the layer-normed brightness passes a threshold
    (about +sqrt(width) for white, far less otherwise). Every other path into
    `channel` is zeroed, so the tower's final layer norm leaves it near zero
    except at white patches: a linear projector that reads it plants a sink.
    """
    brightness_channel(tower.embeddings.patch_embedding.weight, scale=scale)
    tower.embeddings.patch_embedding.weight[channel] = 0.0
    tower.embeddings.patch_embedding.bias[channel] = 0.0
    tower.embeddings.position_embedding.weight[:, channel] = 0.0
    for layer in tower.encoder.layers:  # nothing else writes the channel
        layer.self_attn.out_proj.weight[channel] = 0.0
        layer.self_attn.out_proj.bias[channel] = 0.0
        layer.mlp.fc2.weight[channel] = 0.0
        layer.mlp.fc2.bias[channel] = 0.0
    last = tower.encoder.layers[-1].mlp
    last.fc1.weight[0] = 0.0
    last.fc1.weight[0, 0] = 1.0
    last.fc1.bias[0] = -4.5
    last.fc2.weight[channel, 0] = 40.0


def draw_blocks(width: int, height: int, white: Sequence[tuple[int, int, int, int]]) -> Image.Image:
    """A dark scene with a red disk and a green box, and white boxes `(left, top, right, bottom)` (exclusive)."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.15, height * 0.35, width * 0.45, height * 0.65), fill=(200, 30, 30))
    draw.rectangle((width * 0.6, height * 0.6, width * 0.88, height * 0.88), fill=(30, 160, 60))
    for left, top, right, bottom in white:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=WHITE)
    return image
