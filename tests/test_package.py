"""The package as users get it: what `import sinklens` does, and what the wheel ships."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # toy-llava, subprocesses: make test-fast skips the module

ROOT = Path(__file__).resolve().parents[1]


def test_import_loads_neither_nnsight_nor_transformer_lens():
    code = "import sys, sinklens; print('nnsight' in sys.modules, 'transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_command_line_imports_no_torch_until_a_command_runs():
    """`import sinklens.cli`, building the parser and `sinklens --help` stay light: torch loads with a command."""
    code = (
        "import sys, contextlib, io, sinklens.cli\n"
        "sinklens.cli.parser()\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    sinklens.cli.main(['eval', 'pope', '--help'])\n"
        "print(sorted(name for name in ('torch', 'transformers', 'nnsight', 'transformer_lens') if name in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "sinklens", "--help"], capture_output=True, text=True, check=True)
    assert "discover-sink-dims" in help_text.stdout


def test_ops_import_without_jaxtyping():
    # an NDIF-like server has torch and einops but not jaxtyping
    code = (
        "import sys; sys.modules['jaxtyping'] = None\n"
        "import torch, sinklens.ops as ops\n"
        "x = torch.randn(1, 4, 8); print(ops.sink_dimension_value(x, (0,)).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "torch.Size([1, 4])"


def test_wheel_ships_the_hook_catalogue(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("sinklens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for family in ("llava", "llava_next", "qwen2_vl", "internvl"):
        assert f"sinklens/hooks/{family}.toml" in names
    assert "sinklens/ops/redistribute.py" in names
    for asset in ("page.html", "page.css", "page.js"):  # the explorer inlines them into every page
        assert f"sinklens/explorer/{asset}" in names
