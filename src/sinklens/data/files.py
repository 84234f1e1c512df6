"""Benchmark files in the formats the field publishes, checked whole before any compute.

- POPE (Li et al. 2023) as its authors publish it: one JSON object per line with
  `question_id`, `image` (a file name in the images folder, e.g. COCO val2014's),
  `text` (the question) and `label` ("yes" or "no").
- A general VQA file, one JSON object per line: `image` (a path relative to the
  images folder), `question`, `answer`, optionally `choices` (a list of options;
  `answer` is then the option's letter, "A", "B", ...) and `id`. `answer` may
  also be a list of reference answers (VQAv2's ten), scored as VQAv2 scores them.

Every line and every image is checked before the model is asked anything: a
line that is not JSON, a missing field, a label that is not yes/no, a missing
or unreadable image all raise `DataFileError` naming the file and the line.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sinklens.data.answers import normalize_answer
from sinklens.errors import SinklensError

LETTERS = string.ascii_uppercase


class DataFileError(SinklensError, ValueError):
    """A benchmark file or one of its images cannot be used (the message names the file and line)."""


@dataclass(frozen=True)
class Question:
    """One question of a benchmark file, checked: its image exists and opens."""

    id: str
    image: Path  # resolved path of the image file
    question: str
    answer: str | tuple[str, ...]  # POPE: "yes"/"no"; VQA: the reference answer(s); multiple choice: a letter
    kind: str  # "yes_no", "multiple_choice" or "short"
    choices: tuple[str, ...] = ()
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def load_image(self) -> Image.Image:
        """The image, read now (checked readable when the file was read)."""
        return open_image(self.image, where=f"{self.image}")


def open_image(path: Path, *, where: str) -> Image.Image:
    """An image file, fully decoded; `DataFileError` naming `where` when it does not exist or does not decode."""
    return _decode(path, where=where, keep=True)


def _check_image(path: Path, *, where: str) -> None:
    """Exists and its header and data decode (without keeping the pixels)."""
    _decode(path, where=where, keep=False)


def _decode(path: Path, *, where: str, keep: bool) -> Image.Image | None:
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise DataFileError(f"{where}: image {path} {what}")
    try:
        with Image.open(path) as image:
            if not keep:
                image.verify()
                return None
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataFileError(f"{where}: image {path} cannot be read ({type(e).__name__}: {e})") from e


def _text(path: Path, number: int, raw: bytes) -> str:
    """One line of a question file as text: UTF-8 (a byte-order mark on the first line is dropped)."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        byte = raw[e.start]
        shown = raw[max(e.start - 12, 0) : e.start + 12].decode("latin-1")
        raise DataFileError(
            f"{path}:{number}: not UTF-8 (byte 0x{byte:02x} at column {e.start + 1}, in {shown.strip()!r}); sinklens "
            f"reads question files as UTF-8. Re-save the file as UTF-8, for instance from Latin-1 with "
            f"`iconv -f latin1 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix).name}`"
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) of every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"--data {path} does not exist" if not path.is_dir() else f"--data {path} is a folder, not a file")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            text = _text(path, number, raw)
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path}:{number}: not a JSON line ({e.msg}); each line must be one JSON object") from None
            if not isinstance(value, dict):
                raise DataFileError(f"{path}:{number}: a JSON {type(value).__name__}, not an object")
            yield number, value


def _field(path: Path, number: int, value: dict[str, Any], name: str, kinds: tuple[type, ...] = (str,)) -> Any:
    if name not in value:
        raise DataFileError(f"{path}:{number}: missing field {name!r} (fields here: {', '.join(sorted(value)) or 'none'})")
    got = value[name]
    if not isinstance(got, kinds) or isinstance(got, bool):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise DataFileError(f"{path}:{number}: field {name!r} must be a {wanted}, got {json.dumps(got)}")
    if isinstance(got, str) and not got.strip():
        raise DataFileError(f"{path}:{number}: field {name!r} is empty")
    return got


