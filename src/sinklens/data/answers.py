"""VQAv2-style answer normalisation, shared by the VQA file reader and its scoring.

Lower case; punctuation removed where it touches a space or the end, turned into
a space inside a word ("black-and-white" -> "black and white"); periods kept only
inside numbers; number words to digits ("two" -> "2"); articles (a, an, the)
dropped; common contractions written with their apostrophe ("dont" -> "don't").
"""

from __future__ import annotations

import re

_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!:*#$%&^~|"
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    word.replace("'", ""): word
    for word in ("don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't", "can't", "won't", "couldn't",
                 "shouldn't", "wouldn't", "hasn't", "haven't", "hadn't", "i'm", "i've", "you're", "they're",
                 "that's", "what's", "it's", "there's", "let's", "we're")  # fmt: skip
}


def normalize_answer(text: str) -> str:
    """An answer in VQAv2's normal form (see the module docstring)."""
    text = " ".join(text.replace("\n", " ").replace("\t", " ").lower().split())
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    out = []
    for k, char in enumerate(text):
        if char in _PUNCTUATION:
            before = text[k - 1] if k > 0 else " "
            after = text[k + 1] if k + 1 < len(text) else " "
            out.append("" if " " in (before, after) or before in _PUNCTUATION or after in _PUNCTUATION else " ")
        else:
            out.append(char)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", "", "".join(out))  # a period stays only between digits
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)
