"""The reader and writer interfaces every format implements.

A reader streams one input as Arrow record batches of about `chunk_size` rows; memory must
not grow with the file. A writer has a lifecycle — open, write, commit, abort — and writes
into a temporary file beside its target that `commit` renames into place, so that a failed
run never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pyarrow as pa
import pyarrow.csv as pacsv

from batchpredict import storage
from batchpredict.atomic import StagedFile
from batchpredict.config import DEFAULT_MAX_RECORD_BYTES
from batchpredict.errors import (
    BatchPredictError,
    InputMissingError,
    OutputClosed,
    ReadWriteError,
    UsageError,
    error_text,
)
from batchpredict.storage import COMPRESSION_SUFFIXES as COMPRESSION_SUFFIXES
from batchpredict.storage import STDIO as STDIO
from batchpredict.storage import compression_of as compression_of

#: Strings read as null in the numeric columns of text formats unless `--null_values` says
#: otherwise: Arrow's CSV markers (empty, NA, N/A, n/a, NULL, null, NaN, nan, #N/A, ...).
DEFAULT_NULL_VALUES: tuple[str, ...] = tuple(pacsv.ConvertOptions().null_values)
#: Characters of an offending value quoted in a message.
SHOWN_VALUE_CHARS = 40
#: Characters of an offending value kept in its report (`BadRecord.value`).
KEPT_VALUE_CHARS = 1000


def strip_compression(path: str) -> str:
    """The path without a compression suffix (`a.csv.gz` -> `a.csv`)."""
    return path[: -len(Path(path).suffix)] if compression_of(path) else path


class ForwardStream:
    """Base of our read-only, forward-only binary file objects (what `pa.PythonFile` and
    fastavro need besides `read`): position, not seekable, `close` closes the source."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._position = 0
        self.closed = False

    def tell(self) -> int:
        """Bytes read so far."""
        return self._position

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Never seekable: what is read is consumed."""
        return False

    def close(self) -> None:
        """Close the underlying source."""
        self.closed = True
        if self._source is not None:
            self._source.close()


class PrefixedStream(ForwardStream):
    """A read-only binary file object: `head` (bytes already taken from `source`), then the rest.

    Lets a reader sniff or sample the start of a non-seekable input (stdin, a decompressor)
    and still hand the whole stream to a parser.
    """

    def __init__(self, head: bytes, source: Any) -> None:
        super().__init__(source)
        self._head = memoryview(head)

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all remaining for a negative size); b"" at the end."""
        if self._head:
            take = len(self._head) if size < 0 else min(size, len(self._head))
            data = self._head[:take].tobytes()
            self._head = self._head[take:]
            # Top up from the source so that short reads only ever mean end of input.
            if size < 0 or take < size:
                data += self._source.read() if size < 0 else self._source.read(size - take)
        else:
            data = self._source.read() if size < 0 else self._source.read(size)
        self._position += len(data)
        return data


class DescriptorStream(ForwardStream):
    """A read-only binary file object over a file descriptor (stdin), read with `os.read`.

    Unlike `sys.stdin.buffer` it holds no lock while it waits, so a reader thread blocked
    on a stalled pipe cannot stop the process from exiting on SIGTERM or Ctrl-C. Reads
    loop until `size` bytes arrive, so a short read only ever means end of input.
    """

    def __init__(self, descriptor: int) -> None:
        super().__init__(None)  # the descriptor (stdin) stays open for the process
        self._descriptor = descriptor

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all remaining for a negative size); b"" at the end."""
        parts: list[bytes] = []
        remaining = size
        while remaining != 0:
            part = os.read(self._descriptor, remaining if remaining > 0 else 1 << 20)
            if not part:
                break
            parts.append(part)
            remaining = remaining - len(part) if remaining > 0 else -1
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._position += len(data)
        return data


def stdin_stream() -> BinaryIO | DescriptorStream:
    """Standard input as a binary file object that can be read from a background thread."""
    try:
        return DescriptorStream(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by an in-memory stream
        return sys.stdin.buffer


@dataclass(frozen=True)
class BadRecord:
    """A record a reader could not parse (`--on_error skip`), reported instead of raised."""

    #: 1-based number of the record among the file's data records (the CSV header and
    #: blank JSON lines are not records), counting the bad records themselves.
    row: int
    reason: str
    #: The record's raw text, as far as it could be recovered.
    text: str
    #: The column at fault, when the record parsed but one of its values did not convert.
    column: str | None = None
    #: The offending value as text (cut at `KEPT_VALUE_CHARS`), when one value is at fault.
    value: str | None = None


def shown_value(value: str) -> str:
    """A value for a one-line message: repr-quoted, cut to about `SHOWN_VALUE_CHARS`."""
    if len(value) > SHOWN_VALUE_CHARS:
        value = value[: SHOWN_VALUE_CHARS - 3] + "..."
    return repr(value)


def read_null_values(options: ReadOptions) -> list[str]:
    """The strings read as null in numeric columns: `options.null_values` (default:
    `DEFAULT_NULL_VALUES`), and the empty field always (it is how CSV writes a null)."""
    chosen = DEFAULT_NULL_VALUES if options.null_values is None else options.null_values
    return list(dict.fromkeys(("", *chosen)))


def expected_kind(kind: pa.DataType) -> str:
    """What a value of a model's numeric column must be, for messages: "a number", ..."""
    if pa.types.is_boolean(kind):
        return "a boolean (true/false, 1/0)"
    if pa.types.is_integer(kind):
        return "an integer"
    return "a number"


