"""Every ```python block of README.md runs on its own, verbatim, in a fresh interpreter.

Blocks that need what this machine lacks (an NDIF key, a hub checkpoint that is
not cached) must fail at once with the SinklensError that names what to do; the
table below says which, by a line of the block. Everything else must run and
print something.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 7 minutes: ten blocks, each loading toy-llava in a fresh interpreter

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

# a line of a block -> the message it must fail with here (no key, no network, no checkpoint)
NEEDS_MORE = {
    'runner = connect("llava-hf/llava-1.5-7b-hf")': "NDIF_API_KEY",
    'sl.load("llava-hf/llava-1.5-13b-hf"': "not in the local hub cache",
}


def _label(block: str) -> str:
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith(("import", "from"))]
    return re.sub(r"\W+", "_", lines[0])[:40] if lines else "imports"


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{i}-{_label(b)}" for i, b in enumerate(BLOCKS)])
def test_readme_block_runs_verbatim(block, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env.pop("NDIF_API_KEY", None)
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=900)  # fmt: skip
    expected = [message for line, message in NEEDS_MORE.items() if line in block]
    if expected:
        assert done.returncode != 0 and expected[0] in done.stderr, done.stderr[-3000:]
        assert "SinklensError" in done.stderr or "Error: " in done.stderr.splitlines()[-1]
        return
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the block prints nothing"
    assert list(tmp_path.iterdir()) == []  # a snippet writes nothing where it runs
