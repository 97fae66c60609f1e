"""Delta Lake tables through delta-rs (`deltalake`, the `delta` extra).

A table is a folder of Parquet files and a transaction log (`_delta_log/`) saying which of
them make up each version; files an overwrite replaced stay until vacuumed. So a table is
read as one input, at its current snapshot or `--input_version`, never as its files. Its
predictions are written as one table, committed in one transaction when the run ends:
until then no reader sees any of them, and a failed run leaves the previous version
current (any Parquet files already written are referenced by no version).

`deltalake` is imported only when a table is read or written; without it the run stops
with a configuration error (78) that says how to install it.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from batchpredict import storage
from batchpredict.errors import (
    BatchPredictError,
    ConfigError,
    InputMissingError,
    OutputError,
    ReadWriteError,
    StoreUnreachableError,
    UsageError,
    error_text,
)
from batchpredict.formats.base import STDIO, Reader, Writer

if TYPE_CHECKING:
    import deltalake
    import pyarrow.dataset as pads  # imports pandas: only when a table is read

#: The folder whose presence makes a folder a Delta table.
DELTA_LOG = "_delta_log"
INSTALL_HINT = (
    "Delta Lake tables need the delta extra: pip install 'batchpredict[delta]' (deltalake)"
)
#: Batches read ahead of the one being scored, and fragments (files) opened ahead: enough
#: to overlap reading with scoring while memory stays flat.
_BATCH_READAHEAD = 2
_FRAGMENT_READAHEAD = 1
#: Batches handed to the table's writing thread and not yet taken: bounds memory.
_WRITE_QUEUE = 2


def import_deltalake() -> Any:
    """delta-rs' Python package, or a configuration error (exit 78) saying how to install it."""
    try:
        import deltalake
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return deltalake


def storage_options(uri: str) -> dict[str, str] | None:
    """What delta-rs' own S3 client needs besides the SDK environment it reads itself: the
    run's endpoint (`--s3_endpoint_url` or `AWS_ENDPOINT_URL`), plain HTTP allowed when it
    is an http:// one (MinIO, moto). Other stores and local paths: None."""
    if not uri.lower().startswith(("s3://", "s3a://")):
        return None
    endpoint = storage.current_s3_endpoint()
    if endpoint is None:
        return None
    options = {"AWS_ENDPOINT_URL": endpoint}
    if endpoint.startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def is_delta_table(name: str) -> bool:
    """Whether the folder (or URI prefix) `name` holds a Delta transaction log; False when
    that cannot be looked at."""
    log = storage.join(name, DELTA_LOG)
    if not storage.is_uri(log):
        return os.path.isdir(log)
    try:
        return bool(storage.kind(storage.locate(log)) == pafs.FileType.Directory)
    except StoreUnreachableError:
        raise  # each folder above would wait out --storage_timeout again
    except BatchPredictError:
        return False


def table_above(name: str) -> str | None:
    """The nearest folder above the file or folder `name` that is a Delta table (a file
    or partition of it), or None: local folders up to the root, URIs up to the bucket."""
    if storage.is_uri(name):
        scheme, _, rest = name.partition("://")
        authority, *parts = rest.rstrip("/").split("/")
        base = f"{scheme}://{authority}"
        above = [storage.join(base, *parts[:end]) for end in range(len(parts) - 1, -1, -1)]
    else:
        path, above = os.path.abspath(name), []
        while os.path.dirname(path) != path:
            path = os.path.dirname(path)
            above.append(path)
    for folder in above:
        if is_delta_table(folder):
            named = storage.is_uri(folder) or os.path.isabs(name)
            return folder if named else os.path.relpath(folder)
    return None