def not_readable(value: str, kind: pa.DataType) -> str:
    """The reason a value of a model's numeric column is bad: it does not parse as `kind`."""
    return f"value {shown_value(value)} is not {expected_kind(kind)}, which the model needs"


#: The types `ReadOptions.column_types` may ask for.
MODEL_COLUMN_TYPES = (pa.float64(), pa.int64(), pa.bool_())


def model_column_types(
    options: ReadOptions, schema: pa.Schema, path: str
) -> dict[str, pa.DataType]:
    """`options.column_types` for a file whose first block has `schema`: the columns the
    model reads as numbers and their types; {} without the callback. A column the file
    lacks or a type other than `MODEL_COLUMN_TYPES` is a bug of the caller's."""
    if options.column_types is None:
        return {}
    wanted = dict(options.column_types(schema))
    for name, kind in wanted.items():
        if name not in schema.names or kind not in MODEL_COLUMN_TYPES:
            raise ValueError(f"{path}: cannot read column {name!r} as {kind}")
    return wanted


@dataclass(frozen=True)
class RowGroups:
    """Part of a Parquet file: row groups `first` to `last` (0-based, inclusive), whose
    first row is the file's row `rows_before + 1` (so bad rows are named by file row)."""

    first: int
    last: int
    rows_before: int


@dataclass(frozen=True)
class ReadOptions:
    """What every reader needs besides the path."""

    chunk_size: int = 65536
    #: With `--on_error skip`: malformed records (a CSV row with the wrong number of
    #: fields, a JSON line that does not parse) are passed here and left out; None raises
    #: `DataError` at the first one instead.
    on_bad_record: Callable[[BadRecord], None] | None = None
    #: Text formats (CSV, TSV, JSON): called once per file, before any batch is yielded, with the
    #: column names and types inferred from the file's first block; returns the columns the model
    #: reads as numbers and the Arrow type each must have (float64, int64 or bool). The reader
    #: yields those columns in exactly that type, parsed value by value; it may raise DataError
    #: (e.g. the file lacks a mapped column), which propagates. Parquet and Avro ignore it.
    column_types: Callable[[pa.Schema], Mapping[str, pa.DataType]] | None = None
    #: Strings read as null in those numeric columns (None: DEFAULT_NULL_VALUES).
    null_values: tuple[str, ...] | None = None
    #: CSV field separator (None: the format's own: "," for csv, "\t" for tsv).
    delimiter: str | None = None
    #: True when a null in a `column_types` column is a bad row (no --fill_value): a reader that
    #: can tell why a value is null (JSON: a missing field or an explicit null) reports it itself
    #: as a bad record; False passes nulls on (to be filled).
    reject_nulls: bool = False
    #: Largest record in bytes: a longer JSON line or array element is a bad record; an
    #: Avro block that decompresses to more is a corrupt file. (A CSV row is bounded by
    #: the reader's block, smaller.)
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    #: Delta tables: the version to read (`--input_version`; None: the current one).
    table_version: int | None = None
    #: Parquet: read only these row groups (a shard's part of a file); None: all.
    row_groups: RowGroups | None = None

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise UsageError(f"chunk size must be at least 1, not {self.chunk_size}")
        if self.max_record_bytes < 1:
            raise UsageError(f"max record bytes must be at least 1, not {self.max_record_bytes}")


class _SchemaSeen(Exception):
    """Stops a reader once it has inferred its schema (see `Reader.schema`)."""


