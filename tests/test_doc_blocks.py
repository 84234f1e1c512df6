"""Every code block of README.md and docs/*.md runs, verbatim, in a fresh interpreter or shell.

```python blocks run as they are. ```bash blocks run line by line (a line ending in a backslash
goes on): a `sinklens` command on the built-in models and synthetic data runs; every `sinklens`
command is first parsed by the real command line, so a renamed flag fails here. What this machine
cannot do is named below, by a piece of the block, with what must happen instead: a hub checkpoint
that is not cached, an NDIF key, a dataset a reader downloads, an install, hours of training. Such a
block must fail at once with the message that names what is missing, or is parsed and not run.
Blocks that are not commands (output, layouts, synopses) are fenced ```text.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each block in a fresh interpreter, most loading toy-llava

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(page.relative_to(ROOT), language, body) for page in PAGES
          for language, body in re.findall(r"^```(python|bash)\n(.*?)^```", page.read_text(), flags=re.S | re.M)]  # fmt: skip
BUILT_IN = re.compile(r"--model (toy-llava|tiny-[\w.-]+)\b")
# built-in runs parsed but not run: they take longer than a test should (the time they took is in docs/results.md)
LONG = ("sinklens compare --model toy-llava --n 300",)

# a piece of a python block -> the message it must fail with here (no key, no network, no checkpoint, no dataset)
NEEDS_MORE = {
    'connect("llava-hf/llava-1.5-7b-hf")': "NDIF_API_KEY",
    'sl.load("llava-hf/llava-1.5-13b-hf"': "not in the local hub cache",
    'open("testdev_balanced_questions.json")': "testdev_balanced_questions.json",
    'json.load(open("val.json"))': "val.json",
}
# the start of a shell line -> why it is parsed or skipped rather than run here
NOT_RUN = {
    "make ": "the CI itself runs `make test`, which installs",
    "pip install": "installs",
    "lmms-eval": "lmms-eval runs in its own environment; tests/test_lmms_eval.py runs the same tasks there",
    "export ": "environment for the lines after it",
    "M=": "a variable for the lines after it",
    "OUT=": "a variable for the lines after it",
    "python studies/": "a study at paper scale (minutes to hours); tests/test_studies.py runs every study in --smoke",
    "OMP_NUM_THREADS=1 nice -n -15 python studies/train_toy_llava.py": "trains toy-llava (an hour)",
}


def _label(page: Path, language: str, body: str) -> str:
    lines = [line for line in body.splitlines() if line.strip() and not line.startswith(("import", "from", "#"))]
    return f"{page.stem}-{language}-" + (re.sub(r"\W+", "_", lines[0])[:40] if lines else "imports")


def _commands(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_pages_have_their_blocks():
    assert sum(language == "python" for _, language, _ in BLOCKS) >= 12
    assert sum(page.name == "README.md" for page, _, _ in BLOCKS) >= 3


@pytest.mark.parametrize(("page", "language", "body"), BLOCKS, ids=[_label(*block) for block in BLOCKS])
def test_a_block_runs_verbatim(page, language, body, tmp_path):
    # the `sinklens` of this interpreter's environment, as an installed shell command
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", TQDM_DISABLE="1", PATH=path)
    env.pop("NDIF_API_KEY", None)
    if language == "python":
        return _run_python(body, tmp_path, env)
    for command in _commands(body):
        reason = next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)
        if command.startswith("sinklens "):
            from sinklens.cli import parser

            parser().parse_args(shlex.split(command)[1:])  # a renamed or removed flag fails here
            if BUILT_IN.search(command) and _inputs_exist(command, tmp_path) and not command.startswith(LONG):
                done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=tmp_path, env=env,
                                      timeout=900)  # fmt: skip
                assert done.returncode == 0, f"{page}: {command}\n{done.stderr[-3000:]}"
        else:
            assert reason is not None, f"{page}: {command!r} is neither run nor named in NOT_RUN"


def _inputs_exist(command: str, where: Path) -> bool:
    """Whether every file or folder the command reads (--image, --images, --data) exists where it runs."""
    return all((where / path).exists() for path in re.findall(r"--(?:image|images|data) (\S+)", command))


def _run_python(body: str, tmp_path: Path, env: dict) -> None:
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=900)  # fmt: skip
    expected = [message for piece, message in NEEDS_MORE.items() if piece in body]
    if expected:
        assert done.returncode != 0 and expected[0] in done.stderr, done.stderr[-3000:]
        return
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the block prints nothing"
    assert list(tmp_path.iterdir()) == [], "a snippet writes nothing where it runs"
