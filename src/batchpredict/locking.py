"""`--lock_file`: an flock that keeps two runs of the same job from overlapping.

The kernel releases an flock when its process dies, so a killed run never leaves a stale
lock behind; the file itself stays and is reused.

The lock file is opened without following a symbolic link (`O_NOFOLLOW`) and must be a
regular file: in a folder others can write, a link planted under the lock's name would
otherwise make this run create or overwrite the link's target. The process id is written
only into a file that holds nothing else (empty, or a previous run's id), is owned by the
running user and has one link; any other file is locked as it is, its content untouched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from batchpredict.errors import LockHeldError, OutputError, error_text

#: Lock files this process holds: taking one again (the CLI, then the pipeline) is a no-op,
#: where a second flock on a new descriptor would conflict with the first.
_held: set[str] = set()

#: What batchpredict writes into a lock file: a process id and a newline.
_PID_CONTENT = re.compile(rb"\d*\n?")
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


@contextmanager
def hold_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on `path` (no-op for None); exit 75 if taken,
    73 if `path` is a symbolic link or not a regular file."""
    if path is None or os.path.realpath(path) in _held:
        yield
        return
    key = os.path.realpath(path)
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockHeldError(f"{path}: another run holds the lock; try again later") from exc
        _record_pid(fd)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)


def _open_lock_file(path: str) -> int:
    """A descriptor on the regular file `path`, created (mode 0644 less the umask) if missing."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "a symbolic link") from exc
        if exc.errno == errno.EISDIR:
            raise _refused(path, "a directory") from exc
        raise OutputError(f"{path}: cannot open lock file: {error_text(exc)}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refused(path, "not a regular file")
    return fd


def _refused(path: str, what: str) -> OutputError:
    return OutputError(
        f"{path}: refusing the lock file: it is {what}; use a regular file in a folder "
        "only this job's account can write"
    )


def _record_pid(fd: int) -> None:
    """Write this process's id into the lock file when that destroys nothing (see above)."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_nlink != 1 or info.st_size > 32:
        return
    if not _PID_CONTENT.fullmatch(os.pread(fd, 64, 0)):
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