class DeltaReader(Reader):
    """Reads a Delta table at one version as record batches of at most `chunk_size` rows."""

    name = "delta"
    #: A table is a folder: no extension tells it; `sources` finds its `_delta_log/`.
    extensions = ()
    streamable = False
    accepts_compression_suffix = False
    declares_types = True

    def _table(self) -> deltalake.DeltaTable:
        """The table at `options.table_version` (None: current), errors turned into ours."""
        if self.path == STDIO:
            raise UsageError("a Delta table cannot be read from stdin; name its folder")
        lib = import_deltalake()
        version = self.options.table_version
        try:
            table: deltalake.DeltaTable = lib.DeltaTable(
                self.path, version=version, storage_options=storage_options(self.path)
            )
            return table
        except lib.exceptions.TableNotFoundError as exc:
            raise InputMissingError(f"{self.path}: no Delta table: {error_text(exc)}") from exc
        except lib.exceptions.DeltaError as exc:
            if version is None:
                raise ReadWriteError(
                    f"{self.path}: cannot read the Delta table: {error_text(exc)}"
                ) from exc
            raise InputMissingError(self._missing_version(version)) from exc

    def _missing_version(self, version: int) -> str:
        """Why `version` cannot be read: past the current one, or its log is gone."""
        lib = import_deltalake()
        try:
            current = lib.DeltaTable(self.path, storage_options=storage_options(self.path))
            latest = current.version()
        except lib.exceptions.DeltaError as exc:
            return f"{self.path}: cannot read the Delta table: {error_text(exc)}"
        if version > latest:
            return f"{self.path}: Delta table has no version {version}; its current is {latest}"
        return (
            f"{self.path}: version {version} of the Delta table cannot be read (its log may "
            f"have been cleaned up); its current version is {latest}"
        )

    def _dataset(self) -> pads.Dataset:
        table = self._table()
        lib = import_deltalake()
        try:
            return table.to_pyarrow_dataset()
        except lib.exceptions.DeltaError as exc:  # e.g. a reader feature unsupported
            raise ReadWriteError(
                f"{self.path}: cannot read version {table.version()} of the Delta table: "
                f"{error_text(exc)}"
            ) from exc

    def total_rows(self) -> int | None:
        """The version's row count from its log (None when a file's statistics lack it)."""
        actions = pa.table(self._table().get_add_actions(flatten=True))
        if "num_records" not in actions.column_names:
            return None
        counts = actions.column("num_records")
        return None if counts.null_count else int(pc.sum(counts).as_py() or 0)

    def schema(self) -> pa.Schema:
        """The version's schema, from its log."""
        return self._dataset().schema

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """The version's rows, file by file, a few batches read ahead."""
        scanner = self._dataset().scanner(
            batch_size=self.options.chunk_size,
            batch_readahead=_BATCH_READAHEAD,
            fragment_readahead=_FRAGMENT_READAHEAD,
        )
        try:
            yield from scanner.to_batches()
        except (pa.ArrowException, OSError) as exc:
            raise ReadWriteError(
                f"{self.path}: cannot read the Delta table's data (a file of this version "
                f"missing or corrupt?): {error_text(exc)}"
            ) from exc


class _Abort(Exception):
    """Raised inside the table's batch stream so that delta-rs stops without committing."""


