"""JSON lines through pyarrow's JSON parser; a `[ ... ]` array of objects streamed in Python.

JSON lines are cut into blocks of whole lines of about `chunk_size` rows, each parsed by
Arrow with the schema inferred from the first block, so every batch has the same schema
and an error names its line. A file that starts with `[` holds one array of objects; it is
decoded element by element with the standard library, never loaded whole (`json_array`).

With `ReadOptions.column_types`, the model's numeric columns are converted by
`json_model.ModelColumns`, value by value where Arrow cannot. With
`ReadOptions.on_bad_record` set (`--on_error skip`), a JSON line that cannot be read
(malformed, not an object, nested too deeply, or not fitting the schema) is reported and
left out, and the block is parsed without it (`json_skipping`). Elements of a JSON array
are not skipped.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from batchpredict.errors import DataError, InputMissingError, ReadWriteError, error_text
from batchpredict.formats.base import (
    BadRecord,
    PrefixedStream,
    Reader,
    ReadOptions,
    model_column_types,
)
from batchpredict.formats.json_array import ArrayRead
from batchpredict.formats.json_model import ModelColumns
from batchpredict.formats.json_skipping import first_bad_line_error, skip_bad_lines
from batchpredict.formats.json_suspects import first_block_schema
from batchpredict.formats.json_values import (
    FRAME,
    FRAME_TEXT,
    MAX_BAD_TEXT,
    TOO_DEEP,
    LineParser,
    as_schema,
    line_text,
    parse_json_lines,
    too_deep,
)
from batchpredict.formats.json_writer import JsonLinesWriter

__all__ = ["JsonLinesReader", "JsonLinesWriter"]

_SAMPLE_BYTES = 1 << 20
_MIN_BLOCK = 64 << 10
#: Blocks above glibc's largest mmap threshold (32 MiB) are fresh pages every time: reading
#: 1M lines took 6.5 s with 38 MiB blocks, 5.2 s with 16 MiB.
_MAX_BLOCK = 16 << 20
_WHITESPACE = " \t\r\n"

#: A block's table, its number of records, and the bad lines left out of it.
_Parsed = tuple[pa.Table, int, list[BadRecord]]


def _skip_line(stream: pa.NativeFile) -> tuple[int, bytes, bool]:
    """Read past the rest of a line, a block at a time: the bytes skipped (with the line
    end), what was read after the line end, and whether there was one (False: the end)."""
    skipped = 0
    while data := stream.read(_SAMPLE_BYTES):
        end = data.find(b"\n")
        if end >= 0:
            return skipped + end + 1, data[end + 1 :], True
        skipped += len(data)
    return skipped, b"", False


class JsonLinesReader(Reader):
    """Reads one JSON object per line (or a single JSON array of objects)."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson", ".json")

    def __init__(self, path: str, options: ReadOptions) -> None:
        super().__init__(path, options)
        #: With `ReadOptions.column_types`, once the first block is known: the model's
        #: columns, and the schema lines are parsed with.
        self._model: ModelColumns | None = None

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """Yield batches of about `chunk_size` rows, all with the first block's schema."""
        # Bad lines are reported here, outside the reading code, so that an error of the
        # callback (even an OSError) passes unchanged.
        with contextlib.closing(self._iter_items()) as items:
            for item in items:
                if isinstance(item, BadRecord):
                    assert self.options.on_bad_record is not None
                    self.options.on_bad_record(item)
                else:
                    yield item

    def _iter_items(self) -> Generator[pa.RecordBatch | BadRecord, None, None]:
        """The batches, and with `on_bad_record` the bad lines before the batch after them."""
        with self.open_binary() as stream:
            try:
                head = stream.read(_SAMPLE_BYTES)
                if len(head) < _SAMPLE_BYTES and not head.removeprefix(codecs.BOM_UTF8).strip():
                    raise InputMissingError(f"{self.path}: empty input")
                if head.lstrip(codecs.BOM_UTF8 + _WHITESPACE.encode()).startswith(b"["):
                    array = ArrayRead(self.path, self.options, stream, head, _SAMPLE_BYTES)
                    yield from array.iter_items()
                else:
                    yield from self._iter_lines(stream, head.removeprefix(codecs.BOM_UTF8))
            except OSError as exc:
                raise ReadWriteError(f"{self.path}: cannot read: {error_text(exc)}") from exc

    def _block_size(self, sample: bytes) -> int:
        """Bytes of about `chunk_size` lines like those of `sample`, within the bounds."""
        lines_in_sample = max(sample.count(b"\n"), 1)
        size = int(len(sample) / lines_in_sample * self.options.chunk_size)
        # A block never holds more than the longest line allowed, plus its line end.
        return min(max(size, _MIN_BLOCK), _MAX_BLOCK, self.options.max_record_bytes + 1)

    def _iter_lines(self, stream: Any, pending: bytes) -> Iterator[pa.RecordBatch | BadRecord]:
        """Parse blocks of whole lines with Arrow."""
        size = self._block_size(pending)
        # Nor does `pending` hold more than the longest line allowed, but at the start,
        # when it is not yet one unfinished line.
        limit = self.options.max_record_bytes
        if len(pending) > limit:
            stream, pending = PrefixedStream(pending, stream), b""
        schema: pa.Schema | None = None
        schema_lines = 0
        line, record, offset, at_end = 1, 0, 0, False
        sample = True
        while not at_end:
            if len(pending) > limit:
                # `pending` is the start of one line, already longer than allowed.
                yield self._too_long_line(pending, line, record, offset)
                skipped, rest, found = _skip_line(stream)
                line, record, offset = line + 1, record + 1, offset + len(pending) + skipped
                pending, at_end = rest, not found
                continue
            # A line longer than the block doubles what is read (linear copying in all),
            # up to one byte past the limit. (At first `pending` is the sample: whole lines.)
            growing = len(pending) >= size and not sample
            wanted = len(pending) if growing else max(size - len(pending), 1)
            more = stream.read(min(wanted, limit + 1 - len(pending)))
            sample = False
            at_end = not more
            # One copy, with the b"{}\n" that Arrow needs first (see `parse_json_lines`);
            # the block is then read in place, data[FRAME:cut].
            data = FRAME_TEXT + pending + more
            cut = len(data) if at_end else data.rfind(b"\n") + 1
            pending = data[cut:]
            if cut <= FRAME:  # one line longer than the block: read on
                pending = data[FRAME:]
                continue
            table, records, bad = self._parse_lines(
                data, cut, line, record, offset, schema, schema_lines
            )
            yield from bad
            line += data.count(b"\n", FRAME, cut)
            record += records
            offset += cut - FRAME
            if schema is None and self._model is not None:
                schema, schema_lines = self._model.schema, line - 1
            if table.num_rows:
                if schema is None:
                    schema, schema_lines = table.schema, line - 1
                yield from table.to_batches(max_chunksize=self.options.chunk_size)

    def _too_long_line(self, start: bytes, line: int, record: int, offset: int) -> BadRecord:
        """The line beginning with `start` (on `line`, at byte `offset`, after `record`
        records), longer than `max_record_bytes`: a bad record (raised without
        `on_bad_record`); its report keeps only the line's start."""
        reason = f"line longer than --max_record_bytes ({self.options.max_record_bytes} bytes)"
        if self.options.on_bad_record is None:
            raise DataError(f"{self.path}: row {record + 1} (line {line}, byte {offset}): {reason}")
        return BadRecord(record + 1, reason, line_text(start[:MAX_BAD_TEXT]))

    def _parse_lines(
        self,
        data: bytes,
        cut: int,
        line: int,
        record: int,
        offset: int,
        schema: pa.Schema | None,
        schema_lines: int,
        first: tuple[pa.Schema | None, pa.Table | None] | None = None,
    ) -> _Parsed:
        """One block of lines, `data[FRAME:cut]` (the first on `line`, at byte `offset`,
        after `record` records) as a table with `schema`, inferred if None (else taken from
        the first `schema_lines` lines); the number of records (non-blank lines) in it; and
        with `on_bad_record` the bad lines left out (without, the first raises DataError).

        With `ReadOptions.column_types`, the first block also decides the model's numeric
        columns (`ModelColumns`), whose values are then parsed one by one; `first` is
        `first_block_schema` of the block when already known.
        """
        self._check_utf8(data, cut, line, offset)
        skipping = self.options.on_bad_record is not None
        deep = too_deep(data, first_only=not skipping, start=FRAME, end=cut)
        if deep and not skipping:
            raise DataError(f"{self.path}: line {line + deep[0]}: {TOO_DEEP}")
        parsed: pa.Table | None = None  # the block, when inferring the schema parsed it
        if schema is None and self.options.column_types is not None:
            found, inferred = first or first_block_schema(data, cut, deep)
            if found is not None:
                self._model = ModelColumns(self.path, self.options, found)
                schema = self._model.schema
                schema_lines = line - 1 + data.count(b"\n", FRAME, cut)
                parsed = as_schema(inferred, schema) if inferred is not None else None
        if schema is None:
            options = pajson.ParseOptions()
        else:
            # New fields after the first block would change the schema mid-stream.
            options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        parse = functools.partial(parse_json_lines, options=options, fixed=schema is not None)
        model = self._model if self._model is not None and self._model.wanted else None
        if not deep:
            whole = self._parse_whole(data, cut, line, record, schema_lines, parse, parsed, model)
            if whole is not None:
                return whole
        lines = data[FRAME:cut].split(b"\n")
        if model is not None:
            return model.parse_lines(lines, deep, line, record, schema_lines)
        if skipping:
            return skip_bad_lines(lines, deep, record, parse, schema, schema_lines)
        raise first_bad_line_error(self.path, lines, line, parse, schema, schema_lines)

    def parse_group(
        self, data: bytes, alone: Callable[[pa.Table, dict[str, pa.DataType]], bool]
    ) -> pa.Table | None:
        """`data` (`FRAME_TEXT` then whole lines, the contents of several small files) read
        as this file's one block is, when `alone(inferred, model_types)` accepts the block
        as Arrow infers it (each file would infer the same types); else None. Raises what
        reading the block as one file would (`json_group` then reads file by file)."""
        cut = len(data)
        self._check_utf8(data, cut, 1, 0)
        if too_deep(data, first_only=True, start=FRAME, end=cut):
            return None  # before Arrow sees it: deep nesting crashes its parser
        infer = functools.partial(parse_json_lines, options=pajson.ParseOptions(), fixed=False)
        try:
            inferred, _ = infer(memoryview(data), framed=True)
        except pa.ArrowException:
            return None
        if not inferred.num_columns:
            return None
        if not alone(inferred, model_column_types(self.options, inferred.schema, self.path)):
            return None
        first = (inferred.schema, inferred)
        table, _, bad = self._parse_lines(data, cut, 1, 0, 0, None, 0, first)
        return None if bad else table

    def _check_utf8(self, data: bytes, cut: int, line: int, offset: int) -> None:
        """DataError if the block `data[FRAME:cut]` (the first on `line`, at byte
        `offset`) is not UTF-8. Not skipped: such a file is the wrong file, not a bad line."""
        try:
            # ASCII (the usual case) is checked ~10x faster than decoding, in place.
            if not data.isascii():
                data[FRAME:cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = line + data.count(b"\n", FRAME, FRAME + exc.start)
            raise DataError(
                f"{self.path}: line {bad_line} (byte {offset + exc.start}): invalid UTF-8"
            ) from exc

    @staticmethod
    def _parse_whole(
        data: bytes,
        cut: int,
        line: int,
        record: int,
        schema_lines: int,
        parse: LineParser,
        parsed: pa.Table | None,
        model: ModelColumns | None,
    ) -> _Parsed | None:
        """The block (`parsed` already, or parsed now) as Arrow parses it whole, with the
        `model`'s columns converted; with the model's values written another way patched
        first if that is what fails. None when a line still fails (the lines are then
        looked at one by one)."""
        try:
            if parsed is not None:
                table, rows = parsed, parsed.num_rows
            else:
                table, rows = parse(memoryview(data)[:cut], framed=True)
        except pa.ArrowException:
            pass
        else:
            if model is not None:
                return model.finish(table, data, cut, line, record, schema_lines)
            return table, rows, []
        patch = model.patched_block(data, cut) if model is not None else None
        if model is None or patch is None:
            return None
        try:
            table, _ = parse(memoryview(patch[0]), framed=True)
        except pa.ArrowException:
            return None  # another problem: each line is decoded
        return model.finish(table, data, cut, line, record, schema_lines, patch[2], patch[1])
