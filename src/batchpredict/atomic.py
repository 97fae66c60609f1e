"""Temporary files beside their target, renamed into place when complete.

Every file batchpredict writes — outputs, the rejects file, the manifest and `_SUCCESS` —
goes through here: written under a hidden temporary name in the target's directory (so
the rename cannot cross file systems), flushed to disk, then `os.replace`d. Temporary
names carry the writer's process id, so the next run can remove those of a killed run.
On object stores (`s3://...`) the temporary is a `_`-prefixed key beside the target,
moved into place by the store (see `storage.publish`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchpredict import storage
from batchpredict.errors import OutputError, ReadWriteError, error_text

SUFFIX = ".tmp"


class StagedFile:
    """One output under construction: `sink` takes the bytes, `commit` puts them under
    the final name whole, `abort` leaves no trace (and the previous file untouched).

    Errors name the final path: cannot create (OutputError, 73), cannot write
    (ReadWriteError, 74).
    """

    def __init__(self, path: str, what: str = "", max_bytes: int | None = None) -> None:
        self.path = path
        #: What the file is, for error messages ("metrics": "cannot write metrics: ...").
        self.what = f" {what}" if what else ""
        self._raw: Any = None
        if storage.is_uri(path):
            storage.remove_stale_temporaries(path)
            self.temp = storage.temporary_uri(path)
            self.sink: pa.NativeFile = storage.open_output(self.temp)
            return
        try:
            fd, self.temp = temp_beside(path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot create output: {error_text(exc)}") from exc
        self._raw = os.fdopen(fd, "wb")
        if max_bytes is not None:  # (config refuses the limit for object stores)
            self._raw = _BoundedFile(self._raw, max_bytes, path)
        self.sink = pa.PythonFile(self._raw, mode="w")

    def commit(self) -> None:
        """Close the sink (if the caller has not) and move the complete file into place."""
        try:
            if not self.sink.closed:
                self.sink.close()
            if self._raw is None:
                storage.publish(self.temp, self.path)
                return
            if not self._raw.closed:
                self._raw.close()
            # Synced through a fresh descriptor: closing the Arrow stream closed ours.
            fd = os.open(self.temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            publish(self.temp, self.path)
        except OSError as exc:
            self.abort()
            reason = error_text(exc)
            raise ReadWriteError(f"{self.path}: cannot write{self.what}: {reason}") from exc

    def abort(self) -> None:
        """Close and delete the temporary file (best effort: used while already failing)."""
        for stream in (self.sink, self._raw):
            with contextlib.suppress(Exception):
                if stream is not None and not stream.closed:
                    stream.close()
        if self._raw is None:
            storage.remove(self.temp)
        else:
            Path(self.temp).unlink(missing_ok=True)


class _BoundedFile:
    """A binary file that refuses to grow beyond `max_bytes` (`--max_output_bytes`): the
    write that would pass it raises ReadWriteError, so that a runaway output (a
    decompression bomb's predictions) ends the run before it fills the disk."""

    def __init__(self, raw: Any, max_bytes: int, path: str) -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self._path = path
        self._written = 0

    def write(self, data: Any) -> int:
        """Write `data`, or raise ReadWriteError if the file would pass its limit."""
        size = memoryview(data).nbytes
        if self._written + size > self._max_bytes:
            raise ReadWriteError(
                f"{self._path}: output would grow beyond --max_output_bytes "
                f"({self._max_bytes} bytes); the output is not written"
            )
        self._written += size
        return int(self._raw.write(data))

    def __getattr__(self, name: str) -> Any:
        # Everything else (flush, close, closed, tell, writable, fileno) is the file's.
        return getattr(self._raw, name)


def write_whole(path: str, text: str, what: str = "") -> None:
    """Write a small file (manifest, marker, metrics) through a `StagedFile`; `what` it is
    goes into the error message."""
    try:
        staged = StagedFile(path, what)
    except OutputError as exc:
        cause = error_text(exc.__cause__ or exc)
        raise ReadWriteError(f"{path}: cannot write{' ' + what if what else ''}: {cause}") from exc
    try:
        staged.sink.write(text.encode("utf-8"))
    except OSError as exc:
        staged.abort()
        raise ReadWriteError(f"{path}: cannot write{staged.what}: {error_text(exc)}") from exc
    staged.commit()


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
