"""Bad input, as a new user types it: one `sinklens: error:` line naming the fix, at the right moment, nothing written.

Each row of `CLI_ROWS` is a command line, a piece of the expected message and the
latest moment the refusal may come:
- "parse": argparse refuses it;
- "load": before any model is loaded (the check needs no model);
- "compute": after loading (the check needs the model's width, layers or context)
  but before any forward pass.

Each row asserts the message, that the CLI exits 2 without a traceback, and
that nothing under the test folder was written, changed or removed. Rows other
helpers own live with their code: non-finite hook outputs and stack rules
(duplicate members, two FindSinks) in the interventions' tests, and the
evaluation folder's lock, first-row settings and --restart rules in the eval tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sinklens.backends.nnsight_backend import NnsightRunner
from sinklens.cli import main
from sinklens.builtin.tiny_llava import draw_scene

# (id, command line, part of the message, refused before) -- placeholders:
# {scene} an image, {file} an existing file, {dir} an existing folder, {bad} a corrupt PNG,
# {ro} a read-only folder, {tmp} the test's folder
CLI_ROWS = [
    # sinklens run
    ("run-corrupt-image", "run --image {bad} --out {tmp}/o", "cannot be read as an image", "load"),
    ("run-image-is-a-directory", "run --image {dir} --out {tmp}/o", "is a directory; give an image file", "load"),
    ("run-image-missing", "run --image {tmp}/nope.png --out {tmp}/o", "does not exist", "load"),
    ("run-max-new-tokens-0", "run --image {scene} --max-new-tokens 0 --out {tmp}/o", "--max-new-tokens must be >= 1", "load"),
    ("run-max-new-tokens-negative", "run --image {scene} --max-new-tokens -4 --out {tmp}/o", "--max-new-tokens must be >= 1", "load"),
    ("run-max-new-tokens-past-context", "run --image {scene} --max-new-tokens 100000 --out {tmp}/o", "runs past tiny-llava's context", "compute"),
    ("run-image-token-in-prompt", "run --image {scene} --prompt '<image> What is it?' --out {tmp}/o", "Remove '<image>' from the question", "compute"),
    ("run-sink-dims-too-large", "run --image {scene} --sink-dims 99999 --out {tmp}/o", "outside tiny-llava's residual stream (width 512", "compute"),
    ("run-sink-dims-negative", "run --image {scene} --sink-dims -1 --out {tmp}/o", "--sink-dims must be residual-stream dimensions >= 0", "load"),
    ("run-sink-dims-not-numbers", "run --image {scene} --sink-dims a,b --out {tmp}/o", "comma-separated integers", "parse"),
    ("run-mistyped-model", "run --model tiny-lava --image {scene} --out {tmp}/o", "Did you mean 'tiny-llava'?", "load"),
    ("run-unknown-model", "run --model bogus --image {scene} --out {tmp}/o", "The built-ins are toy-llava, tiny-llava", "load"),
    ("run-uncached-hub-id-offline", "run --model bogus-org/bogus-model --image {scene} --out {tmp}/o", "not in the local hub cache and the hub is off", "load"),
    ("run-out-is-a-file", "run --image {scene} --out {file}", "is an existing file; give a folder", "load"),
    ("run-out-read-only", "run --image {scene} --out {ro}/o", "cannot write in", "load"),
    ("run-tau-0", "run --image {scene} --tau 0 --out {tmp}/o", "tau must be > 0", "load"),
    ("run-p-out-of-range", "run --image {scene} --p 1.5 --out {tmp}/o", "p must be in [0, 1]", "load"),
    # sinklens eval pope / captions
    ("pope-n-0", "eval pope --n 0 --out {tmp}/p", "--n must be >= 1", "load"),
    ("pope-out-is-a-file", "eval pope --n 2 --out {file}", "is an existing file; give a folder", "load"),
    ("pope-out-read-only", "eval pope --n 2 --out {ro}/p", "cannot write in", "load"),
    ("pope-mistyped-model", "eval pope --model tiny-llava-nxt --n 2 --out {tmp}/p", "Did you mean 'tiny-llava-next'?", "load"),
    ("pope-max-new-tokens-0", "eval pope --n 2 --max-new-tokens 0 --out {tmp}/p", "--max-new-tokens must be >= 1", "load"),
    ("pope-sink-dims-too-large", "eval pope --n 2 --sink-dims 512 --out {tmp}/p", "outside tiny-llava's residual stream", "compute"),
    ("captions-n-0", "eval captions --n 0 --out {tmp}/c", "--n must be >= 1", "load"),
    ("captions-out-is-a-file", "eval captions --n 2 --out {file}", "is an existing file", "load"),
    # sinklens discover-sink-dims
    ("discover-prompts-0", "discover-sink-dims --prompts 0 --out {tmp}/d", "--prompts must be >= 1", "load"),
    ("discover-first-layer-past-the-model", "discover-sink-dims --first-layer 99 --out {tmp}/d", "must be in [0, 5]: tiny-llava has 6 layers", "compute"),
    ("discover-first-layer-negative", "discover-sink-dims --first-layer -1 --out {tmp}/d", "--first-layer must be >= 0", "load"),
    ("discover-threshold-0", "discover-sink-dims --threshold 0 --out {tmp}/d", "--threshold must be > 0", "load"),
    ("discover-threshold-above-ceiling", "discover-sink-dims --threshold 99 --out {tmp}/d", "at or above sqrt(d_model) = 22.6", "compute"),
    ("discover-threshold-fraction-1", "discover-sink-dims --threshold-fraction 1 --out {tmp}/d", "--threshold-fraction must be in (0, 1)", "load"),
    ("discover-out-is-a-file", "discover-sink-dims --out {file}", "is an existing file", "load"),
    ("discover-out-read-only", "discover-sink-dims --out {ro}/d", "cannot write in", "load"),
    # sinklens draw-scene
    ("draw-out-without-extension", "draw-scene --out {tmp}/noext", "has no image extension PIL can write (none); name a file such as", "load"),
    ("draw-out-unknown-extension", "draw-scene --out {tmp}/scene.xyz", "has no image extension", "load"),
    ("draw-out-is-a-directory", "draw-scene --out {dir}", "is a directory; name an image file", "load"),
    ("draw-out-read-only", "draw-scene --out {ro}/scene.png", "cannot write in", "load"),
    ("draw-index-negative", "draw-scene --index -1 --out {tmp}/s.png", "--index must be >= 0", "load"),
    ("draw-unknown-model", "draw-scene --model bogus --out {tmp}/s.png", "draw-scene --model takes a built-in", "load"),
]

# these commands need a --model and, for run, a --prompt; the rows leave them out unless they test them
DEFAULTS = {"run": ["--model", "tiny-llava", "--prompt", "What is in the image?"], "eval": ["--model", "tiny-llava"],
            "discover-sink-dims": ["--model", "tiny-llava"]}  # fmt: skip


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    assert main(["draw-scene", "--model", "tiny-llava", "--out", str(path)]) == 0
    return path.read_bytes()


@pytest.fixture
def folder(tmp_path, drawn) -> dict[str, str]:
    """The test's folder with an image, a file, a folder, a corrupt PNG and a read-only folder in it."""
    (tmp_path / "scene.png").write_bytes(drawn)
    (tmp_path / "notes.txt").write_text("keep me\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "bad.png").write_bytes(drawn[:60])  # a PNG header, then nothing
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    yield {"tmp": str(tmp_path), "scene": str(tmp_path / "scene.png"), "file": str(tmp_path / "notes.txt"),
           "dir": str(tmp_path / "images"), "bad": str(tmp_path / "bad.png"), "ro": str(read_only)}  # fmt: skip
    read_only.chmod(0o755)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root, with a hash of each file's bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(root.rglob("*"))
    }