class DeltaWriter(Writer):
    """Writes every batch of the run into the Delta table at `path` (a folder), committed
    as one new version by `commit`: `mode` overwrite replaces the table's rows, append adds
    to them. delta-rs writes the Parquet files and the log entry, on a thread of its own
    that takes the batches from a small queue."""

    name = "delta"
    extensions = ()
    accepts_compression_suffix = False

    def __init__(self, path: str) -> None:
        super().__init__(path)
        #: overwrite or append (`--output_mode`).
        self.mode = "overwrite"
        self._queue: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(_WRITE_QUEUE)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def open(self, schema: pa.Schema) -> None:
        """Check the folder, then start delta-rs writing from the queue."""
        lib = import_deltalake()
        self._refuse_foreign_folder()
        self._schema = schema
        reader = pa.RecordBatchReader.from_batches(schema, self._batches())

        def write() -> None:
            try:
                lib.write_deltalake(
                    self.path,
                    reader,
                    mode=self.mode,
                    # An overwrite replaces the columns too (a new model's outputs); an
                    # append must fit the table's.
                    schema_mode="overwrite" if self.mode == "overwrite" else None,
                    storage_options=storage_options(self.path),
                )
            except BaseException as exc:  # noqa: BLE001 - re-raised by write or commit
                self._failure = exc

        self._thread = threading.Thread(target=write, name="batchpredict-delta", daemon=True)
        self._thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: pa.RecordBatch | BaseException | None) -> bool:
        """Hand `item` to the writing thread; False if it has stopped (it failed)."""
        while self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def write(self, batch: pa.RecordBatch) -> None:
        """Queue a batch for the table; raise at once if writing it has failed."""
        if not self._put(batch):
            raise self._error()
        self.rows_written += batch.num_rows

    def commit(self) -> None:
        """End the stream: delta-rs commits the new version, or nothing if it fails."""
        if self._thread is None:
            raise OutputError(f"{self.path}: no rows to write to the Delta table")
        self._put(None)
        self._thread.join()
        self._thread = None
        if self._failure is not None:
            raise self._error()
        self.content = self._commit_content()

    def abort(self) -> None:
        """Stop delta-rs before it commits: the table's current version stays current."""
        if self._thread is not None:
            self._put(_Abort())
            self._thread.join()
            self._thread = None

    def _error(self) -> Exception:
        lib = import_deltalake()
        exc = self._failure or RuntimeError("the writing thread stopped")
        if isinstance(exc, lib.exceptions.SchemaMismatchError):
            return OutputError(
                f"{self.path}: the predictions' columns do not fit the Delta table's schema "
                f"(--output_mode {self.mode}): {error_text(exc)}"
            )
        return ReadWriteError(f"{self.path}: cannot write the Delta table: {error_text(exc)}")

    def _refuse_foreign_folder(self) -> None:
        """A folder holding other files and no table: writing a table into it would leave
        them mixed with its files, to be scored as data by a later listing."""
        if is_delta_table(self.path):
            return
        location = storage.locate(self.path)
        if storage.kind(location) != pafs.FileType.Directory:
            return
        infos = location.filesystem.get_file_info(pafs.FileSelector(location.path))
        names = [info.base_name for info in infos if not info.base_name.startswith(("_", "."))]
        if names:
            raise OutputError(
                f"{self.path}: holds files ({names[0]}, ...) but is no Delta table; give "
                "--output_format delta an empty or new folder, or an existing table"
            )

    def _commit_content(self) -> storage.Content:
        """The SHA-256 and size of the log entry this run committed (what the manifest
        records of a table: it names the version and every file in it)."""
        data = storage.read_bytes(current_commit(self.path))
        return storage.Content(hashlib.sha256(data).hexdigest(), len(data))


def current_commit(table: str) -> str:
    """The log entry (`_delta_log/<version>.json`) of the table's current version: what a
    manifest records of a Delta output, and what `verify` checks."""
    lib = import_deltalake()
    try:
        version = lib.DeltaTable(table, storage_options=storage_options(table)).version()
    except lib.exceptions.TableNotFoundError as exc:
        raise InputMissingError(f"{table}: no Delta table: {error_text(exc)}") from exc
    except lib.exceptions.DeltaError as exc:
        raise ReadWriteError(f"{table}: cannot read the Delta table: {error_text(exc)}") from exc
    return storage.join(table, DELTA_LOG, f"{version:020d}.json")


def committed_rows(entry: str) -> int:
    """The rows a log entry added: the sum of its files' `numRecords` statistics."""
    rows = 0
    for line in storage.read_bytes(entry).splitlines():
        added = json.loads(line).get("add")
        if added is None:
            continue
        stats = json.loads(added.get("stats") or "{}")
        if "numRecords" not in stats:
            raise ReadWriteError(f"{entry}: a file added has no row count in its statistics")
        rows += int(stats["numRecords"])
    return rows
