"""Temporary files beside their target, moved into place when complete.

Every file batchpredict writes — outputs, the rejects file, the manifest and `_SUCCESS` —
goes through `StagedFile`: written under a temporary name in the target's folder (so the
move cannot cross filesystems), then published (`storage.publish`: a rename, or on object
stores a server-side move), so that a failed run never leaves a partial file under the
final name. Creating the temporary is the one step that differs by filesystem, see
`_local_temporary` and `_store_temporary`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from batchpredict import storage
from batchpredict.errors import OutputError, ReadWriteError, error_text
from batchpredict.storage import Content

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
        self.target = storage.locate(path)
        #: The local temporary's Python file (None on a store), synced before the move.
        self._raw: Any = None
        if self.target.local:
            self.temp, self._raw = _local_temporary(self.target, max_bytes)
            self._hashed = _HashingFile(self._raw)
        else:  # (config refuses --max_output_bytes for stores)
            self.temp, stream = _store_temporary(self.target)
            self._hashed = _HashingFile(stream)
        # Every byte passes through the hash on its way out: the manifest records the
        # committed file's SHA-256 without reading it back.
        self.sink: pa.NativeFile = pa.PythonFile(self._hashed, mode="w")

    @property
    def content(self) -> Content:
        """The SHA-256 and size of the bytes written so far (all of them, once committed)."""
        return Content(self._hashed.digest.hexdigest(), self._hashed.size)

    def commit(self) -> None:
        """Close the sink (if the caller has not), flush the bytes to disk and move the
        complete file into place."""
        try:
            if not self.sink.closed:
                self.sink.close()  # on a store, this completes the upload
            if self._raw is not None:
                _sync_local(self._raw, self.temp)
        except OSError as exc:
            self.abort()
            why = storage.reason(self.target, exc)
            raise ReadWriteError(f"{self.path}: cannot write{self.what}: {why}") from exc
        try:
            storage.publish(self.temp, self.path, self.what)
        except ReadWriteError:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the temporary file (best effort: used while already failing)."""
        for stream in (self.sink, self._raw):
            with contextlib.suppress(Exception):
                if stream is not None and not stream.closed:
                    stream.close()
        with contextlib.suppress(Exception):
            storage.delete(self.temp)


def _local_temporary(target: storage.Location, max_bytes: int | None) -> tuple[str, Any]:
    """A new local temporary for `target` and its Python file. Local only, and why:
    `mkstemp` creates it with O_EXCL (never through a link or a file someone else planted
    under the name) and mode 0600 (nobody reads a result before it is complete; the umask
    applies when it is published), and its name carries our process id so that the next
    run can remove a killed run's leftovers. pyarrow's local output streams do neither."""
    try:
        fd, temp = temp_beside(target.path)
    except OSError as exc:
        raise OutputError(f"{target.name}: cannot create output: {error_text(exc)}") from exc
    raw: Any = os.fdopen(fd, "wb")
    if max_bytes is not None:
        raw = _BoundedFile(raw, max_bytes, target.name)
    return temp, raw


def _store_temporary(target: storage.Location) -> tuple[str, pa.NativeFile]:
    """A new temporary object beside `target` and its upload stream; leftovers of killed
    runs are told by age, since no process id says whether a writer elsewhere is alive."""
    storage.remove_stale_temporaries(target.name)
    temp = storage.temporary_name(target.name)
    return temp, storage.open_output(temp, shown=target.name)


def _sync_local(raw: Any, temp: str) -> None:
    """Give the finished local temporary the usual permissions and put its bytes on disk
    before it is renamed (a store has the object whole once its upload completes)."""
    if not raw.closed:
        raw.close()
    # mkstemp creates 0600; results get the mode the umask gives any new file.
    os.chmod(temp, 0o666 & ~_umask())
    # Synced through a fresh descriptor: closing the Arrow stream closed ours.
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingFile:
    """A binary file that hashes what is written to it (after the write succeeded)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        """Write `data`, then add it to the hash (hashlib releases the GIL for blocks)."""
        written = int(self._raw.write(data))
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        return written

    def __getattr__(self, name: str) -> Any:
        # Everything else (flush, close, closed, tell, writable, fileno) is the file's.
        return getattr(self._raw, name)


#: Held while the umask is read: reading it sets it, and outputs commit on several threads.
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask (read by setting it: two threads at once could leave it 0)."""
    with _UMASK_LOCK:
        umask = os.umask(0)
        os.umask(umask)
    return umask


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


#: Within `scanning_once`: each folder's temporary files, as found by its one scan.
_scanned: dict[str, list[str]] | None = None


@contextlib.contextmanager
def scanning_once() -> Iterator[None]:
    """Look for dead runs' leftovers once per folder while in force (a run writing
    thousands of outputs to one folder would otherwise list it once per output)."""
    global _scanned
    saved, _scanned = _scanned, {}
    try:
        yield
    finally:
        _scanned = saved


def remove_stale(directory: str, name: str) -> None:
    """Remove temporary files for `name` left by processes that no longer exist."""
    prefix = f".{name}."
    for found in _temporaries(directory):
        if not found.startswith(prefix):
            continue
        pid = found[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, found))


def _temporaries(directory: str) -> list[str]:
    """The names of the temporary files in `directory` (one scan per folder within
    `scanning_once`; those made since by live runs are none of a dead run's)."""
    if _scanned is not None and directory in _scanned:
        return _scanned[directory]
    names: list[str] = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        names = [e.name for e in entries if e.name.startswith(".") and e.name.endswith(SUFFIX)]
    if _scanned is not None:
        _scanned[directory] = names
    return names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
