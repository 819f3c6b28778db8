"""Atomic file writes and hashing.

Every artifact the pipeline writes goes through these helpers: a killed job leaves either the old
file or the new one, never a half-written file (write to a temp file in the same folder, fsync,
rename).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_log = logging.getLogger("pvdm")
_UMASK = os.umask(0)
os.umask(_UMASK)


class DiskFullError(OSError):
    """ENOSPC while writing ``path``: says where, how much was free, and that the old file is intact."""

    def __init__(self, path: str | os.PathLike, written: int | None = None):
        path = Path(path)
        folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(folder).free
        need = f"; it needed more than the {_size(written)} written so far" if written else ""
        kept = f" The previous {path.name} is untouched." if path.exists() else " No partial file was left."
        super().__init__(
            errno.ENOSPC,
            f"{path}: no space left on the device of {folder} ({_size(free)} free{need}).{kept} "
            "Free space (or point the output elsewhere) and rerun the same command: finished work is kept.",
        )
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def _size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def raise_if_disk_full(e: BaseException, path: str | os.PathLike, written: int | None = None) -> None:
    """Turn an ENOSPC (also torch's wrapped 'file write failed') into a DiskFullError naming ``path``."""
    if isinstance(e, DiskFullError):
        raise e
    text = str(e)
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text:
        raise DiskFullError(path, written) from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    A full disk raises :class:`DiskFullError` naming ``path``; the temporary file is removed and a
    previous ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; published files get the usual mode
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:
        raise_if_disk_full(e, path, tmp_path.stat().st_size if tmp_path.exists() else None)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class FolderInUseError(RuntimeError):
    pass


class FolderLock:
    """An exclusive lock on an output folder (``flock`` on ``<folder>/.lock``), held while a stage
    writes there: a second writer (a rerun while an orphaned job still runs, a stage started by hand
    while Snakemake runs it) stops at once with a message naming the holder instead of interleaving
    its files. The kernel releases the lock when the holder dies, so a killed job never leaves it set."""

    def __init__(self, folder: str | os.PathLike, what: str = "a pvdm stage", name: str = ".lock"):
        import fcntl
        import socket

        self._fd = -1
        self.path = Path(folder) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            self.release()
            raise FolderInUseError(
                f"{self.path.parent} is in use by {holder}. Wait for it to finish, or stop it (kill the pid) "
                "and rerun; two writers in one folder would mix their files."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{what} (pid {os.getpid()} on {socket.gethostname()})".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    def __del__(self) -> None:  # an exception unwound past the holder: drop the lock with it
        self.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    # Through a file object: np.save on a path appends ".npy" to names that lack it (the temp name).
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    # Through a file object: torch.save on a path writes the file's name into the archive (here the
    # random temp name), so identical tensors would give different bytes, hashes and DVC changes.
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as e:
            # torch's zip writer reports a failed write as "unexpected pos"; the OSError says why
            if writer.error is not None:
                raise writer.error from e
            raise


class _RecordingWriter:
    """A file's ``write``/``flush`` that remembers the OSError torch's archive writer swallows."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays and Paths show up in metric dicts; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_log_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl``, in file order.

    A last line without its newline that does not parse was torn by a kill or a full disk mid-write:
    it is dropped with a warning (the step it logged is redone on resume). Any other bad line is an
    error naming the file and line."""
    text = Path(path).read_text()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: the write was cut short
                _log.warning("%s: dropping a torn last line (%d characters; a write was cut short)", path, len(line))
                break
            raise ValueError(f"{path}: line {i} is not valid JSON ({e}); fix or delete that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}: line {i} has no integer 'step'; fix or delete that line")
        rows.append(row)
    return rows
