"""Write sinklens' synthetic POPE as a local lmms-eval task (its YAML format, a dataset on disk).

    python -m sinklens.integrations.lmms_eval.tasks --out tasks/ --split random --n 60
    lmms-eval --model sinklens --model_args pretrained=toy-llava,var=true \\
        --include_path tasks/ --tasks sinklens_pope --output_path out/lmms

Two tasks over the same examples (held-out scenes, `sinklens.data.pope`):

- `sinklens_pope` (generate_until): the question as `sinklens eval pope` asks
  it ("Is there a circle in the image? Answer yes or no."), greedy, stop at a
  blank line; each answer read by `sinklens.data.pope.yes_or_no` and the
  metrics computed by `sinklens.data.pope.pope_metrics`, so they are the
  numbers `sinklens eval pope` reports for the same answers (accuracy,
  precision, recall, F1, yes-ratio = the share of "yes" answers; lmms-eval's
  own `pope` task's yes-ratio is the share of "yes" labels).
- `sinklens_pope_mc` (multiple_choice): the same prompt, scored by the
  likelihood of "Yes" and "No" after it (lmms-eval's `acc`).

The dataset is a `datasets.DatasetDict` saved with `save_to_disk` (images as
PNG, lossless) and read back with lmms-eval's `load_from_disk: true`: nothing
is fetched from a hub.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sinklens.data.pope import pope
from sinklens.data.scenes import scene

GENERATE = "sinklens_pope"
MULTIPLE_CHOICE = "sinklens_pope_mc"
CHOICES = ("Yes", "No")

_UTILS = '''"""Document functions of the sinklens_pope tasks (written by sinklens.integrations.lmms_eval.tasks)."""

from sinklens.data.pope import pope_metrics, yes_or_no


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def doc_to_choice(doc):
    return ["Yes", "No"]


def doc_to_target_index(doc):
    return 0 if doc["answer"] == "yes" else 1


def process_results(doc, results):
    row = {"question_id": doc["question_id"], "prediction": yes_or_no(results[0]), "ground_truth": doc["answer"]}
    return {name: row for name in ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")}


def _metric(rows, name):
    return pope_metrics([r["ground_truth"] for r in rows], [r["prediction"] for r in rows])[name]


def accuracy(rows):
    return _metric(rows, "accuracy")


def precision(rows):
    return _metric(rows, "precision")


def recall(rows):
    return _metric(rows, "recall")


def f1(rows):
    return _metric(rows, "f1")


def yes_ratio(rows):  # the share of "yes" answers (lmms-eval's pope task counts "yes" labels instead)
    return _metric(rows, "yes_ratio")
'''


def _yaml(task: str, data: Path, body: str) -> str:
    return (
        f"task: {task}\n"
        f"dataset_path: {json.dumps(str(data))}\n"
        "dataset_kwargs:\n  load_from_disk: true\n"
        "test_split: test\n"
        "doc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: !function utils.doc_to_text\n"
        "lmms_eval_specific_kwargs:\n  default:\n    pre_prompt: \"\"\n    post_prompt: \"\"\n"
        f"{body}"
        "metadata:\n  version: 0.0\n"
    )


def export_pope_task(out: Path, *, split: str = "random", n: int = 60, max_new_tokens: int = 3) -> Path:
    """Write the first `n` examples of a POPE split and the two task YAMLs into `out`; return `out`."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    examples = pope(split, n)  # checks split and n
    out.mkdir(parents=True, exist_ok=True)
    features = Features({"question_id": Value("string"), "question": Value("string"),
                         "answer": Value("string"), "scene": Value("int32"), "image": Image()})  # fmt: skip
    rows = {
        "question_id": [e.id for e in examples],
        "question": [e.question for e in examples],
        "answer": [e.label for e in examples],
        "scene": [e.scene_index for e in examples],
        "image": [scene("heldout", e.scene_index).image() for e in examples],
    }
    data = out / "data"
    DatasetDict({"test": Dataset.from_dict(rows, features=features)}).save_to_disk(str(data))
    (out / "utils.py").write_text(_UTILS)
    pope_metrics = "".join(
        f"  - metric: {name}\n    aggregation: !function utils.{aggregation}\n    higher_is_better: true\n"
        for name, aggregation in [("pope_accuracy", "accuracy"), ("pope_precision", "precision"), ("pope_recall", "recall"),
                                  ("pope_f1", "f1"), ("pope_yes_ratio", "yes_ratio")]
    )  # fmt: skip
    (out / f"{GENERATE}.yaml").write_text(_yaml(GENERATE, data, (
        "output_type: generate_until\n"
        "doc_to_target: answer\n"
        f"generation_kwargs:\n  max_new_tokens: {max_new_tokens}\n  until: [\"\\n\\n\"]\n"
        "  do_sample: false\n  temperature: 0\n  num_beams: 1\n"
        "process_results: !function utils.process_results\n"
        f"metric_list:\n{pope_metrics}"
    )))  # fmt: skip
    (out / f"{MULTIPLE_CHOICE}.yaml").write_text(_yaml(MULTIPLE_CHOICE, data, (
        "output_type: multiple_choice\n"
        "doc_to_choice: !function utils.doc_to_choice\n"
        "doc_to_target: !function utils.doc_to_target_index\n"
        "target_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write sinklens' synthetic POPE as a local lmms-eval task")
    parser.add_argument("--out", type=Path, required=True, help="folder for the task YAMLs and the dataset")
    parser.add_argument("--split", choices=("random", "popular", "adversarial"), default="random")
    parser.add_argument("--n", type=int, default=60, help="number of questions (default: 60)")
    parser.add_argument("--max-new-tokens", type=int, default=3, help="as sinklens eval pope (default: 3)")
    args = parser.parse_args(argv)
    out = export_pope_task(args.out, split=args.split, n=args.n, max_new_tokens=args.max_new_tokens)
    print(f"tasks {GENERATE} and {MULTIPLE_CHOICE} in {out}: lmms-eval --include_path {out} --tasks {GENERATE} ...")


if __name__ == "__main__":
    main()
