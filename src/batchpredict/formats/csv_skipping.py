"""Reading a CSV input with `--on_error skip`: bad rows reported and left out, the rest read.

Rows with the wrong number of fields (and the marker rows of `csv_records`) are skipped by
Arrow's invalid-row handler. A value that does not convert stops Arrow's reader for good, so
the input is opened again with that column read as text, the rows already handled are
passed over, and from there on the column is converted here per batch (with Arrow's CSV
converter, `text_values`), leaving out the rows whose value does not convert; the batches
keep the inferred types. A row longer than the reader's blocks has the input opened again
with blocks that hold it.

Rows are numbered among the data rows (header excluded, bad rows included), as Arrow
numbers them. Reports are made in row order, before the batch that follows them.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
from collections.abc import Callable, Generator, Iterator
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from batchpredict.errors import DataError
from batchpredict.formats.base import KEPT_VALUE_CHARS, BadRecord, ReadOptions, not_readable
from batchpredict.formats.csv_records import straddles
from batchpredict.formats.text_values import (
    convert_lines,
    convert_text,
    quoted_lines,
    unconvertible_column,
)


class CsvReading(Protocol):
    """What a skipping read needs of the CSV reader (`csv_io.CsvReader`)."""

    options: ReadOptions
    #: The model's numeric columns and the types they are read as.
    wanted: dict[str, pa.DataType]
    null_values: list[str]
    separator: str

    def parse_options(self, on_invalid: Callable[[pacsv.InvalidRow], str]) -> pacsv.ParseOptions:
        """The dialect, with `on_invalid` as Arrow's invalid-row handler."""

    def convert_options(self, column_types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
        """Arrow's conversion of the columns to `column_types`."""

    def error_for(
        self,
        exc: BaseException,
        bad_rows: list[pacsv.InvalidRow],
        names: list[str],
        row_shift: int = -1,
    ) -> Exception:
        """Our error for a failure of Arrow's reader."""

    def invalid_row(self, number: int, row: pacsv.InvalidRow) -> BadRecord:
        """The bad record for a row Arrow found malformed."""

    def block_for_longest_row(
        self, block_size: int, failure: BaseException, reopen: object | None
    ) -> int:
        """A block size that holds the longest row read so far, or the error."""


class SkippingRead:
    """One read of a CSV input with bad rows `report`ed and left out.

    `reopen` opens the input again (None: it cannot be, as stdin); `rows_before` is added
    to every row number (the rows of a range read before this one).
    """

    def __init__(
        self,
        reader: CsvReading,
        column_types: dict[str, pa.DataType],
        report: Callable[[BadRecord], None],
        reopen: Callable[[], pa.NativeFile] | None,
        rows_before: int = 0,
    ) -> None:
        self._reader = reader
        self._column_types = column_types
        self._names = list(column_types)
        self._schema = pa.schema(list(column_types.items()))
        self._report = report
        self._reopen = reopen
        self._rows_before = rows_before
        #: Bad row numbers (wrong field count) minus the bad rows before each: a row read by
        #: Arrow as the n-th (1-based) is data row n + bisect_right(shifted, n).
        self._shifted: list[int] = []
        self._last_bad = 0  # the highest of those rows: a second pass reports none twice
        self._pending: list[BadRecord] = []
        # Columns read as text and converted here. Stdin cannot be read a second time: the
        # model's columns, where bad values are expected, are converted here from the start.
        self._as_text: set[str] = set(reader.wanted) if reopen is None else set()
        self._known_bad: dict[str, dict[str, str]] = {}  # per column, values that fail
        self._done = 0  # rows (of the right length) yielded or reported, over all passes

    def batches(self, source: object, block_size: int) -> Iterator[pa.RecordBatch]:
        """The good rows of `source` (a binary file object), in batches of at most
        `chunk_size` rows; passes over it again as long as a failure can be got past."""
        with contextlib.ExitStack() as reopened:
            stream: pa.NativeFile = pa.PythonFile(source, mode="r")
            while True:
                failure = yield from self._one_pass(stream, block_size)
                if failure is None:
                    self._flush(None)
                    return
                block_size = self._get_past(failure, block_size)
                stream = reopened.enter_context(self._reopen())  # type: ignore[misc]

    def _one_pass(
        self, stream: pa.NativeFile, block_size: int
    ) -> Generator[pa.RecordBatch, None, BaseException | None]:
        """Read `stream` with Arrow's streaming reader, yielding what earlier passes did
        not; the failure that stopped it, or None at the end of the input."""
        types = {n: pa.string() if n in self._as_text else t for n, t in self._column_types.items()}
        chunk = self._reader.options.chunk_size
        rank = 0  # rows (of the right length) read in this pass
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size),
                parse_options=self._reader.parse_options(self._on_invalid),
                convert_options=self._reader.convert_options(types),
            )
        except (pa.ArrowException, OSError) as exc:
            return exc
        while True:
            try:
                batch = _next_batch(reader)
            except (pa.ArrowException, OSError) as exc:
                return exc
            if batch is None:
                return None
            start, rank = rank, rank + batch.num_rows
            if rank <= self._done:  # handled in an earlier pass
                continue
            first = max(start, self._done)
            batch = self._kept_rows(batch.slice(first - start), first)
            self._done = rank
            self._flush(self._row_number(rank))
            for offset in range(0, batch.num_rows, chunk):
                yield batch.slice(offset, chunk)

    def _get_past(self, failure: BaseException, block_size: int) -> int:
        """The block size to read the input again with, past `failure`; or its error."""
        reader = self._reader
        if straddles(failure):
            return reader.block_for_longest_row(block_size, failure, self._reopen)
        column = unconvertible_column(failure, self._names)
        if column is None or column in self._as_text:
            raise reader.error_for(failure, [], self._names, self._rows_before - 1) from failure
        if self._reopen is None:  # stdin: it cannot be read a second time
            raise DataError(
                f"{reader.error_for(failure, [], self._names)} (with --on_error skip, a value "
                "that does not convert cannot be skipped in stdin; read from a file)"
            ) from failure
        self._as_text.add(column)
        return block_size

    def _on_invalid(self, row: pacsv.InvalidRow) -> str:
        """Arrow's invalid-row handler: the row is pending report, and skipped."""
        if row.number is None:  # not with use_threads=False; never guess a number
            return "error"
        number = row.number - 1  # Arrow counts the header as row 1
        if number > self._last_bad:
            self._last_bad = number
            self._shifted.append(number - len(self._shifted))
            self._pending.append(self._reader.invalid_row(number, row))
        return "skip"

    def _row_number(self, rank: int) -> int:
        """The data row number of the `rank`-th row of the right length."""
        return rank + bisect.bisect_right(self._shifted, rank)

    def _flush(self, up_to: int | None) -> None:
        """Report the pending bad rows up to row `up_to` (None: all), in row order."""
        pending = self._pending
        pending.sort(key=lambda bad: bad.row)
        count = len(pending)
        if up_to is not None:
            count = bisect.bisect_right([bad.row for bad in pending], up_to)
        ready = pending[:count]
        del pending[:count]
        for bad in ready:
            shift = self._rows_before
            self._report(dataclasses.replace(bad, row=bad.row + shift) if shift else bad)

    def _kept_rows(self, batch: pa.RecordBatch, start: int) -> pa.RecordBatch:
        """`batch` (its first row the `start + 1`-th read) with the columns read as text
        converted to their types; rows whose value does not convert are pending report
        and left out."""
        if not self._as_text:
            return batch
        try:
            converted, bad = self._convert_columns(batch)
        except pa.ArrowException as exc:
            names = self._names
            raise self._reader.error_for(exc, [], names, self._rows_before - 1) from exc
        if bad:
            indexes = sorted(bad)
            texts = row_texts(batch.take(indexes), self._reader.separator)
            for index, text in zip(indexes, texts, strict=True):
                column, reason, value = bad[index]
                row = self._row_number(start + index + 1)
                self._pending.append(BadRecord(row, reason, text, column, value))
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[indexes] = False
            batch = batch.filter(pa.array(keep))
            converted = dict.fromkeys(converted)  # convert the rows kept
        arrays = []
        for name in self._schema.names:
            array = batch.column(name)
            if name in self._as_text:
                array = converted[name]
                if array is None:
                    text, offsets = quoted_lines(batch.column(name))
                    kind = self._schema.field(name).type
                    array = convert_lines(text, offsets, kind, [], self._reader.null_values)
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=self._schema)

    def _convert_columns(
        self, batch: pa.RecordBatch
    ) -> tuple[dict[str, pa.Array | None], dict[int, tuple[str, str, str]]]:
        """Each column read as text converted (None where a value failed), and each row
        with a value that failed: its column, the reason and the value."""
        converted: dict[str, pa.Array | None] = {}
        bad: dict[int, tuple[str, str, str]] = {}
        for name in self._schema.names:
            if name not in self._as_text:
                continue
            known = self._known_bad.setdefault(name, {})
            kind = self._schema.field(name).type
            values = batch.column(name)
            array, failures = convert_text(values, kind, known, self._reader.null_values)
            converted[name] = array
            for index, reason in failures.items():
                raw = values[index].as_py() or ""
                if name in self._reader.wanted:
                    reason = not_readable(raw, kind)
                else:
                    reason = f"column {name!r}: {reason}"
                bad.setdefault(index, (name, reason, raw[:KEPT_VALUE_CHARS]))
        return converted, bad


def row_texts(rows: pa.RecordBatch, separator: str) -> list[str]:
    """Rows rebuilt as CSV text (for the rejects: the raw text is gone once parsed)."""
    columns = []
    for column in rows.columns:
        try:
            values = pc.cast(column, pa.string()).to_pylist()
        except pa.ArrowException:
            values = [None if v is None else str(v) for v in column.to_pylist()]
        columns.append(["" if v is None else v for v in values])
    special = (separator, '"', "\n", "\r")

    def field(value: str) -> str:
        if any(char in value for char in special):
            return '"' + value.replace('"', '""') + '"'
        return value

    return [separator.join(map(field, row)) for row in zip(*columns, strict=True)]


def _next_batch(reader: pacsv.CSVStreamingReader) -> pa.RecordBatch | None:
    """The reader's next batch, or None at the end."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
