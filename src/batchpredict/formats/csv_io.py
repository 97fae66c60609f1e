"""CSV and TSV read through pyarrow's streaming CSV reader (written: `csv_writer.py`).

The reader samples the start of the input to size its blocks at about `chunk_size` rows,
infers column types from the first block and then fixes them for the rest of the file, so
that later blocks either convert to the same schema or fail with the row and column named.
The columns the model reads as numbers (`ReadOptions.column_types`) are not inferred but
parsed as what the model needs, value by value, wherever a bad value sits in the file.

With `ReadOptions.on_bad_record` set (`--on_error skip`), malformed rows are reported and left
out instead: a row with the wrong number of fields through Arrow's invalid-row handler, and a
value that does not convert to its column's type by reading the input again with that column
as text and converting it batch by batch (see `csv_skipping`).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from typing import ClassVar

import pyarrow as pa
import pyarrow.csv as pacsv

from batchpredict.errors import DataError, InputMissingError, ReadWriteError, error_text
from batchpredict.formats.base import (
    STDIO,
    BadRecord,
    PrefixedStream,
    Reader,
    ReadOptions,
    model_column_types,
    not_readable,
    read_null_values,
)
from batchpredict.formats.csv_records import LongRecord, RecordLimit, long_record, straddles
from batchpredict.formats.csv_skipping import SkippingRead
from batchpredict.formats.text_values import (
    CONVERSION,
    INVALID_VALUE,
    raw_value,
)

#: Bytes read up front to estimate the row length.
_SAMPLE_BYTES = 1 << 20
#: Block size bounds. Arrow's streaming reader keeps dozens of blocks read ahead, so the
#: upper bound is what caps memory: with 4 MiB blocks reading 1M and 3M rows both peaked at
#: ~260 MiB; with blocks sized for a whole chunk (~22 MiB) memory grew with the file.
_MIN_BLOCK = 1 << 20
_MAX_BLOCK = 4 << 20

#: Bytes of whole records parsed at a time by the multithreaded path, in blocks of
#: `_RANGE_BLOCK` (one per thread and more); a range without a record end doubles up to
#: `_MAX_RANGE` before the streaming reader takes over.
_RANGE_BYTES = 8 << 20
_RANGE_BLOCK = 1 << 20
_MAX_RANGE = 64 << 20


def _record_end(data: bytes, first: bool = False) -> int:
    """The end of the last (or with `first`, the first) whole record in `data`: just past
    a line end with an even number of quote characters before it; 0 if there is none."""
    if b'"' not in data:  # memchr: far faster than counting
        return (data.find(b"\n") if first else data.rfind(b"\n")) + 1
    if first:
        end = data.find(b"\n")
        while end >= 0 and data.count(b'"', 0, end) % 2:
            end = data.find(b"\n", end + 1)
        return end + 1
    end = data.rfind(b"\n")
    quotes = data.count(b'"', 0, end) if end >= 0 else 0
    while end >= 0 and quotes % 2:
        previous = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', previous + 1, end)
        end = previous
    return end + 1


def _block_size(sample: bytes, chunk_size: int) -> int:
    """Bytes per block so that a block holds about `chunk_size` rows like those sampled."""
    row_bytes = len(sample) / max(sample.count(b"\n"), 1)
    return int(min(max(row_bytes * chunk_size, _MIN_BLOCK), _MAX_BLOCK))


def _read_head(stream: pa.NativeFile, chunk_size: int) -> tuple[bytes, int]:
    """The first block of the input, for type inference, and the block size for the rest."""
    head = stream.read(_SAMPLE_BYTES)
    block_size = _block_size(head, chunk_size)
    if len(head) == _SAMPLE_BYTES:
        head += stream.read(block_size - len(head))
    return head, block_size


class CsvReader(Reader):
    """Reads comma-separated values with a header row."""

    name = "csv"
    extensions: ClassVar[tuple[str, ...]] = (".csv",)
    delimiter: ClassVar[str] = ","

    def __init__(self, path: str, options: ReadOptions) -> None:
        super().__init__(path, options)
        self.separator = options.delimiter or self.delimiter
        self.null_values = read_null_values(options)
        #: The columns the model reads as numbers and the types they are yielded in.
        self.wanted: dict[str, pa.DataType] = {}
        #: Every column and the type Arrow reads it as.
        self._read_as: dict[str, pa.DataType] = {}
        #: Records longer than --max_record_bytes, by offset (see `csv_records`).
        self._long_records: dict[int, LongRecord] = {}
        #: The longest record read so far within the limit, in bytes.
        self._longest_record = 0

    def open_binary(self) -> pa.NativeFile:
        """The input, with records longer than --max_record_bytes replaced by marker rows."""

        def record_length(length: int) -> None:
            self._longest_record = max(self._longest_record, length)

        bounded = RecordLimit(
            super().open_binary(),
            self.path,
            self.options.max_record_bytes,
            self.separator,
            self._long_records,
            record_length,
        )
        return pa.PythonFile(bounded, mode="r")

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """Yield batches of at most `chunk_size` rows with the types of the first block,
        except the model's numeric columns, which have the types the model needs."""
        with self.open_binary() as stream:
            try:
                head, block_size = _read_head(stream, self.options.chunk_size)
            except OSError as exc:
                raise ReadWriteError(f"{self.path}: cannot read: {error_text(exc)}") from exc
            if not head.strip():
                raise InputMissingError(f"{self.path}: empty input (a header row is required)")
            at_end = len(head) < block_size
            if at_end and b"\n" not in head and b"\r" not in head:
                # A lone header without a line end: Arrow calls that an empty file.
                head += b"\n"
            column_types = self._with_model_types(self._infer_types(head, at_end=at_end))
            batches: Iterator[pa.RecordBatch]
            header_end = _record_end(head, first=True)
            reopen = None if self.path == STDIO else self.open_binary
            if self.options.on_bad_record is not None:
                source = PrefixedStream(head, stream)
                report = self.options.on_bad_record
                batches = self._iter_skipping(source, block_size, column_types, report, reopen)
            elif header_end and b'"' not in head[header_end:]:
                # Unquoted data (the usual export): whole records can be cut anywhere.
                source = PrefixedStream(head[header_end:], stream)
                batches = self._iter_ranges(source, head[:header_end], column_types, block_size)
            else:
                source = PrefixedStream(head, stream)
                batches = self._first_bad_row(
                    self._iter_stream(source, column_types, block_size), column_types, block_size
                )
            casts = {n: k for n, k in self.wanted.items() if column_types[n] != k}
            for batch in batches:
                yield _cast_columns(batch, casts) if casts else batch

    def _with_model_types(self, inferred: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
        """The types to read the columns as: those inferred, but the model's numeric columns
        (`ReadOptions.column_types`) as the types it needs, so that each value is parsed as
        one. A column of true/false is read as booleans and cast after (to 1 and 0)."""
        schema = pa.schema(list(inferred.items()))
        self.wanted = model_column_types(self.options, schema, self.path)
        read_as = dict(inferred)
        for name, kind in self.wanted.items():
            if not pa.types.is_boolean(inferred[name]):
                read_as[name] = kind
        self._read_as = read_as
        return read_as

    def convert_options(self, column_types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
        """Arrow's conversion: every column's type given, nulls as configured."""
        return pacsv.ConvertOptions(column_types=column_types, null_values=self.null_values)

    def _iter_stream(
        self,
        source: PrefixedStream,
        column_types: dict[str, pa.DataType],
        block_size: int,
        header: bool = True,
        rows_before: int = 0,
    ) -> Iterator[pa.RecordBatch]:
        """Arrow's single-threaded streaming reader over `source` (with its header row, or
        without one when `header` is False); errors name rows counted from `rows_before`."""
        names = list(column_types)
        bad_rows: list[pacsv.InvalidRow] = []

        def reject(row: pacsv.InvalidRow) -> str:
            bad_rows.append(row)
            return "error"

        chunk = self.options.chunk_size
        row_shift = rows_before - (1 if header else 0)
        try:
            # Single-threaded parsing is what gives row numbers in errors.
            reader = pacsv.open_csv(
                pa.PythonFile(source, mode="r"),
                read_options=pacsv.ReadOptions(
                    use_threads=False,
                    block_size=block_size,
                    column_names=None if header else names,
                ),
                parse_options=self.parse_options(reject),
                convert_options=self.convert_options(column_types),
            )
            for batch in reader:
                # Blocks are sized by an estimate: zero-copy slices cap the rows.
                for start in range(0, batch.num_rows, chunk):
                    yield batch.slice(start, chunk)
        except (pa.ArrowException, OSError) as exc:
            raise self.error_for(exc, bad_rows, names, row_shift) from exc

    def _iter_ranges(
        self,
        source: PrefixedStream,
        header: bytes,
        column_types: dict[str, pa.DataType],
        block_size: int,
    ) -> Iterator[pa.RecordBatch]:
        """Cut the input into ranges of whole records and parse each with Arrow's
        multithreaded reader (~1.7x the streaming reader on 2 cores).

        A range ends at the last line end outside quotes (an even number of quote
        characters before it). A range that fails is parsed again single-threaded to name
        the row. Input whose records cannot be cut that way within `_MAX_RANGE` bytes (a
        stray quote character) is read on by the streaming reader.
        """
        chunk = self.options.chunk_size
        pending = b""
        rows_before = 0
        size = _RANGE_BYTES
        while True:
            try:
                data = pending + source.read(size - len(pending))
            except OSError as exc:
                raise ReadWriteError(f"{self.path}: cannot read: {error_text(exc)}") from exc
            at_end = len(data) < size
            cut = len(data) if at_end else _record_end(data)
            if not cut and not at_end:
                if size >= max(_MAX_RANGE, 2 * self.options.max_record_bytes):
                    rest = PrefixedStream(data, source)
                    yield from self._iter_stream(rest, column_types, block_size, False, rows_before)
                    return
                pending, size = data, size * 2
                continue
            block, pending, size = data[:cut], data[cut:], _RANGE_BYTES
            if block.strip():
                table = self._parse_range(block, header, column_types, rows_before)
                yield from table.to_batches(max_chunksize=chunk)
                rows_before += table.num_rows
            if at_end:
                return

    def _parse_range(
        self, block: bytes, header: bytes, column_types: dict[str, pa.DataType], rows_before: int
    ) -> pa.Table:
        """One range of whole records (no header) as a table, or the error naming its row."""
        names = list(column_types)
        try:
            return pacsv.read_csv(
                pa.BufferReader(block),
                read_options=pacsv.ReadOptions(
                    use_threads=True, block_size=_RANGE_BLOCK, column_names=names
                ),
                # Quoted line ends cost ~20% of parsing; most ranges hold no quotes.
                parse_options=self.parse_options(
                    lambda _row: "error", newlines_in_values=b'"' in block
                ),
                convert_options=self.convert_options(column_types),
            )
        except (pa.ArrowException, OSError):
            pass
        # Again, as --on_error skip reads, with the header in front, for the first bad row
        # (Arrow names the first bad value of one column, not the earliest of all). With
        # none, the range held a row longer than the parallel reader's blocks: read so.
        text = header + block
        source = PrefixedStream(text, pa.BufferReader(b""))
        rows = self._iter_skipping(
            source,
            len(text) + 1,
            column_types,
            self._raise_bad_record,
            lambda: pa.BufferReader(text),
            rows_before,
        )
        batches = list(rows)
        if not batches:
            raise DataError(f"{self.path}: cannot read the rows after row {rows_before}")
        return pa.Table.from_batches(batches)

    def _first_bad_row(
        self,
        batches: Iterator[pa.RecordBatch],
        column_types: dict[str, pa.DataType],
        block_size: int,
    ) -> Iterator[pa.RecordBatch]:
        """`batches` of Arrow's streaming reader over the whole input; when they fail on a
        row, the input is read again as --on_error skip reads it, up to its first bad row,
        so that the error names that row (Arrow names the first bad value of one column in
        a block, not the earliest of all). A row longer than the blocks is no bad row: the
        rest is read that way (larger blocks). Stdin cannot be read again: Arrow's error."""
        yielded = 0
        try:
            for batch in batches:
                yielded += batch.num_rows
                yield batch
        except DataError as exc:
            if self.path == STDIO:
                raise
            with self.open_binary() as stream:
                head, _ = _read_head(stream, self.options.chunk_size)
                source = PrefixedStream(head, stream)
                report = self._raise_bad_record
                rows = self._iter_skipping(
                    source, block_size, column_types, report, self.open_binary
                )
                long_row = exc.__cause__ is not None and straddles(exc.__cause__)
                for batch in rows:
                    passed = min(yielded, batch.num_rows)
                    yielded -= passed
                    if long_row and passed < batch.num_rows:
                        yield batch.slice(passed)
            if not long_row:
                raise

    def _iter_skipping(
        self,
        source: PrefixedStream,
        block_size: int,
        column_types: dict[str, pa.DataType],
        report: Callable[[BadRecord], None],
        reopen: Callable[[], pa.NativeFile] | None,
        rows_before: int = 0,
    ) -> Iterator[pa.RecordBatch]:
        """The rows of `source` with bad rows `report`ed and left out (`csv_skipping`)."""
        read = SkippingRead(self, column_types, report, reopen, rows_before)
        return read.batches(source, block_size)

    def _raise_bad_record(self, record: BadRecord) -> None:
        """The `on_bad_record` of --on_error fail: DataError naming the row, as in `_error`."""
        if record.column is None:
            text = record.text[:80]
            raise DataError(f"{self.path}: row {record.row}: {record.reason}: {text!r}")
        detail = record.reason.removeprefix(f"column {record.column!r}: ")
        if detail != record.reason:  # a column typed from the first rows, not the model's
            detail += " (the type inferred from the first rows)"
        raise DataError(f"{self.path}: row {record.row}, column {record.column!r}: {detail}")

    def block_for_longest_row(
        self, block_size: int, failure: BaseException, reopen: object | None
    ) -> int:
        """A block size that holds the longest row read so far (Arrow's reader fails on a
        row longer than its block), to read the input again with; or the error when the
        input cannot be read again (stdin) or the failure was no such row."""
        needed = -(-(self._longest_record + 1) // _MIN_BLOCK) * _MIN_BLOCK
        if needed <= block_size:
            raise self.error_for(failure, [], []) from failure
        if reopen is None:
            raise DataError(
                f"{self.path}: a row of {self._longest_record} bytes is longer than the "
                f"reader's blocks of stdin ({block_size} bytes); read the input from a file"
            ) from failure
        return needed

    def invalid_row(self, number: int, row: pacsv.InvalidRow) -> BadRecord:
        """The bad record for a row Arrow found malformed: too long (a marker row of
        `RecordLimit`), or with the wrong number of fields."""
        if (long := long_record(row.text, self._long_records)) is not None:
            return BadRecord(number, self._too_long(long), long.start)
        reason = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        return BadRecord(number, reason, row.text)

    def _too_long(self, long: LongRecord) -> str:
        """What is wrong with a record longer than --max_record_bytes, and where it is."""
        limit = self.options.max_record_bytes
        return (
            f"row longer than --max_record_bytes ({limit} bytes): "
            f"{long.length} bytes from byte {long.offset}"
        )

    def parse_options(
        self, on_invalid: Callable[[pacsv.InvalidRow], str], newlines_in_values: bool = True
    ) -> pacsv.ParseOptions:
        """The dialect: quoted values may hold newlines (else blocks split inside them)."""
        return pacsv.ParseOptions(
            delimiter=self.separator,
            newlines_in_values=newlines_in_values,
            invalid_row_handler=on_invalid,
        )

    def _infer_types(self, head: bytes, at_end: bool) -> dict[str, pa.DataType]:
        """Column types inferred from the first block, with all-null columns read as
        strings, so that later blocks convert or fail with a row number."""
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise DataError(f"{self.path}: UTF-16 text is not supported; convert it to UTF-8")
        if not at_end:
            # Only whole rows: the block may end in the middle of one.
            cut = head.rfind(b"\n") + 1
            if not cut:
                raise DataError(f"{self.path}: the first row is longer than {len(head)} bytes")
            head = head[:cut]
        try:
            # Checked here, as pyarrow would read the column as binary, or fail to pass the
            # text of a malformed row to the handler below.
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = head.count(b"\n", 0, exc.start) + 1
            raise DataError(
                f"{self.path}: line {line} (byte {exc.start}): invalid UTF-8 "
                "(the input must be UTF-8)"
            ) from exc
        try:
            table = pacsv.read_csv(
                pa.BufferReader(head),
                read_options=pacsv.ReadOptions(use_threads=False, block_size=len(head) + 1),
                # Broken rows are reported with their number by the streaming pass.
                parse_options=self.parse_options(lambda _row: "skip"),
                convert_options=pacsv.ConvertOptions(null_values=self.null_values),
            )
        except pa.ArrowException as exc:
            raise DataError(f"{self.path}: cannot read the header: {error_text(exc)}") from exc
        names = table.column_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"{self.path}: duplicate column names in the header: {duplicates}")
        # A column with only nulls so far would become type null and fail on its first value.
        return {
            field.name: pa.string() if pa.types.is_null(field.type) else field.type
            for field in table.schema
        }

    def error_for(
        self,
        exc: BaseException,
        bad_rows: list[pacsv.InvalidRow],
        names: list[str],
        row_shift: int = -1,
    ) -> Exception:
        """Our error for a failure in the streaming pass, with row and column where known.

        Data rows are Arrow's row numbers plus `row_shift` (-1: the header is Arrow's row 1).
        """
        if bad_rows:
            row = bad_rows[-1]
            where = f"row {row.number + row_shift}" if row.number is not None else "a row"
            if (long := long_record(row.text, self._long_records)) is not None:
                return DataError(f"{self.path}: {where}: {self._too_long(long)}")
            return DataError(
                f"{self.path}: {where}: expected {row.expected_columns} fields, got "
                f"{row.actual_columns}: {row.text[:80]!r}"
            )
        text = error_text(exc)
        if match := CONVERSION.match(text):
            column, row_number, detail = match.groups()
            name = names[int(column)]
            raw = raw_value(exc)
            if "UTF8" in detail:
                detail = "invalid UTF-8 (the input must be UTF-8)"
            elif name in self.wanted and raw is not None:
                detail = not_readable(raw, self._read_as[name])
            elif value := INVALID_VALUE.match(detail):
                kind, shown = value.groups()
                detail = f"cannot read {shown} as {kind} (the type inferred from the first rows)"
            row = int(row_number) + row_shift
            return DataError(f"{self.path}: row {row}, column {name!r}: {detail}")
        if "straddling" in text:
            # From a file such a row is read again with larger blocks; stdin is read once.
            hint = "; stdin is read once: read the input from a file" if self.path == STDIO else ""
            return DataError(
                f"{self.path}: a row is longer than the reader's blocks or has an unclosed "
                f"quote{hint}: {text}"
            )
        if isinstance(exc, OSError):
            return ReadWriteError(f"{self.path}: cannot read: {text}")
        return DataError(f"{self.path}: {text}")


def _cast_columns(batch: pa.RecordBatch, casts: dict[str, pa.DataType]) -> pa.RecordBatch:
    """`batch` with the columns named in `casts` cast (safely) to the types given."""
    for name, kind in casts.items():
        index = batch.schema.get_field_index(name)
        column = batch.column(index).cast(kind)
        batch = batch.set_column(index, batch.schema.field(index).with_type(kind), column)
    return batch


def _next_batch(reader: pacsv.CSVStreamingReader) -> pa.RecordBatch | None:
    """The reader's next batch, or None at the end."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


class TsvReader(CsvReader):
    """Reads tab-separated values with a header row."""

    name = "tsv"
    extensions = (".tsv", ".tab")
    delimiter = "\t"