class Reader:
    """Streams one input file (or stdin for `-`) as Arrow record batches."""

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    #: False for formats that need random access (Parquet): stdin is buffered in memory.
    streamable: ClassVar[bool] = True
    #: False for formats with their own internal compression (Parquet, Avro).
    accepts_compression_suffix: ClassVar[bool] = True
    #: True when the file declares its column types (Parquet, Avro); False when the types
    #: are guessed from the first rows (CSV, JSON), where a text column may hold numbers.
    declares_types: ClassVar[bool] = False

    def __init__(self, path: str, options: ReadOptions) -> None:
        self.path = path
        self.options = options

    def open_binary(self) -> pa.NativeFile:
        """The input as an Arrow stream, decompressed by suffix; stdin for `-`."""
        if self.path == STDIO:
            return pa.PythonFile(stdin_stream(), mode="r")
        return storage.open_stream(self.path)

    def total_rows(self) -> int | None:
        """Row count from metadata when the format has it cheaply (for progress), else None."""
        return None

    def schema(self) -> pa.Schema:
        """The input's columns and types as they are before any are parsed for the model,
        to plan the column mapping before the run: what a text reader infers from its first
        block (it hands that to `column_types`, and is stopped there), else the first
        batch's; formats whose metadata holds the schema override this."""
        seen: list[pa.Schema] = []

        def stop_at_schema(schema: pa.Schema) -> Mapping[str, pa.DataType]:
            seen.append(schema)
            raise _SchemaSeen

        options = dataclasses.replace(self.options, column_types=stop_at_schema)
        batches = type(self)(self.path, options).iter_batches()
        try:
            return next(iter(batches)).schema
        except _SchemaSeen:
            return seen[0]
        except StopIteration:
            raise InputMissingError(f"{self.path}: holds no data rows") from None
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """Yield the file's rows in order as record batches of about `chunk_size` rows.

        Raises `ReadWriteError` (corrupt, truncated) or `DataError` (malformed rows) with
        the file name and, where known, the row or byte offset.
        """
        raise NotImplementedError


class Writer:
    """Writes record batches to a temporary file, renamed into place on `commit`.

    Subclasses implement `_start`, `_write` and `_finish` against a binary sink; this base
    class owns the temporary file, compression by suffix, the rename and the clean-up.
    """

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    #: False when list columns cannot be stored (CSV, TSV): they are split into scalars.
    supports_nested: ClassVar[bool] = True
    accepts_compression_suffix: ClassVar[bool] = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._staged: StagedFile | None = None
        self._sink: pa.NativeFile | None = None
        self._schema: pa.Schema | None = None
        self.rows_written = 0
        #: `--max_output_bytes`: the file may not grow beyond this (None: no limit).
        self.max_output_bytes: int | None = None
        #: The committed file's SHA-256 and size (None until committed, and for stdout).
        self.content: storage.Content | None = None

    # -- lifecycle -------------------------------------------------------------------
    def open(self, schema: pa.Schema) -> None:
        """Create the temporary file beside the target and start the format's stream."""
        self._schema = schema
        if self.path == STDIO:
            self._sink = pa.PythonFile(sys.stdout.buffer, mode="w")
        else:
            self._staged = StagedFile(self.path, max_bytes=self.max_output_bytes)
            codec = compression_of(self.path) if self.accepts_compression_suffix else None
            sink = self._staged.sink
            self._sink = pa.CompressedOutputStream(sink, codec) if codec else sink
        try:
            self._start(self._sink, schema)
        except OSError as exc:
            self.abort()
            raise self._write_error(exc) from exc
        except BaseException:
            # E.g. a schema the format cannot hold: no temporary file may stay behind.
            self.abort()
            raise

    def write(self, batch: pa.RecordBatch) -> None:
        """Append a batch whose schema equals the one given to `open`."""
        try:
            self._write(batch)
        except OSError as exc:
            raise self._write_error(exc) from exc
        self.rows_written += batch.num_rows

    def commit(self) -> None:
        """Finish the format, flush to disk and move the temporary file into place."""
        try:
            self._finish()
            assert self._sink is not None
            if self._staged is None:  # stdout
                self._sink.flush()
                sys.stdout.buffer.flush()
                return
            # Closing the Arrow stream also finishes any compression frame.
            self._sink.close()
            self._staged.commit()
            self.content = self._staged.content
            self._staged = None
        except OSError as exc:
            self.abort()
            raise self._write_error(exc) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file; the target (and any previous output) stays untouched."""
        with contextlib.suppress(Exception):  # best effort while already failing
            self._abandon()
        with contextlib.suppress(Exception):
            if self._sink is not None and not self._sink.closed:
                self._sink.close()
        if self._staged is not None:
            self._staged.abort()
            self._staged = None

    def _write_error(self, exc: OSError) -> BatchPredictError:
        """What a failed write means: stdout's reader went away (`| head`), or an I/O error."""
        if self.path == STDIO and exc.errno == errno.EPIPE:
            return OutputClosed("standard output was closed by its reader")
        return ReadWriteError(f"{self.path}: cannot write: {error_text(exc)}")

    # -- format hooks ----------------------------------------------------------------
    def _start(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        raise NotImplementedError

    def _write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        """Release the format's own resources on abort (before the sink is closed)."""
