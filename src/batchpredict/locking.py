"""`--lock_file`: an flock that keeps two runs of the same job from overlapping.

The kernel releases an flock when its process dies, so a killed run never leaves a stale
lock behind; the file itself stays and is reused.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from batchpredict.errors import LockHeldError, OutputError


@contextmanager
def hold_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on `path` (no-op for None); exit 75 if taken."""
    if path is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{path}: cannot open lock file: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockHeldError(f"{path}: another run holds the lock; try again later") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
