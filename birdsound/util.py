"""Small helpers every stage may use: atomic file output, one-line error text, quiet stderr.

Nothing here imports another birdsound module.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sys
import threading
from typing import Iterator

_STDERR_LOCK = threading.RLock()
_stderr_depth = 0


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary name beside `path` to write to; when the block succeeds it replaces
    `path` (a file or a folder), otherwise the temporary is removed and `path` is untouched.

    `suffix` is appended to the temporary name for writers that insist on an extension.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.part{os.getpid()}{suffix}")
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            remove(tmp)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically (temporary name in the same folder, rename)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            with open(tmp, "wb") as f:
                f.write(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(data)


def remove(path: str) -> None:
    """Remove a file or a folder tree."""
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C libraries' messages included) for the duration.

    File descriptors are process-wide, so concurrent users are serialised (and nesting is fine):
    keep the block short.
    """
    global _stderr_depth
    with _STDERR_LOCK:
        _stderr_depth += 1
        if _stderr_depth > 1:
            try:
                yield
            finally:
                _stderr_depth -= 1
            return
        sys.stderr.flush()
        saved = os.dup(2)
        real, original = None, sys.stderr
        try:
            if _writes_to_fd2(original):  # Python's own writes (other threads' error lines) still reach the terminal
                real = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(original, "encoding", None) or "utf-8",
                                 errors="backslashreplace")
                sys.stderr = real
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if real is not None:
                sys.stderr = original
                real.close()
            _stderr_depth -= 1


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Only errors from logger `name` for the duration."""
    import logging

    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (what says two files are one recording); read once per process while
    the file's size and modification time stay the same (the training data's check, teacher and views
    caches all ask)."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
