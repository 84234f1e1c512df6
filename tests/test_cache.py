"""The model cache: entries appear only once complete, and a broken entry is rebuilt."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sinklens.builtin import parts

FILES = ("a.txt", "sub/b.txt")


def write_both(folder: Path) -> None:
    (folder / "a.txt").write_text("a")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("b")


def test_a_build_killed_midway_leaves_no_entry(tmp_path):
    entry = tmp_path / "thing-v1"

    def dies(folder: Path) -> None:
        (folder / "a.txt").write_text("a")
        raise KeyboardInterrupt  # killed between the two files

    with pytest.raises(KeyboardInterrupt):
        parts.build_entry(entry, FILES, dies)
    assert not entry.exists() and list(tmp_path.iterdir()) == []
    assert parts.cached_entry(entry, FILES, write_both, lambda d: (d / "sub" / "b.txt").read_text()) == "b"


def test_an_entry_with_a_file_missing_is_rebuilt(tmp_path):
    entry = tmp_path / "thing-v1"
    parts.build_entry(entry, FILES, write_both)
    (entry / "sub" / "b.txt").unlink()
    assert not parts.entry_ok(entry, FILES)
    with pytest.warns(UserWarning, match="incomplete"):
        assert parts.cached_entry(entry, FILES, write_both, lambda d: (d / "sub" / "b.txt").read_text()) == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing-v1"]  # no temporary folder left


def test_an_unreadable_entry_is_rebuilt_once(tmp_path):
    entry = tmp_path / "thing-v1"
    parts.build_entry(entry, FILES, write_both)
    (entry / "a.txt").write_text("truncated")
    reads = []

    def read(folder: Path) -> str:
        reads.append(1)
        if (folder / "a.txt").read_text() != "a":
            raise ValueError("bad header")
        return "ok"

    with pytest.warns(UserWarning, match="could not be read"):
        assert parts.cached_entry(entry, FILES, write_both, read) == "ok"
    assert len(reads) == 2


def test_a_write_that_forgets_a_file_is_an_error_not_an_entry(tmp_path):
    entry = tmp_path / "thing-v1"
    with pytest.raises(RuntimeError, match="sub/b.txt"):
        parts.build_entry(entry, FILES, lambda folder: (folder / "a.txt").write_text("a"))
    assert not entry.exists()


def test_a_complete_entry_published_first_is_kept(tmp_path):
    entry = tmp_path / "thing-v1"
    parts.build_entry(entry, FILES, write_both)
    stamp = (entry / "a.txt").stat().st_mtime_ns

    def other(folder: Path) -> None:
        write_both(folder)
        (folder / "a.txt").write_text("other")

    parts.build_entry(entry, FILES, other)  # as if two processes built at once
    assert (entry / "a.txt").read_text() == "a" and (entry / "a.txt").stat().st_mtime_ns == stamp


def _link_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


@pytest.mark.slow  # a subprocess or toy-llava: `make test` runs it, `make test-fast` does not
def test_smollm2_without_its_tokenizer_is_rebuilt(tmp_path, monkeypatch):
    """The issue's case: a first load killed after the LM weights were saved, before the tokenizer."""
    parts.smollm2(progress=False)  # the real cache, built if needed
    source = parts.cache_root() / f"smollm2-135m-instruct-v{parts.FORMAT}"
    monkeypatch.setenv("SINKLENS_CACHE", str(tmp_path))
    entry = tmp_path / source.name
    _link_tree(source, entry)
    shutil.rmtree(entry / "tokenizer")
    with pytest.warns(UserWarning, match="incomplete"):
        state, config, tokenizer = parts.smollm2(progress=False)
    assert parts.entry_ok(entry, parts.SMOLLM2_FILES)
    assert tokenizer.decode(tokenizer("a red disk")["input_ids"]) == "a red disk"
    assert state["model.embed_tokens.weight"].shape == (config.vocab_size, config.hidden_size)


def test_dinov2_with_a_truncated_weight_file_is_rebuilt(tmp_path, monkeypatch):
    parts.dinov2()
    source = parts.cache_root() / f"dinov2-s14-v{parts.FORMAT}"
    monkeypatch.setenv("SINKLENS_CACHE", str(tmp_path))
    entry = tmp_path / source.name
    entry.mkdir()
    shutil.copy2(source / "config.json", entry / "config.json")
    (entry / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:1000])
    with pytest.warns(UserWarning, match="could not be read"):
        state, _ = parts.dinov2()
    assert state["embeddings.patch_embeddings.projection.weight"].shape == (384, 3, 14, 14)
