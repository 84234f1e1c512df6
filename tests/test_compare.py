"""`sinklens compare` and the stack specs it reads: several stacks on the same questions, paired statistics."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklens as sl
from sinklens.cli import main
from sinklens.errors import ParameterError
from sinklens.interventions.specs import describe, parse_stack


# --- specs -------------------------------------------------------------------------------------------------


def test_a_spec_names_members_in_order_with_literal_arguments():
    stack = parse_stack("find-sinks(tau=16); VAR(p=0.5, layers=[2, 3]);vcd()")
    assert stack == [sl.FindSinks(tau=16), sl.VAR(p=0.5, layers=(2, 3)), sl.VCD()]
    assert parse_stack("FindSinks() + VAR()") == parse_stack("FindSinks();VAR()")  # `+` separates as `;` does
    assert parse_stack("VAF(); SPIN(keep=0.95); HGAI(alpha=0.25)") == [sl.VAF(), sl.SPIN(keep=0.95), sl.HGAI(alpha=0.25)]


@pytest.mark.parametrize("spec", ["", "  ", "baseline", "None"])
def test_the_empty_spec_is_the_baseline(spec):
    assert parse_stack(spec) == []


def test_members_that_read_sinks_get_a_find_sinks_of_their_convention():
    assert parse_stack("VAR") == [sl.FindSinks(), sl.VAR()]
    assert parse_stack("var(convention='released')") == [sl.FindSinks(convention="released"), sl.VAR(convention="released")]
    assert parse_stack("PAI") == [sl.PAI()]  # PAI reads no sinks


@settings(deadline=None, max_examples=40, database=None)
@given(p=st.floats(0.0, 1.0), rho=st.floats(0.0, 1.0), alpha=st.floats(0.0, 3.0),
       convention=st.sampled_from(["paper", "released"]))  # fmt: skip
def test_describe_parses_back_to_the_same_stack(p, rho, alpha, convention):
    stack = [sl.FindSinks(convention=convention), sl.PAI(alpha=alpha), sl.VAR(p=p, rho=rho, convention=convention)]
    assert parse_stack(describe(stack)) == stack


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("VAR; Magic()", "unknown member 'Magic'; the members are FindSinks, VAR"),
        ("VAR(p=)", "could not read VAR(p=)"),
        ("VAR;;PAI", "could not read 'an empty member"),
        ("VAR(0.6)", "keyword arguments only"),
        ("VAR(q=0.6)", "VAR takes p, rho"),
        ("VAR(p=0.6", "leaves a parenthesis open"),
        ("VAR)", "closes a parenthesis"),
        ("VAR(p=x)", "must be a literal"),
        ("VAR(p=1.5)", "p"),  # the member's own check
        ("3VAR", "could not read '3VAR'"),
    ],
)
def test_bad_specs_say_what_to_fix(spec, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_stack(spec)


# --- the command ---------------------------------------------------------------------------------------------


def rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "pope.jsonl").read_text().splitlines()]


def test_compare_runs_each_stack_on_the_same_questions_with_paired_statistics(tmp_path, capsys):
    out = tmp_path / "cmp"
    stacks = tmp_path / "stacks.toml"
    stacks.write_text('[stacks]\nvar = "FindSinks(); VAR(p=0.9, rho=0.3, summ=0.0)"\n')
    argv = ["compare", "--model", "tiny-llava", "--n", "12", "--out", str(out), "--stacks", str(stacks),
            "--stack", "pai=PAI(alpha=2.0)", "--pair", "var,pai", "--max-new-tokens", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "compare.json").read_text())
    assert list(summary["stacks"]) == ["baseline", "var", "pai"] and summary["reference"] == "baseline"
    assert summary["stacks"]["var"]["spec"] == "FindSinks; VAR(p=0.9, rho=0.3, summ=0.0)"
    assert list(summary["paired"]) == ["var vs baseline", "pai vs baseline", "pai vs var"]
    per_stack = {name: rows(out / name) for name in summary["stacks"]}
    ids = [row["id"] for row in per_stack["baseline"]]
    assert len(ids) == 12 and all([row["id"] for row in r] == ids for r in per_stack.values())
    right = {name: [row["label"] == row["prediction"] for row in r] for name, r in per_stack.items()}
    for (a, b), key in zip([("baseline", "var"), ("baseline", "pai"), ("var", "pai")], summary["paired"]):
        comparison = summary["paired"][key]
        assert (comparison["a"], comparison["b"], comparison["n"]) == (a, b, 12)
        assert comparison["a_only"] == sum(x and not y for x, y in zip(right[a], right[b]))
        assert comparison["b_only"] == sum(y and not x for x, y in zip(right[a], right[b]))
        assert comparison["difference"] == pytest.approx((sum(right[b]) - sum(right[a])) / 12)
        assert comparison["ci95"][0] <= comparison["difference"] <= comparison["ci95"][1]
    for name in summary["stacks"]:
        assert summary["stacks"][name]["accuracy"] == pytest.approx(sum(right[name]) / 12)
        assert {"f1", "yes_ratio"} <= set(summary["stacks"][name]["metrics"])
    lines = [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ids
    assert lines[0]["stacks"]["pai"]["answer"] == per_stack["pai"][0]["answer"]
    assert (out / "compare.png").stat().st_size > 1000
    assert "| var | `FindSinks; VAR(p=0.9, rho=0.3, summ=0.0)` |" in printed and "n = 12" in printed
    assert "| pai vs var |" in printed and "yes_ratio" in printed
    # a second call resumes every stack: nothing is asked again, the rows are the same
    before = {name: (out / name / "pope.jsonl").read_text() for name in summary["stacks"]}
    assert main(argv) == 0
    assert {name: (out / name / "pope.jsonl").read_text() for name in summary["stacks"]} == before


def test_compare_scores_captions_by_chair(tmp_path):
    from sinklens.data.scenes import scene
    from sinklens.eval.captions import mentioned_shapes

    out = tmp_path / "chair"
    assert main(["compare", "--model", "tiny-llava", "--benchmark", "captions", "--n", "4", "--max-new-tokens", "6",
                 "--out", str(out), "--stack", "var=FindSinks(); VAR()"]) == 0  # fmt: skip
    summary = json.loads((out / "compare.json").read_text())
    rows = [json.loads(line) for line in (out / "baseline" / "captions.jsonl").read_text().splitlines()]
    for row in rows:  # each row's counts, from the scene's own objects
        present = {obj.shape for obj in scene("heldout", row["scene"]).objects}
        assert row["hallucinated"] == sorted(mentioned_shapes(row["caption"]) - present)
        assert row["score"] == int(not row["hallucinated"])
    chair_s = sum(bool(row["hallucinated"]) for row in rows) / 4
    assert summary["stacks"]["baseline"]["metrics"]["chair_s"] == pytest.approx(chair_s)
    assert summary["correct_means"] == "no absent object named"


def test_mentioned_shapes_reads_whole_words_and_plurals():
    from sinklens.eval.captions import mentioned_shapes

    assert mentioned_shapes("Two red circles and a star; no starfish.") == {"circle", "star"}
    assert mentioned_shapes("crosses, a diamond and hexagons") == {"cross", "diamond", "hexagon"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "at least one stack besides the baseline"),
        (["--stack", "a=VAR", "--stack", "a=PAI"], "given twice"),
        (["--stack", "baseline=VAR"], "always runs"),
        (["--stack", "b/c=VAR"], "cannot be folder names"),
        (["--stack", "VAR"], "is not NAME=SPEC"),
        (["--stack", "b=VAR(p=2)"], "p"),
        (["--stack", "b=VAR;Bogus(x=1)"], "unknown member 'Bogus'"),
        (["--stack", "b=VAR(rho=)"], "could not read VAR(rho=)"),
        (["--stack", "b=VAR", "--pair", "b,c"], "no stack named ['c']"),
        (["--stack", "b=VAR", "--pair", "b"], "is not A,B"),
        (["--stacks", "/nonexistent/stacks.toml"], "does not exist"),
        (["--stack", "b=PAI", "--benchmark", "vqa"], "needs --data"),
        (["--stack", "b=PAI", "--benchmark", "captions", "--data", "x.jsonl"], "drop --data"),
        (["--stack", "b=PAI", "--n", "0"], "--n must be >= 1"),
    ],
)
def test_compare_refuses_bad_input_before_loading_a_model(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    # a model name that does not exist: the refusal must come first, before the model is even looked up
    assert main(["compare", "--model", "no-such/model", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_stacks_file_without_a_stacks_table_is_refused(tmp_path, capsys):
    bad = tmp_path / "s.toml"
    bad.write_text('var = "VAR"\n')
    assert main(["compare", "--model", "tiny-llava", "--out", str(tmp_path / "o"), "--stacks", str(bad)]) == 2
    assert "[stacks] table" in capsys.readouterr().err
