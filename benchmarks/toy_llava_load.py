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

LOAD = "import time; t = time.perf_counter(); import sinklens; sinklens.load('toy-llava'); print(time.perf_counter() - t)"


def timed_load(cache: str) -> float:
    env = {**os.environ, "SINKLENS_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", LOAD], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(cache)
        second = timed_load(cache)
        third = timed_load(cache)
    print(f"first load (convert + assemble + cache): {first:.1f} s")
    print(f"cached loads: {second:.2f} s, {third:.2f} s (target < 3 s)")
    print(f"ratio first / cached: {first / min(second, third):.0f}")


if __name__ == "__main__":
    main()
