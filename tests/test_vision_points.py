"""The vision tower's hook points (hooks/vision/towers.toml and each family's [vision] table), checked by
behaviour: against plain PyTorch hooks on the tower's own layer list, and against the image embeddings the
language model receives. FindVisionSinks against a loop oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklens as sl
from sinklens.errors import CatalogueError, LayerError
from sinklens.hook_points import VISION_LAYER_POINTS, VISION_POINTS, parse, vision_block
from sinklens.run import PrefixStore

from conftest import ARCHS, demo_inputs, loaded, max_diff, runner_for
from oracle_var import language_model

# projector rows that the model reorders before the language model, so no row-for-row oracle there: anyres
# families pack them (unpadding, newlines), Qwen2.5-VL's merger works in window order and is reversed after
PACKED = {"tiny-llava-next", "tiny-llava-onevision", "tiny-qwen2.5-vl"}


def capture(name: str, points: list[str], stack=()) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    members = [*stack, *(sl.Edit(p, lambda t, ctx, p=p: seen.__setitem__(p, t.detach().clone()), writes=False)
                         for p in points)]  # fmt: skip
    runner_for(name).forward(demo_inputs(name), members)
    return seen


def tower_layers(model, n_layers: int) -> torch.nn.ModuleList:
    """The vision tower's layer list, found by shape alone: the ModuleList of n_layers blocks under a vision module."""
    lists = [module for path, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and ("vision" in path or "visual" in path)
             and "language" not in path and "text" not in path]  # fmt: skip
    assert len(lists) == 1, [type(m[0]).__name__ for m in lists]
    return lists[0]


def torch_capture(name: str) -> dict[str, object]:
    """Each vision layer's output and the language model's input embeddings, from plain PyTorch hooks."""
    lm, inputs = loaded(name), demo_inputs(name)
    seen: dict[str, object] = {"layers": {}}
    layers = tower_layers(lm.model, lm.n_vision_layers)

    def keep_layer(index):
        def hook(module, args, out):
            seen["layers"][index] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook

    def keep_embeds(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handles = [layer.register_forward_hook(keep_layer(i)) for i, layer in enumerate(layers)]
    handles.append(language_model(lm.model).register_forward_pre_hook(keep_embeds, with_kwargs=True))
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("name", list(ARCHS))
def test_vision_points_hold_the_towers_tensors(name):
    lm = loaded(name)
    last = lm.n_vision_layers - 1
    points = [vision_block(layer, "hook_resid_post") for layer in range(last + 1)]
    points += [vision_block(last, "mlp.hook_post"), "vision.hook_out", "projector.hook_out"]
    seen, plain = capture(name, points), torch_capture(name)
    for layer in range(last + 1):
        assert torch.equal(seen[vision_block(layer, "hook_resid_post")], plain["layers"][layer]), layer
    hidden = seen[vision_block(last, "mlp.hook_post")]
    assert hidden.shape[:-1] == seen[vision_block(last, "hook_resid_post")].shape[:-1]  # per token, the MLP's width
    projected = seen["projector.hook_out"]
    assert projected.shape[-1] == lm.d_model
    if name not in PACKED:  # the projector's rows are the image embeddings the language model receives, in order
        image = lm.check_inputs(demo_inputs(name)).mask
        torch.testing.assert_close(projected.reshape(-1, lm.d_model), plain["embeds"][image], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in ARCHS if "qwen" not in n])
def test_the_vision_attention_pattern_is_a_softmax_over_the_towers_tokens(name):
    point = vision_block(0, "attn.hook_pattern")
    seen = capture(name, [point, vision_block(0, "hook_resid_post")])
    pattern, resid = seen[point], seen[vision_block(0, "hook_resid_post")]
    rows = resid if resid.dim() == 3 else resid[None]
    assert pattern.shape[0] == rows.shape[0] and pattern.shape[-2:] == (rows.shape[1], rows.shape[1])
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), rtol=0, atol=1e-5)


def test_an_edit_in_the_tower_changes_the_answer_and_decoding_does_not_rerun_it():
    name = "tiny-llava"
    calls = []

    def zero_features(features, ctx):
        calls.append(ctx.step)
        return features * 0

    plain = runner_for(name).generate(demo_inputs(name), [], max_new_tokens=3)
    edited = runner_for(name).generate(demo_inputs(name), [("vision.hook_out", zero_features)], max_new_tokens=3)
    assert max_diff(edited.step_logits, plain.step_logits) > 1e-3
    assert calls == [0]  # the tower runs in the prefill only