def argv(row: str, folder: dict[str, str]) -> list[str]:
    import shlex

    words = [word.format(**folder) for word in shlex.split(row)]
    n = 2 if words[0] == "eval" else 1
    extra = DEFAULTS.get(words[0], [])
    kept = [word for flag, value in zip(extra[::2], extra[1::2]) if flag not in words for word in (flag, value)]
    return words[:n] + kept + words[n:]


class Spent(AssertionError):
    """Raised by the spies: the refusal came later than its row says."""


@pytest.fixture
def spies(monkeypatch):
    """Make loading a model, or running one, fail the test (the row says which must not happen)."""
    import sinklens.models

    def guard(stage: str) -> None:
        if stage in ("parse", "load"):
            def no_load(*args, **kwargs):
                raise Spent("the model was loaded before the bad input was refused")

            monkeypatch.setattr(sinklens.models, "load", no_load)
        for method in ("forward", "generate"):
            def no_compute(self, *args, _method=method, **kwargs):
                raise Spent(f"NnsightRunner.{_method} ran before the bad input was refused")

            monkeypatch.setattr(NnsightRunner, method, no_compute)

    return guard


def _writable_anyway(path: str) -> bool:
    """Root ignores a folder's permissions: a read-only folder cannot be made there without a read-only mount."""
    try:
        probe = Path(path) / ".probe"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


