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
