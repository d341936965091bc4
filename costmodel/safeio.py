"""The one writer every output goes through (JSON, NPY, PNG, traces, raw logs). Torch-free.

- `check_writable(path)`: callers run it before long work starts (a sweep, a fit, a
  run); it refuses a target that exists and is not a regular file (a directory, a
  device node, a FIFO, a socket), and a parent folder that cannot take a new file
  (missing and not creatable, read-only, not a folder). It creates nothing.
- `write_bytes` / `write_text` / `write_with`: temp file in the same folder, fsync,
  `os.replace` onto the target, so a killed writer never leaves half a file; the
  temp file is removed on every error path; a non-regular target is refused before
  anything is written, never renamed over.
- `open_append`: append-only files (raw logs), with the same refusals.

Every failure is `WriteError` (a ValueError) with one line naming the path.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


class WriteError(ValueError):
    """An output that cannot be written (one line naming the path and why)."""


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_target(p: Path) -> None:
    """Refuse an existing target that is not a regular file (symlinks followed)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return
    except OSError as e:
        raise WriteError(f"cannot write {p}: {_why(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise WriteError(f"cannot write {p}: it exists and is {_kind(st.st_mode)}, "
                         f"not a regular file")


def _probe_dir(d: Path, what: str) -> None:
    """A file can be created (and removed) in the existing folder d."""
    if not d.is_dir():
        raise WriteError(f"cannot write {what}: {d} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=d)
    except OSError as e:
        raise WriteError(f"cannot write {what}: folder {d}: {_why(e)}") from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _existing_ancestor(d: Path) -> Path:
    d = d.absolute()
    while not d.exists():
        if d.parent == d:
            break
        if d.parent.exists() and not d.parent.is_dir():
            raise WriteError(f"cannot create folder {d}: {d.parent} is not a directory")
        d = d.parent
    return d


def check_writable(path: PathLike) -> Path:
    """Check, creating nothing, that `path` can be written as a file by this module:
    the target is absent or a regular file, and its folder (or the nearest existing
    ancestor, when folders are still to be made) accepts a new file. Returns the Path."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise WriteError(f"cannot write {str(path)!r}: not a file path")
    _check_target(p)
    parent = p.absolute().parent
    _probe_dir(_existing_ancestor(parent), str(p))
    return p


def check_writable_dir(path: PathLike) -> Path:
    """Check, creating nothing, that `path` is (or can be made) a folder files can be
    written into."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise WriteError(f"cannot use {p} as an output folder: it exists and is not a directory")
        _probe_dir(p, f"into folder {p}")
    else:
        _probe_dir(_existing_ancestor(p), f"folder {p}")
    return p


def ensure_dir(path: PathLike) -> Path:
    """`check_writable_dir` then create it (parents too)."""
    p = check_writable_dir(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create folder {p}: {_why(e)}") from None
    return p


def write_with(path: PathLike, fill: Callable, *, binary: bool = True, by_path: bool = False) -> Path:
    """Write `path` atomically: `fill(f)` writes into an open temp file (or, with
    by_path, `fill(tmp_path)` writes a file at that path, for writers that only take
    a name, e.g. a profiler's trace export); then fsync and os.replace. The temp file
    is removed on every failure; OS errors become one-line WriteErrors."""
    p = Path(path)
    _check_target(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write {p}: cannot create folder {p.parent}: {_why(e)}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise WriteError(f"cannot write {p}: {_why(e)}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)   # mkstemp's 0600 would make shared data unreadable
        if by_path:
            os.close(fd)
            fd = -1
            fill(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
                fd = -1
                fill(f)
                f.flush()
                os.fsync(f.fileno())
        _check_target(p)                # appeared meanwhile as something not to rename over
        os.replace(tmp, p)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {p}: {_why(e)}") from None
        raise
    return p


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write bytes atomically (write_with)."""
    return write_with(path, lambda f: f.write(data))


def write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (write_with)."""
    return write_bytes(path, text.encode())


def open_append(path: PathLike, mode: str = "a"):
    """Open an append-only file (raw logs, rank logs): refuses a non-regular target,
    creates the folder, and turns OS errors into one-line WriteErrors."""
    p = Path(path)
    _check_target(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return open(p, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except OSError as e:
        raise WriteError(f"cannot write {p}: {_why(e)}") from None