@pytest.mark.parametrize(("line", "message", "before"), [row[1:] for row in CLI_ROWS], ids=[row[0] for row in CLI_ROWS])
def test_bad_input_is_refused_in_one_line(line, message, before, folder, spies, capsys, monkeypatch):
    if "{ro}" in line and _writable_anyway(folder["ro"]):
        pytest.skip("this user can write in a read-only folder (root); test_read_only_mount covers it")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = Path(folder["tmp"])
    before_snapshot = snapshot(root)
    spies(before)
    if before == "parse":
        with pytest.raises(SystemExit) as exit_:
            main(argv(line, folder))
        code = exit_.value.code
    else:
        code = main(argv(line, folder))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if re.match(r"sinklens( [a-z-]+)*: error: ", line)]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert snapshot(root) == before_snapshot  # nothing written, changed or lost


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's read-only /proc")
@pytest.mark.parametrize("command", ["run --image {scene}", "eval pope --n 2", "discover-sink-dims", "eval captions --n 2"])
def test_read_only_mount(command, folder, spies, capsys):
    """/proc is read-only even for root: an --out under it is refused before anything loads."""
    spies("load")
    assert main(argv(command + " --out /proc/sinklens-out", folder)) == 2
    assert "cannot write in /proc" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--model", "tiny-lava", "--image", "{scene}", "--prompt", "x", "--out", "{tmp}/o"], "Did you mean 'tiny-llava'?"),
        (["run", "--model", "tiny-llava", "--image", "{bad}", "--prompt", "x", "--out", "{tmp}/o"], "cannot be read as an image"),
        (["draw-scene", "--model", "bogus", "--out", "{tmp}/s.png"], "takes a built-in"),
    ],
)
@pytest.mark.slow  # a subprocess or toy-llava: `make test` runs it, `make test-fast` does not
def test_the_installed_entry_point_prints_no_traceback(args, message, folder):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "sinklens"] + [a.format(**folder) for a in args],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("sinklens: error:") and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# The Python API: the same refusals as SinklensError subclasses (prepare's image rows: tests/test_images.py)
def _var_str(tmp_path, tiny):
    import sinklens as sl

    sl.VAR(p="0.5")


def _load_mistyped(tmp_path, tiny):
    import sinklens as sl

    sl.load("tiny-lava")


def _load_a_file(tmp_path, tiny):
    (tmp_path / "weights.bin").write_bytes(b"")
    import sinklens as sl

    sl.load(str(tmp_path / "weights.bin"))


def _prepare_batch_without_pairs(tmp_path, tiny):
    tiny.prepare_batch([draw_scene(), draw_scene()])


def _prepare(image, question="What is in the image?"):
    def call(tmp_path, tiny):
        tiny.prepare(image(tmp_path) if callable(image) else image, question)

    return call


def _a_folder(tmp_path):
    (tmp_path / "images").mkdir()
    return str(tmp_path / "images")


API_ROWS = [
    ("prepare-none", _prepare(None), "is None; pass a PIL image"),
    ("prepare-missing-path", _prepare("scene.png"), "scene.png does not exist"),
    ("prepare-a-folder", _prepare(_a_folder), "is a directory"),
    ("prepare-numpy-array", _prepare(np.zeros((8, 8, 3), dtype=np.uint8)), "PIL.Image.fromarray"),
    ("prepare-question-none", _prepare(lambda tmp_path: draw_scene(), None),
     "pass the question as a string"),
    ("prepare-image-token-in-question", _prepare(lambda tmp_path: draw_scene(),
                                                 "<image>\nWhat is it?"), "Remove '<image>' from the question"),
    ("var-p-as-a-string", _var_str, "p must be a number, got '0.5' of type str (write p=0.5, without quotes)"),
    ("load-mistyped-name", _load_mistyped, "Did you mean 'tiny-llava'?"),
    ("load-a-file", _load_a_file, "is a file; give the folder"),
    ("prepare-batch-without-pairs", _prepare_batch_without_pairs, "takes (image or images, question) pairs"),
]


@pytest.mark.parametrize(("call", "message"), [row[1:] for row in API_ROWS], ids=[row[0] for row in API_ROWS])
def test_bad_input_to_the_api(call, message, tmp_path, tiny):
    """As a user calls it (the tests' shape checker covers the pure ops only, so sinklens' own checks answer)."""
    from sinklens.errors import SinklensError

    with pytest.raises(SinklensError) as raised:
        call(tmp_path, tiny)
    assert message in str(raised.value)
