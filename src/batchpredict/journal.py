"""`_manifest.journal`: the outputs a run committed, appended one JSON line each as they
are committed, beside `_manifest.json` in an `--output_dir`.

The manifest itself is written once, when the run ends (or fails, or is interrupted), from
what it had and the journal; the journal is then removed. A run killed outright leaves the
journal behind, and the next run folds it into the manifest before it starts, so that
`--skip_existing` skips what the killed run finished.

Locally the journal is one file, appended to with one `write` per line: a killed process
loses no line, and the file is synced to disk at most every `SYNC_SECONDS` (a line lost
to a power cut only makes the next run redo that output). Object stores cannot append, so
there the lines are uploaded as numbered segments (`_manifest.journal.000001`) at most
every `UPLOAD_SECONDS`. Reading ignores a line cut short by a crash, and any line that is
not a JSON object.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

from batchpredict import storage
from batchpredict.atomic import write_whole
from batchpredict.errors import InputMissingError, ReadWriteError, error_text

JOURNAL = "_manifest.journal"
#: Longest a local journal's lines stay unsynced to disk.
SYNC_SECONDS = 1.0
#: Longest an object store's journal lines wait to be uploaded.
UPLOAD_SECONDS = 10.0


class Journal:
    """The journal of the output folder `folder`: read, appended to, removed."""

    def __init__(self, folder: str, name: str = JOURNAL) -> None:
        self.folder = folder
        self.name = name
        self.path = storage.join(folder, name)
        self._local = not storage.is_uri(folder)
        self._file: IO[bytes] | None = None
        self._pending: list[bytes] = []
        self._segments = 0
        self._last_sync = time.monotonic()

    def files(self) -> list[str]:
        """The journal's files in the order they were written (none when there is none)."""
        if self._local:
            return [self.path] if os.path.isfile(self.path) else []
        prefix = storage.join(self.folder, self.name + ".")
        return [path for path in storage.list_files(self.folder) if path.startswith(prefix)]

    def read(self) -> list[dict[str, Any]]:
        """Every whole line that is a JSON object, in order."""
        found: list[dict[str, Any]] = []
        for path in self.files():
            try:
                data = storage.read_bytes(path)
            except (FileNotFoundError, InputMissingError):
                continue
            for line in data.splitlines():
                try:
                    value = json.loads(line)
                except ValueError:
                    continue  # cut short by a crash
                if isinstance(value, dict):
                    found.append(value)
        return found

    def append(self, line: dict[str, Any]) -> None:
        """Add a line (synced or uploaded later; see the module's docstring)."""
        data = (json.dumps(line, default=str) + "\n").encode()
        if not self._local:
            self._pending.append(data)
            if time.monotonic() - self._last_sync >= UPLOAD_SECONDS:
                self.sync()
            return
        try:
            if self._file is None:
                os.makedirs(self.folder, exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
            self._file.write(data)
            if time.monotonic() - self._last_sync >= SYNC_SECONDS:
                self.sync()
        except OSError as exc:
            raise ReadWriteError(f"{self.path}: cannot write: {error_text(exc)}") from exc

    def sync(self) -> None:
        """Sync the local file to disk, or upload the pending lines as a new segment."""
        self._last_sync = time.monotonic()
        if self._file is not None:
            os.fsync(self._file.fileno())
        if self._pending:
            self._segments += 1
            segment = f"{self.path}.{self._segments:06d}"
            write_whole(segment, b"".join(self._pending).decode(), "the manifest journal")
            self._pending.clear()

    def remove(self) -> None:
        """Close and delete the journal (once the manifest holds what it said)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending.clear()
        for path in self.files():
            storage.delete(path)
