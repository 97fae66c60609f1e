"""CSV and TSV through pyarrow's streaming CSV reader and its CSV writer.

The reader samples the start of the input to size its blocks at about `chunk_size` rows,
infers column types from the first block and then fixes them for the rest of the file, so
that later blocks either convert to the same schema or fail with the row and column named.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from typing import ClassVar

import pyarrow as pa
import pyarrow.csv as pacsv

from batchpredict.errors import DataError, InputMissingError, ReadWriteError
from batchpredict.formats.base import PrefixedStream, Reader, Writer, error_text

#: Bytes read up front to estimate the row length.
_SAMPLE_BYTES = 1 << 20
#: Block size bounds: Arrow reads up to 8 blocks ahead, so the upper bound caps memory.
_MIN_BLOCK = 1 << 20
_MAX_BLOCK = 64 << 20

_CONVERSION = re.compile(r"In CSV column #(\d+): Row #(\d+): (.*)", re.DOTALL)
_INVALID_VALUE = re.compile(r"CSV conversion error to (\S+): invalid value (.*)", re.DOTALL)


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

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """Yield batches of at most `chunk_size` rows with the types of the first block."""
        bad_rows: list[pacsv.InvalidRow] = []

        def reject(row: pacsv.InvalidRow) -> str:
            bad_rows.append(row)
            return "error"

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
            column_types = self._infer_types(head, at_end=at_end)
            names = list(column_types)
            chunk = self.options.chunk_size
            try:
                # Single-threaded parsing is what gives row numbers in errors; on a stream
                # it costs little, since reading and decompressing dominate.
                reader = pacsv.open_csv(
                    pa.PythonFile(PrefixedStream(head, stream), mode="r"),
                    read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size),
                    parse_options=self._parse_options(reject),
                    convert_options=pacsv.ConvertOptions(column_types=column_types),
                )
                for batch in reader:
                    # Blocks are sized by an estimate: zero-copy slices cap the rows.
                    for start in range(0, batch.num_rows, chunk):
                        yield batch.slice(start, chunk)
            except (pa.ArrowException, OSError) as exc:
                raise self._error(exc, bad_rows, names) from exc

    def _parse_options(self, on_invalid: Callable[[pacsv.InvalidRow], str]) -> pacsv.ParseOptions:
        """The dialect: quoted values may hold newlines (else blocks split inside them)."""
        return pacsv.ParseOptions(
            delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
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
                parse_options=self._parse_options(lambda _row: "skip"),
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

    def _error(
        self, exc: BaseException, bad_rows: list[pacsv.InvalidRow], names: list[str]
    ) -> Exception:
        """Our error for a failure in the streaming pass, with row and column where known."""
        if bad_rows:
            row = bad_rows[-1]
            where = f"row {row.number - 1}" if row.number is not None else "a row"
            return DataError(
                f"{self.path}: {where}: expected {row.expected_columns} fields, got "
                f"{row.actual_columns}: {row.text[:80]!r}"
            )
        text = error_text(exc)
        if match := _CONVERSION.match(text):
            column, row_number, detail = match.groups()
            name = names[int(column)]
            if "UTF8" in detail:
                detail = "invalid UTF-8 (the input must be UTF-8)"
            elif value := _INVALID_VALUE.match(detail):
                kind, shown = value.groups()
                detail = f"cannot read {shown} as {kind} (the type inferred from the first rows)"
            return DataError(f"{self.path}: row {int(row_number) - 1}, column {name!r}: {detail}")
        if "straddling" in text:
            return DataError(f"{self.path}: a row is too long or has an unclosed quote: {text}")
        if isinstance(exc, OSError):
            return ReadWriteError(f"{self.path}: cannot read: {text}")
        return DataError(f"{self.path}: {text}")


class TsvReader(CsvReader):
    """Reads tab-separated values with a header row."""

    name = "tsv"
    extensions = (".tsv", ".tab")
    delimiter = "\t"


class CsvWriter(Writer):
    """Writes comma-separated values with a header row; nulls as empty fields."""

    name = "csv"
    extensions: ClassVar[tuple[str, ...]] = (".csv",)
    supports_nested = False
    delimiter: ClassVar[str] = ","

    def _start(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise DataError(
                f"{self.path}: {self.name.upper()} cannot hold list or struct columns {nested}"
            )
        try:
            self._writer = pacsv.CSVWriter(
                sink, schema, write_options=pacsv.WriteOptions(delimiter=self.delimiter)
            )
        except pa.ArrowException as exc:
            raise DataError(f"{self.path}: cannot write {error_text(exc)}") from exc

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _finish(self) -> None:
        self._writer.close()


class TsvWriter(CsvWriter):
    """Writes tab-separated values with a header row; nulls as empty fields."""

    name = "tsv"
    extensions = (".tsv", ".tab")
    delimiter = "\t"
