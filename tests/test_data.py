"""Synthetic scenes, questions and the POPE benchmark, against naive recounts."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinklens.data import pope as P
from sinklens.data.questions import parse_caption, questions, score_caption, training_turns
from sinklens.data.scenes import PARTNERS, SHAPES, scene

indices = st.integers(min_value=0, max_value=50_000)


def test_scenes_are_a_pure_function_of_split_and_index():
    assert scene("train", 11) == scene("train", 11)
    assert scene("train", 11).image().tobytes() == scene("train", 11).image().tobytes()
    assert [scene("train", i) for i in range(20)] != [scene("heldout", i) for i in range(20)]


@settings(max_examples=200, deadline=None)
@given(split=st.sampled_from(["train", "heldout"]), index=indices)
def test_a_scene_is_well_formed_and_its_caption_reads_back(split, index):
    s = scene(split, index)
    assert 1 <= len(s.objects) <= 3
    assert len({o.cell for o in s.objects}) == len(s.objects)  # distinct cells
    assert len(s.shapes) == len(s.objects)  # distinct shapes, so "the circle" names one object
    assert score_caption(s, s.caption()) == {k: 1.0 for k in score_caption(s, s.caption())}
    for qa in questions(s):
        assert qa.answer and qa.question[-1] in "?."


def test_a_wrong_caption_scores_per_attribute():
    s = next(scene("heldout", i) for i in range(100) if len(scene("heldout", i).objects) == 2)
    first, second = s.objects
    wrong_colour = next(c for c in ("red", "green", "blue") if c != first.colour)
    text = f"A {first.size} {wrong_colour} {first.shape} at the top and nothing else, on a {s.background} background."
    score = score_caption(s, text)
    assert score["shape_recall"] == 0.5 and score["colour"] == 0.0 and score["background"] == 1.0
    assert score["count"] == 0.0
    assert parse_caption("A small red circle in the centre")[0] == {
        "circle": {"colour": "red", "size": "small", "position": "centre"}
    }


def test_shapes_come_with_uneven_frequency_and_partners():
    counts = Counter(shape for i in range(3000) for shape in scene("train", i).shapes)
    assert counts.most_common(1)[0][0] == "circle" and counts["heart"] < counts["circle"] / 3
    pairs = Counter(frozenset((a, b)) for i in range(3000) for a in scene("train", i).shapes
                    for b in scene("train", i).shapes if a < b)  # fmt: skip
    partner_pairs = {frozenset(p) for p in PARTNERS.items()}
    assert pairs.most_common(1)[0][0] in partner_pairs


def test_training_turns_are_balanced_presence_and_mixed():
    rng = random.Random(0)
    turns = [qa for i in range(400) for qa in training_turns(scene("train", i), rng)]
    presence = [qa for qa in turns if qa.kind == "presence"]
    assert 0.4 < len(presence) / len(turns) < 0.6
    assert 0.4 < sum(qa.answer == "Yes" for qa in presence) / len(presence) < 0.6
    assert {qa.kind for qa in turns} >= {"caption", "colour", "size", "position", "count", "background"}


def test_training_negatives_are_drawn_the_three_pope_ways():
    """A presence-heavy mix: every "No" is about an absent shape, and partners of present shapes come up often."""
    rng = random.Random(1)
    scenes = [scene("train", i) for i in range(600)]
    asked = [(s, qa) for s in scenes for qa in training_turns(s, rng, 5, presence_share=0.8)]
    presence = [(s, qa) for s, qa in asked if qa.kind == "presence"]
    assert 0.75 < len(presence) / len(asked) < 0.85
    for s, qa in presence:
        shape = qa.question.split("Is there a ")[1].split(" in the image")[0]
        assert (shape in s.shapes) == (qa.answer == "Yes")
    negatives = [(s, qa.question.split("Is there a ")[1].split(" ")[0]) for s, qa in presence if qa.answer == "No"]
    partner_share = sum(any(PARTNERS[p] == shape for p in s.shapes) for s, shape in negatives) / len(negatives)
    uniform_share = sum(any(PARTNERS[p] == shape for p in s.shapes) / (len(SHAPES) - len(s.shapes))
                        for s, _ in negatives) / len(negatives)  # fmt: skip
    assert partner_share > uniform_share + 0.2  # what uniform sampling alone would give
    with pytest.raises(ValueError, match="presence_share must be in"):
        training_turns(scenes[0], rng, 3, presence_share=1.5)


def _naive_statistics():
    frequency = {s: 0 for s in SHAPES}
    together = {(a, b): 0 for a in SHAPES for b in SHAPES}
    for i in range(P.POOL):
        present = scene("heldout", i).shapes
        for a in present:
            frequency[a] += 1
            for b in present:
                if a != b:
                    together[(a, b)] += 1
    return frequency, together


def test_pope_negatives_follow_the_three_strategies():
    frequency, together = _naive_statistics()
    for index in range(60):
        present = scene("heldout", index).shapes
        absent = [s for s in SHAPES if s not in present]
        k = len(present)
        for split in P.SPLITS:
            chosen = P.negatives(split, index, k)
            assert len(chosen) == k == len(set(chosen)) and not set(chosen) & present
        popular = P.negatives("popular", index, k)
        assert min(frequency[s] for s in popular) >= max(frequency[s] for s in absent if s not in popular)
        adversarial = P.negatives("adversarial", index, k)
        score = {s: sum(together[(p, s)] for p in present) for s in absent}
        assert min(score[s] for s in adversarial) >= max(score[s] for s in absent if s not in adversarial)


def test_pope_splits_alternate_yes_and_no_and_grow_as_prefixes():
    for split in P.SPLITS:
        examples = P.pope(split, 301)
        assert len(examples) == 301 and len({e.id for e in examples}) == 301
        assert [e.label for e in examples[:6]] == ["yes", "no"] * 3
        assert sum(e.label == "yes" for e in examples) == 151
        assert P.pope(split, 40) == examples[:40]
        for e in examples[:50]:
            assert (e.shape in scene("heldout", e.scene_index).shapes) == (e.label == "yes")
    assert P.pope("random", 50) != P.pope("adversarial", 50)


def test_pope_metrics_by_hand():
    labels = ["yes", "yes", "no", "no", "no"]
    predictions = ["yes", "no", "yes", "no", "no"]
    m = P.pope_metrics(labels, predictions)
    assert m["accuracy"] == 3 / 5 and m["precision"] == 1 / 2 and m["recall"] == 1 / 2
    assert m["f1"] == 1 / 2 and m["yes_ratio"] == 2 / 5 and m["n"] == 5


@pytest.mark.parametrize(("answer", "read"), [("Yes", "yes"), ("No.", "no"), ("yes, there is", "yes"),
                                              ("There is not.", "no"), ("", "no"), ("Circle", "yes")])  # fmt: skip
def test_answers_are_read_as_pope_reads_them(answer, read):
    assert P.yes_or_no(answer) == read


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: P.pope("hard", 10), "unknown POPE split 'hard'"),
        (lambda: P.pope("random", 0), "n must be >= 1"),
        (lambda: scene("test", 0), "unknown split 'test'"),
        (lambda: scene("train", -1), "index must be >= 0"),
        (lambda: P.pope_metrics(["yes"], []), "1 labels but 0 predictions"),
    ],
)
def test_bad_input_says_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call()
