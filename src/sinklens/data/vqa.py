"""Prompts and scoring for VQA files: yes/no, multiple-choice letters and short answers.

Answers are compared after VQAv2-style normalisation (`normalize_answer`):
lower case; punctuation removed where it touches a space or the end, turned into
a space inside a word ("black-and-white" -> "black and white"); periods kept
only inside numbers; number words to digits ("two" -> "2"); articles (a, an,
the) dropped; common contractions written with their apostrophe ("dont" ->
"don't"). A short answer scores 1 when it equals the reference after
normalisation; with several references (VQAv2's ten) it scores
min(1, matches / 3), VQAv2's rule.

LLaVA-1.5's evaluation appends a suffix to every question: "Answer the question
using a single word or phrase." for short and yes/no answers, and "Answer with
the option's letter from the given choices directly." after the options of a
multiple-choice question. Both are the defaults here and can be changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sinklens.data.answers import normalize_answer
from sinklens.data.files import LETTERS, Question

SHORT_SUFFIX = "Answer the question using a single word or phrase."
CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."


def prompt_text(question: Question, *, suffix: str | None = None, choice_suffix: str | None = None) -> str:
    """The question as the model reads it: options listed for multiple choice, then the suffix on its own line."""
    if question.choices:
        options = "\n".join(f"{LETTERS[k]}. {choice}" for k, choice in enumerate(question.choices))
        tail = CHOICE_SUFFIX if choice_suffix is None else choice_suffix
        return f"{question.question}\n{options}" + (f"\n{tail}" if tail else "")
    tail = SHORT_SUFFIX if suffix is None else suffix
    return question.question + (f"\n{tail}" if tail else "")


def read_yes_no(answer: str) -> str:
    """"yes" or "no", whichever of the two words comes first in the answer; "" when neither does."""
    for word in normalize_answer(answer).split():
        if word in ("yes", "no"):
            return word
    return ""


_LETTER = re.compile(r"^\(?([A-Z])(?:[\).:,]|\s|$)")
_SAYS = re.compile(r"\b(?:answer|option) is:?\s*\(?([A-Z])\b")


def read_letter(answer: str, choices: Sequence[str]) -> str:
    """The option a multiple-choice answer picks: a leading letter ("B", "(B)", "B. red"), "the answer is B",
    or an answer that is one of the options' text; "" when none of these."""
    letters = LETTERS[: len(choices)]
    text = answer.strip()
    for pattern in (_LETTER, _SAYS):
        found = pattern.search(text)
        if found and found.group(1) in letters:
            return found.group(1)
    said = normalize_answer(text)
    for letter, choice in zip(letters, choices):
        if said and said == normalize_answer(choice):
            return letter
    return ""


def score(question: Question, answer: str) -> tuple[float, str]:
    """(score in [0, 1], the answer as read) of a model's answer to one question."""
    if question.kind == "multiple_choice":
        read = read_letter(answer, question.choices)
        return float(read == question.answer), read
    references = question.answer if isinstance(question.answer, tuple) else (question.answer,)
    if question.kind == "yes_no":
        read = read_yes_no(answer)
        truth = [normalize_answer(a) for a in references]
    else:
        read = normalize_answer(answer)
        truth = [normalize_answer(a) for a in references]
    matches = sum(read == t for t in truth)
    if len(truth) == 1:
        return float(matches == 1), read
    return min(1.0, matches / 3), read