def _images_folder(images: Path | None) -> Path:
    if images is None:
        raise DataFileError("--data needs --images DIR, the folder its image paths are relative to")
    images = Path(images)
    if not images.is_dir():
        raise DataFileError(f"--images {images} is not a folder" + ("" if images.exists() else " (it does not exist)"))
    return images


def _unique(path: Path, questions: list[Question]) -> list[Question]:
    if not questions:
        raise DataFileError(f"{path} has no questions")
    seen: dict[str, int] = {}
    for q in questions:
        if q.id in seen:
            raise DataFileError(f"{path}:{q.line}: id {q.id!r} repeats line {seen[q.id]}; ids must be unique")
        seen[q.id] = q.line
    return questions


def read_pope(path: Path | str, images: Path | str | None) -> list[Question]:
    """Every question of a POPE file (`question_id`, `image`, `text`, `label`), images checked."""
    path, folder = Path(path), _images_folder(None if images is None else Path(images))
    questions = []
    for number, value in _lines(path):
        qid = _field(path, number, value, "question_id", (str, int))
        image = _field(path, number, value, "image")
        text = _field(path, number, value, "text")
        label = _field(path, number, value, "label")
        if label.strip().lower() not in ("yes", "no"):
            raise DataFileError(f"{path}:{number}: label must be \"yes\" or \"no\", got {json.dumps(label)}")
        where = f"{path}:{number}"
        _check_image(folder / image, where=where)
        questions.append(Question(str(qid), folder / image, text, label.strip().lower(), "yes_no", line=number,
                                  extra={"image": image, "text": text}))  # fmt: skip
    return _unique(path, questions)


def read_vqa(path: Path | str, images: Path | str | None) -> list[Question]:
    """Every question of a VQA file (`image`, `question`, `answer`, optional `choices` and `id`), images checked."""
    path, folder = Path(path), _images_folder(None if images is None else Path(images))
    questions = []
    for number, value in _lines(path):
        image = _field(path, number, value, "image")
        text = _field(path, number, value, "question")
        answer = _field(path, number, value, "answer", (str, list))
        qid = str(_field(path, number, value, "id", (str, int))) if "id" in value else str(number)
        choices: tuple[str, ...] = ()
        if "choices" in value:
            raw = value["choices"]
            if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS) or not all(isinstance(c, str) and c.strip() for c in raw):
                raise DataFileError(f"{path}:{number}: field 'choices' must be a list of 2-26 non-empty strings, got {json.dumps(raw)}")
            choices = tuple(raw)
            letters = LETTERS[: len(choices)]
            if not isinstance(answer, str) or answer.strip().upper() not in letters:
                raise DataFileError(
                    f"{path}:{number}: with 'choices', 'answer' must be the option's letter ({', '.join(letters)}), "
                    f"got {json.dumps(answer)}"
                )
            answer, kind = answer.strip().upper(), "multiple_choice"
        else:
            if isinstance(answer, list):
                if not answer or not all(isinstance(a, str) and a.strip() for a in answer):
                    raise DataFileError(f"{path}:{number}: field 'answer' as a list must hold non-empty strings, got {json.dumps(answer)}")
                answer = tuple(answer)
            references = answer if isinstance(answer, tuple) else (answer,)
            yes_no = all(normalize_answer(a) in ("yes", "no") for a in references)
            kind = "yes_no" if yes_no else "short"
        _check_image(folder / image, where=f"{path}:{number}")
        questions.append(Question(qid, folder / image, text, answer, kind, choices, line=number,
                                  extra={"image": image}))  # fmt: skip
    return _unique(path, questions)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(images: Path | str, n: int | None = None) -> list[Path]:
    """The image files of a folder (sorted by name; the first `n`), each checked readable."""
    folder = Path(images)
    if not folder.is_dir():
        raise DataFileError(f"--images {folder} is not a folder" + ("" if folder.exists() else " (it does not exist)"))
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DataFileError(f"--images {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    chosen = found[:n] if n is not None else found
    for p in chosen:
        _check_image(p, where=f"--images {folder}")
    return chosen
