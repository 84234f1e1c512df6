"""How long loading toy-llava takes: the first time (converting the parts) and once cached.

    python benchmarks/toy_llava_load.py

Runs each load in a fresh process against an empty temporary cache, so the
first load converts the GGUF and ONNX files and assembles the model, and the
second reads the cached folder. Prints seconds and their ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

# imports (torch, transformers) are timed apart: they cost the same for any model
LOAD = (
    "import time; t = time.perf_counter(); import sinklens, transformers, torch; "
    "from transformers import LlavaForConditionalGeneration; i = time.perf_counter() - t; "
    "t = time.perf_counter(); sinklens.load('toy-llava'); print(i, time.perf_counter() - t)"
)


def timed_load(cache: str) -> tuple[float, float]:
    """(seconds importing torch, transformers and sinklens; seconds in sinklens.load) in a fresh process."""
    env = {**os.environ, "SINKLENS_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", LOAD], env=env, check=True, capture_output=True, text=True)
    imports, load = out.stdout.strip().splitlines()[-1].split()
    return float(imports), float(load)


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        (_, first), (imports, second), (_, third) = timed_load(cache), timed_load(cache), timed_load(cache)
    print(f"first load (convert + assemble + cache): {first:.1f} s")
    print(f"cached loads: {second:.2f} s, {third:.2f} s (target < 3 s), after {imports:.1f} s of imports")
    print(f"ratio first / cached: {first / min(second, third):.0f}")


if __name__ == "__main__":
    main()
