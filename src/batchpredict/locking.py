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

#: Lock files this process holds: taking one again (the CLI, then the pipeline) is a no-op,
#: where a second flock on a new descriptor would conflict with the first.
_held: set[str] = set()


@contextmanager
def hold_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on `path` (no-op for None); exit 75 if taken."""
    if path is None or os.path.realpath(path) in _held:
        yield
        return
    key = os.path.realpath(path)
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
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)
