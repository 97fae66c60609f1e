"""Temporary files beside their target, renamed into place when complete.

Every file batchpredict writes — outputs, the rejects file, the manifest and `_SUCCESS` —
goes through here: written under a hidden temporary name in the target's directory (so
the rename cannot cross file systems), flushed to disk, then `os.replace`d. Temporary
names carry the writer's process id, so the next run can remove those of a killed run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

SUFFIX = ".tmp"


def temp_beside(path: str) -> tuple[int, str]:
    """Create the temporary file for `path` (and its directory); clear dead runs' leftovers."""
    directory = os.path.dirname(path) or "."
    name = os.path.basename(path)
    os.makedirs(directory, exist_ok=True)
    remove_stale(directory, name)
    return tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=SUFFIX, dir=directory)


def remove_stale(directory: str, name: str) -> None:
    """Remove temporary files for `name` left by processes that no longer exist."""
    prefix = f".{name}."
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.startswith(prefix) and entry.name.endswith(SUFFIX)):
                continue
            pid = entry.name[len(prefix) :].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def publish(temp: str, path: str) -> None:
    """Give a finished temporary file the usual permissions and rename it into place."""
    # mkstemp creates 0600; results get the mode the umask gives any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, path)