def oracle_high_norm(resid: torch.Tensor, ratio: float) -> torch.Tensor:
    rows = resid.double() if resid.dim() == 3 else resid.double()[None]
    out = torch.zeros(rows.shape[:2], dtype=torch.bool)
    for r in range(rows.shape[0]):
        norms = [float(rows[r, t].pow(2).sum().sqrt()) for t in range(rows.shape[1])]
        median = sorted(norms)[(len(norms) - 1) // 2]  # torch's median: the lower of the two middle values
        out[r] = torch.tensor([n > ratio * median for n in norms])
    return out


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-smolvlm", "tiny-mistral3"])
@pytest.mark.parametrize("ratio", [1.05, 1.2])
def test_find_vision_sinks_matches_a_loop_oracle(name, ratio):
    lm = loaded(name)
    finder = sl.FindVisionSinks(ratio=ratio)
    result = runner_for(name).forward(demo_inputs(name), [finder])
    plain = torch_capture(name)
    for layer in range(lm.n_vision_layers):
        expected = oracle_high_norm(plain["layers"][layer], ratio)
        assert torch.equal(result.ctx.records["vision_sinks"][layer], expected), layer
        rows = plain["layers"][layer] if plain["layers"][layer].dim() == 3 else plain["layers"][layer][None]
        torch.testing.assert_close(result.ctx.records["vision_norms"][layer], rows.norm(dim=-1), rtol=1e-6, atol=1e-6)


def test_an_absolute_threshold_marks_tokens_above_it():
    name = "tiny-llava"
    norms = runner_for(name).forward(demo_inputs(name), [sl.FindVisionSinks()]).ctx.records["vision_norms"][1]
    cut = float(norms.flatten().sort().values[-3])  # two tokens above it
    found = runner_for(name).forward(demo_inputs(name), [sl.FindVisionSinks(threshold=cut)]).ctx.records["vision_sinks"][1]
    assert int(found.sum()) == 2 and torch.equal(found, norms > cut)


def test_vision_mistakes_are_named():
    with pytest.raises(LayerError, match="vision tower has layers 0..1"):
        runner_for("tiny-llava").forward(demo_inputs("tiny-llava"), [("vision.blocks.5.hook_resid_post", lambda t, c: t)])
    with pytest.raises(CatalogueError, match="qwen2_vl_vision vision tower has no attn.hook_pattern"):
        runner_for("tiny-qwen2-vl").forward(demo_inputs("tiny-qwen2-vl"),
                                            [sl.Edit("vision.blocks.0.attn.hook_pattern", lambda t, c: None, writes=False)])  # fmt: skip
    with pytest.raises(sl.SinklensError, match="vision-tower point"):
        sl.TransformerLensRunner(loaded("tiny-llava")).forward(demo_inputs("tiny-llava"), [sl.FindVisionSinks()])
    with pytest.raises(sl.SinklensError, match="ratio"):
        sl.FindVisionSinks(ratio=0)


def test_a_run_with_vision_hooks_does_not_share_prefixes_and_says_why():
    stack = [sl.FindVisionSinks(), sl.FindSinks(), sl.VAR()]
    result = runner_for("tiny-llava").generate(demo_inputs("tiny-llava"), stack, max_new_tokens=2,
                                               prefixes=PrefixStore.for_stack(stack))  # fmt: skip
    assert not result.sharing.shared and "vision" in result.sharing.reason


@settings(deadline=None, max_examples=60, database=None)
@given(st.lists(st.one_of(
    st.builds(lambda l, p: f"vision.blocks.{l}.{p}", st.integers(0, 40), st.sampled_from(VISION_LAYER_POINTS)),
    st.sampled_from(VISION_POINTS),
    st.builds(lambda l: f"blocks.{l}.hook_resid_pre", st.integers(0, 40)),
), min_size=2, max_size=8))  # fmt: skip
def test_vision_points_sort_before_the_language_model_in_forward_order(names):
    points = sorted(parse(name) for name in names)
    order = [(0 if "blocks" in p.name and p.name.startswith("vision") else 1 if p.name == "vision.hook_out"
              else 2 if p.name == "projector.hook_out" else 3) for p in points]  # fmt: skip
    assert order == sorted(order)
    for p in points:
        assert p.in_vision == (order[points.index(p)] < 3)
        if p.name.startswith("vision.blocks."):
            assert p.vision_layer == int(p.name.split(".")[2]) and not p.in_block
