"""A JSON input holding one `[ ... ]` array of objects, decoded element by element.

The standard library decodes one element at a time from text read on demand
(`_TextBuffer`), so the array is never loaded whole; elements are gathered in chunks of
`chunk_size` rows. A bad element raises DataError even with `on_bad_record`: after a
syntax error there is no telling where the next element starts (a stray quote or bracket
changes the meaning of all the text after it), so nothing could be skipped safely. A value
of the model's numeric columns that does not parse is a bad record.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Generator
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict.errors import DataError, error_text
from batchpredict.formats.base import BadRecord, ReadOptions
from batchpredict.formats.json_model import ModelColumns
from batchpredict.formats.json_values import (
    MAX_BAD_TEXT,
    first_failure,
    unusual_as_null,
    usual_kinds,
)

_NON_WHITESPACE = re.compile(r"[^ \t\r\n]")


class ArrayRead:
    """One read of `[ {...}, ... ]` from `stream` (its first bytes `head` already read),
    in batches of `chunk_size` rows; more input is read `read_size` bytes at a time."""

    def __init__(
        self, path: str, options: ReadOptions, stream: pa.NativeFile, head: bytes, read_size: int
    ) -> None:
        self._path = path
        self._options = options
        self._text = _TextBuffer(path, stream, head, read_size)
        self._parser = json.JSONDecoder(parse_constant=_reject_constant)
        #: With `ReadOptions.column_types`, once the first elements are known.
        self._model: ModelColumns | None = None

    def iter_items(self) -> Generator[pa.RecordBatch | BadRecord, None, None]:
        """The batches, and with `on_bad_record` the bad elements before the batch after them."""
        text = self._text
        text.next_char()  # the "[" that chose this path
        text.position += 1
        rows: list[Any] = []
        first_lines: list[int] = []
        schema: pa.Schema | None = None
        record = 0
        char = text.next_char()
        while char != "]":
            first_lines.append(text.line_at(text.position))
            rows.append(self._decode_element())
            if len(rows) == self._options.chunk_size:
                table = yield from self._chunk(rows, first_lines, schema, record)
                schema = schema or table.schema
                yield from table.to_batches()
                record += len(rows)
                rows, first_lines = [], []
            char = text.next_char()
            if char == ",":
                text.position += 1
                char = text.next_char()
                if char == "]":
                    raise text.error("trailing comma before ']'")
            elif char != "]":
                raise text.error("expected ',' or ']' after an array element")
        text.position += 1
        if text.next_char():
            raise text.error("unexpected data after the JSON array")
        if rows:
            table = yield from self._chunk(rows, first_lines, schema, record)
            yield from table.to_batches()

    def _chunk(
        self,
        rows: list[dict[str, Any]],
        first_lines: list[int],
        schema: pa.Schema | None,
        record: int,
    ) -> Generator[BadRecord, None, pa.Table]:
        """Array elements as a table (`_rows_table`); the model's numeric columns are
        converted value by value, and the elements with a bad value are yielded as bad
        records and left out (without `on_bad_record`, the first raises DataError)."""
        if self._options.column_types is None:
            return self._rows_table(rows, first_lines, schema)
        if self._model is None:
            self._model = ModelColumns(
                self._path, self._options, self._rows_schema(rows, first_lines)
            )
        model = self._model
        values, problems = model.values(rows)
        rest = pa.schema([f for f in model.schema if f.name not in model.wanted])
        if problems and self._options.on_bad_record is None:
            first = min(problems)
            self._rows_table(rows[:first], first_lines, rest, model.schema)
            column, reason, _ = problems[first]
            raise DataError(
                f"{self._path}: row {record + first + 1} (line {first_lines[first]}), "
                f"column {column!r}: {reason}"
            )
        table = self._rows_table(rows, first_lines, rest, model.schema)
        arrays = [
            values[f.name] if f.name in model.wanted else table.column(f.name) for f in model.schema
        ]
        fields = [f.with_type(model.wanted.get(f.name, f.type)) for f in model.schema]
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        if not problems:
            return table
        for index, (column, reason, value) in sorted(problems.items()):
            text = json.dumps(rows[index], ensure_ascii=False)[:MAX_BAD_TEXT]
            yield BadRecord(record + index + 1, reason, text, column, value)
        keep = np.ones(len(rows), dtype=bool)
        keep[list(problems)] = False
        return table.filter(pa.array(keep))

    def _rows_schema(self, rows: list[dict[str, Any]], first_lines: list[int]) -> pa.Schema:
        """The schema of the first array elements, for `ReadOptions.column_types`; values
        of a field's less common kinds (a string among numbers) are read as null."""
        usual = usual_kinds(rows)
        neutral = [{**row, **unusual_as_null(row, usual)} for row in rows] if usual else rows
        return self._rows_table(neutral, first_lines, None).schema

    def _decode_element(self) -> Any:
        """The JSON value at the current position, reading more input while it is cut off
        (up to `max_record_bytes` characters)."""
        text = self._text
        limit = self._options.max_record_bytes
        while True:
            try:
                value, end = self._parser.raw_decode(text.text, text.position)
            except json.JSONDecodeError as exc:
                # The standard scanner fails near the end of the text (or on an open
                # string) when the value merely continues in input not read yet.
                cut_off = exc.pos >= len(text.text) - 8 or exc.msg.startswith("Unterminated")
                room = limit + 1 - (len(text.text) - text.position)
                if cut_off and room <= 0:
                    raise text.error(self._too_long_element()) from exc
                if cut_off and text.read_more(room):
                    continue
                raise text.error(exc.msg, exc.pos) from exc
            except RecursionError as exc:
                raise text.error("JSON nested too deeply") from exc
            except ValueError as exc:  # from _reject_constant
                raise text.error(str(exc)) from exc
            if not isinstance(value, dict):
                raise text.error("array element is not a JSON object")
            if end - text.position > limit:
                raise text.error(self._too_long_element())
            text.position = end
            return value

    def _too_long_element(self) -> str:
        return f"array element longer than --max_record_bytes ({self._options.max_record_bytes})"

    def _rows_table(
        self,
        rows: list[dict[str, Any]],
        first_lines: list[int],
        schema: pa.Schema | None,
        fields: pa.Schema | None = None,
    ) -> pa.Table:
        """Rows as a table: the first chunk infers the schema, later ones must fit it
        (and have no fields that `fields`, by default `schema`, lacks)."""
        # pa.array infers a struct from the keys of all rows (from_pylist uses the first).
        kind = None if schema is None else pa.struct(schema)
        fields = fields or schema

        def convert(count: int) -> pa.Table:
            array = pa.array(rows[:count], type=kind)
            return pa.Table.from_batches([pa.RecordBatch.from_struct_array(array)])

        if fields is not None:
            unknown = set().union(*rows).difference(fields.names)
            if unknown:
                first = next(i for i, row in enumerate(rows) if not unknown.isdisjoint(row))
                raise DataError(
                    f"{self._path}: line {first_lines[first]}: fields {sorted(unknown)} are "
                    f"not in the first {self._options.chunk_size} array elements"
                )
        try:
            return convert(len(rows))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            failure: Exception = exc

        def fails(count: int) -> bool:
            try:
                convert(count)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                return True
            return False

        bad = first_failure(len(rows), fails)
        hint = "" if schema is None else " (types come from the first array elements)"
        raise DataError(
            f"{self._path}: line {first_lines[bad - 1]}: {error_text(failure)}{hint}"
        ) from failure


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _TextBuffer:
    """Decoded text of a byte stream, read on demand, that tracks line numbers."""

    def __init__(self, path: str, stream: pa.NativeFile, head: bytes, read_size: int) -> None:
        self.path = path
        self._stream = stream
        self._read_size = read_size
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text = ""
        self.position = 0
        self.at_end = False
        self._line = 1  # the line of text[self._mark]
        self._mark = 0
        self._feed(head)

    def _feed(self, data: bytes) -> None:
        self.at_end = not data
        try:
            self.text += self._decoder.decode(data, final=self.at_end)
        except UnicodeDecodeError as exc:
            raise self.error("invalid UTF-8", len(self.text)) from exc

    def read_more(self, most: int | None = None) -> bool:
        """Drop the text before `position`, append more input (at most `most` bytes);
        False at the end."""
        if self.at_end:
            return False
        self.line_at(self.position)
        self.text = self.text[self.position :]
        self._mark -= self.position
        self.position = 0
        # At least double the buffer, so that a huge element is not re-parsed too often.
        size = max(self._read_size, len(self.text))
        self._feed(self._stream.read(size if most is None else max(min(size, most), 1)))
        return True

    def next_char(self) -> str:
        """Skip whitespace; the character at `position`, or "" at the end."""
        while True:
            match = _NON_WHITESPACE.search(self.text, self.position)
            if match:
                self.position = match.start()
                return self.text[self.position]
            self.position = len(self.text)
            if not self.read_more():
                return ""

    def line_at(self, position: int) -> int:
        """The 1-based line of `text[position]` (positions only move forward)."""
        if position >= self._mark:
            self._line += self.text.count("\n", self._mark, position)
            self._mark = position
            return self._line
        return self._line - self.text.count("\n", position, self._mark)

    def error(self, message: str, position: int | None = None) -> DataError:
        """A DataError naming the file and the line of `position` (default: current)."""
        line = self.line_at(self.position if position is None else position)
        return DataError(f"{self.path}: line {line}: {message}")
