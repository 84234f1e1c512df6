"""An evaluation folder: rows appended as they are answered, safe for concurrent and interrupted runs.

One evaluation (`kind`, e.g. "pope" or "vqa") keeps four files in its folder:

- `KIND.jsonl`: one JSON line per answered example, flushed and synced, so a
  crash loses at most the batch in flight; a torn last line is cut off on resume;
- `KIND.settings.json`: what the rows were computed with. It is written with the
  first row, never before: a run that fails before answering anything leaves
  nothing that would refuse the corrected rerun;
- `KIND.json`: the metrics, rewritten (atomically) at the end of each run;
- `KIND.lock`: held with an exclusive `flock` while a run uses the folder, with
  the holder's pid in it. A second run on the same folder is refused at once,
  naming that pid; `restart` (discard the old run) takes the lock first, so it
  cannot pull rows from under a running evaluation. The operating system drops
  the lock when its holder dies, so a killed run never blocks the next one.

    with RunFolder(out, "pope") as folder:     # refuses a busy folder
        folder.check(settings)                  # refuses other settings, naming each difference
        done = folder.rows()                    # what an earlier run answered
        folder.append(new_rows)                 # the settings file appears with the first row
        folder.write_metrics(metrics)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sinklens.errors import SinklensError

try:  # POSIX; elsewhere the lock is an exclusively created file (see _try_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class ResumeMismatchError(SinklensError, ValueError):
    """An output folder holds a run made with other settings."""


class FolderBusyError(SinklensError, RuntimeError):
    """Another run holds the output folder's lock."""


class FolderUseError(SinklensError, RuntimeError):
    """A RunFolder used out of order: without its lock, or rows before settings."""


class FolderError(SinklensError, ValueError):
    """The output folder cannot be used: it is a file, or it cannot be written."""


def differences(found: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Every leaf where two settings differ, as `key.sub: folder value -> this run's value`."""
    if isinstance(found, Mapping) and isinstance(wanted, Mapping):
        out: list[str] = []
        for key in sorted(set(found) | set(wanted), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in found:
                out.append(f"{name}: absent in the folder -> {json.dumps(wanted[key])}")
            elif key not in wanted:
                out.append(f"{name}: {json.dumps(found[key])} in the folder -> absent here")
            else:
                out += differences(found[key], wanted[key], name)
        return out
    if found != wanted:
        return [f"{prefix or 'settings'}: {json.dumps(found)} in the folder -> {json.dumps(wanted)}"]
    return []


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class RunFolder:
    """The files of one evaluation kind in one folder; a context manager that holds the folder's lock."""

    def __init__(self, out: Path | str, kind: str, *, wait: bool = False) -> None:
        self.out = Path(out)
        self.wait = wait  # block until the holder is done instead of refusing (studies sharing a runs folder)
        self.kind = kind
        self.rows_path = self.out / f"{kind}.jsonl"
        self.settings_path = self.out / f"{kind}.settings.json"
        self.metrics_path = self.out / f"{kind}.json"
        self.lock_path = self.out / f"{kind}.lock"
        self._lock_fd: int | None = None
        self._made_folder = False
        self._settings: dict[str, Any] | None = None

    # --- the lock ---------------------------------------------------------------------------

    def __enter__(self) -> RunFolder:
        self.lock()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unlock()

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def lock(self) -> None:
        """Take the folder's exclusive lock, or raise `FolderBusyError` naming the holder's pid at once."""
        if self.locked:
            return
        if self.out.exists() and not self.out.is_dir():
            raise FolderError(f"--out {self.out} is a file, not a folder; give a folder path")
        self._made_folder = not self.out.exists()
        while True:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise FolderError(f"cannot write to {self.out} ({e.strerror}); give a folder you can write to") from e
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderBusyError(
                    f"{self.out} is in use by another {self.kind} run (pid {holder}); wait for it to finish, "
                    f"or give another --out folder"
                ) from None
            try:  # the holder before us may have removed the lock file (a run that wrote nothing): lock anew
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock; a run that wrote nothing leaves no trace (no lock file, no folder it made)."""
        if self._lock_fd is None:
            return
        wrote_nothing = [path.name for path in self.out.iterdir()] == [self.lock_path.name]
        if wrote_nothing:
            self.lock_path.unlink(missing_ok=True)  # still held: a waiting run sees the inode change and relocks
        os.close(self._lock_fd)  # closing the descriptor releases the flock
        self._lock_fd = None
        if wrote_nothing and self._made_folder:
            with contextlib.suppress(OSError):
                self.out.rmdir()

    def _require_lock(self, what: str) -> None:
        if not self.locked:
            raise FolderUseError(f"RunFolder.{what} needs the folder's lock: use `with RunFolder(...) as folder:`")

    # --- settings and rows ------------------------------------------------------------------

    def check(self, settings: Mapping[str, Any]) -> None:
        """Remember this run's settings; refuse a folder whose rows were made with other ones.

        A settings file without any row (left by an older version that wrote it
        first) describes nothing and is replaced.
        """
        self._require_lock("check")
        wanted = json.loads(json.dumps(dict(settings)))  # the JSON form, as it will be read back
        if self.settings_path.is_file() and self.rows():
            found = json.loads(self.settings_path.read_text())
            changed = differences(found, wanted)
            if changed:
                raise ResumeMismatchError(
                    f"{self.out} holds a {self.kind} run with other settings (differing: {'; '.join(changed)}). "
                    f"Use another --out folder, or --restart to discard the old run."
                )
        self._settings = wanted

    def rows(self) -> list[dict[str, Any]]:
        """The complete rows of earlier runs; a torn last line (a crash mid-write) is cut off the file."""
        if not self.rows_path.is_file():
            return []
        data = self.rows_path.read_bytes()
        good = data[: data.rfind(b"\n") + 1]
        if len(good) != len(data) and self.locked:
            with self.rows_path.open("r+b") as f:
                f.truncate(len(good))
        return [json.loads(line) for line in good.decode().splitlines() if line.strip()]

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (flushed and synced); the settings file is written before the first one."""
        self._require_lock("append")
        rows = list(rows)
        if not rows:
            return
        if self._settings is None:
            raise FolderUseError("RunFolder.append before RunFolder.check: the settings of the rows are unknown; "
                                 "call check(settings) first")
        if not self.settings_path.is_file() or not self.rows_path.is_file() or self.rows_path.stat().st_size == 0:
            _write_atomic(self.settings_path, json.dumps(self._settings, indent=1) + "\n")
        with self.rows_path.open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        self._require_lock("write_metrics")
        _write_atomic(self.metrics_path, json.dumps(dict(metrics), indent=1) + "\n")
        return self.metrics_path

    def restart(self) -> None:
        """Discard the folder's previous run (rows, settings, metrics), under the lock."""
        self._require_lock("restart")
        for path in (self.rows_path, self.settings_path, self.metrics_path):
            path.unlink(missing_ok=True)
