"""The model's numeric columns of a JSON input, parsed value by value where Arrow cannot.

With `ReadOptions.column_types`, `ModelColumns` asks which columns the model reads as
numbers, once the first block (or the first array elements) is known, and converts them:
a block Arrow parsed whole has its columns cast (`finish`); a block where some model values
are written another way (a string among numbers) is parsed whole once those lines are
patched (`patched_block`); any other block is decoded line by line (`parse_lines`). A value
that does not parse, and with `reject_nulls` a null, makes its record bad.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from batchpredict.errors import DataError
from batchpredict.formats.base import (
    KEPT_VALUE_CHARS,
    BadRecord,
    ReadOptions,
    model_column_types,
    not_readable,
    read_null_values,
)
from batchpredict.formats.json_skipping import first_bad_line_error, skip_bad_lines
from batchpredict.formats.json_suspects import Suspects
from batchpredict.formats.json_values import (
    BLANK,
    FRAME,
    FRAME_TEXT,
    MISSING,
    NULL,
    TOO_DEEP,
    LineParser,
    Problem,
    block_lines,
    decode_line,
    json_number,
    line_text,
    parse_json_lines,
)
from batchpredict.formats.text_values import parse_text_values


class ModelColumns:
    """The model's numeric columns of one JSON input (`path`, read with `options`), whose
    fields are first seen as `found`.

    `wanted` are the columns the model reads as numbers and the types they are yielded
    in; `schema` is the schema lines are parsed with: those columns as the type the model
    needs, unless the first block writes them as strings ("2.5") or booleans, which they
    are then parsed as (so that such files take Arrow's fast path too) and converted after.
    """

    def __init__(self, path: str, options: ReadOptions, found: pa.Schema) -> None:
        self._path = path
        self._options = options
        self._null_values = read_null_values(options)
        self.wanted: dict[str, pa.DataType] = model_column_types(options, found, path)
        fields = []
        for field in found:
            kind = self.wanted.get(field.name)
            if kind is not None and not (
                pa.types.is_string(field.type) or pa.types.is_boolean(field.type)
            ):
                field = field.with_type(kind)
            fields.append(field)
        self.schema = pa.schema(fields)
        #: Finds the model values written as another JSON kind than their column is parsed as.
        self._suspects = Suspects(self.schema, self.wanted)

    def finish(
        self,
        table: pa.Table,
        data: bytes,
        cut: int,
        line: int,
        record: int,
        schema_lines: int,
        patched: dict[int, dict[str, Any]] | None = None,
        lines_as_read: list[bytes] | None = None,
    ) -> tuple[pa.Table, int, list[BadRecord]]:
        """A block Arrow parsed whole (`data[FRAME:cut]`, the first on `line`, after
        `record` records; types from the first `schema_lines` lines): the model's columns
        converted to their types, with the values of the `patched` lines (by line index;
        Arrow read them as null, see `patched_block`, which gives the block's
        `lines_as_read` too) converted here.
        Values that do not parse, and with `reject_nulls` nulls, are bad records left out
        (without `on_bad_record`, the first raises DataError)."""
        lines: list[bytes] = []
        nonblank: list[int] = []
        if patched:
            lines, nonblank = block_lines(data, cut, lines_as_read)
            if len(nonblank) != table.num_rows:  # a line holding two JSON documents
                return self.parse_lines(lines, [], line, record, schema_lines)
        table, problems = self._converted(table, patched or {}, nonblank)
        if not problems:
            return table, table.num_rows, []
        if not patched:
            lines, nonblank = block_lines(data, cut)
            if len(nonblank) != table.num_rows:  # a line holding two JSON documents
                return self.parse_lines(lines, [], line, record, schema_lines)
        by_line: dict[int, Problem] = {}
        for row, (column_name, reason, value) in problems.items():
            if reason == NULL:
                decoded = decode_line(lines[nonblank[row]])
                missing = isinstance(decoded, dict) and column_name not in decoded
                reason = f"field {column_name!r} is missing" if missing else "value is null"
            by_line[nonblank[row]] = (column_name, reason, value)
        bad = self._report(by_line, lines, nonblank, line, record)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[sorted(problems)] = False
        return table.filter(pa.array(keep)), table.num_rows, bad

    def _converted(
        self, table: pa.Table, patched: dict[int, dict[str, Any]], nonblank: list[int]
    ) -> tuple[pa.Table, dict[int, Problem]]:
        """`table` with the model's columns in their types, the `patched` lines' values
        (by index among `nonblank` lines) put in; and the problems, by row."""
        rank = {index: row for row, index in enumerate(nonblank)}
        fixed = sorted(rank[index] for index in patched)
        values, found = self.values([patched[nonblank[row]] for row in fixed])
        problems = {fixed[position]: problem for position, problem in found.items()}
        mask = np.zeros(table.num_rows, dtype=bool)
        mask[fixed] = True
        for name, kind in self.wanted.items():
            index = table.schema.get_field_index(name)
            column = table.column(index)
            nulls = self._options.reject_nulls and column.null_count
            if column.type == kind and not fixed and not nulls:
                continue  # the usual case: numbers, parsed by Arrow
            converted = self._convert_column(column.combine_chunks(), name, kind, mask, problems)
            if fixed:
                converted = pc.replace_with_mask(converted, pa.array(mask), values[name])
            table = table.set_column(index, table.schema.field(index).with_type(kind), converted)
        return table, problems

    def _convert_column(
        self,
        column: pa.Array,
        name: str,
        kind: pa.DataType,
        skip: np.ndarray,
        problems: dict[int, Problem],
    ) -> pa.Array:
        """A model column as Arrow parsed it (as numbers, booleans or strings) in `kind`;
        the first problem of each row not in the `skip` mask added to `problems`: a string
        that does not parse, and with `reject_nulls` a null (`NULL`: why is found later)."""
        found: list[tuple[int, Problem]] = []
        if pa.types.is_string(column.type):
            converted, failures = parse_text_values(column, kind, self._null_values)
            for row, raw in failures.items():
                found.append((row, (name, not_readable(raw, kind), raw[:KEPT_VALUE_CHARS])))
            if self._options.reject_nulls:
                markers = pc.and_(converted.is_null(), column.is_valid())
                for row in np.flatnonzero(markers.to_numpy(zero_copy_only=False)).tolist():
                    found.append((row, (name, "value is null", column[row].as_py())))
        else:
            converted = column.cast(kind)
        if self._options.reject_nulls and column.null_count:
            for row in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
                found.append((row, (name, NULL, None)))
        for row, problem in found:
            if not skip[row]:
                problems.setdefault(row, problem)
        return converted

    def patched_block(
        self, data: bytes, cut: int
    ) -> tuple[bytes, list[bytes], dict[int, dict[str, Any]]] | None:
        """For a block Arrow could not parse whole with the model's columns as usually
        written: the block with the model values of the lines where one is written another
        way (a string among numbers: found by `Suspects`) set to null, the block's lines
        as they are, and the patched lines' model values, by line index. None when no such
        line is found or one does not decode (the block is then decoded line by line)."""
        found = self._suspects.find(data, FRAME, cut)
        if not found:
            return None
        view = np.frombuffer(data, dtype=np.uint8, count=cut - FRAME, offset=FRAME)
        ends = np.flatnonzero(view == ord("\n"))
        indexes = np.unique(np.searchsorted(ends, np.array(found) - FRAME)).tolist()
        lines = data[FRAME:cut].split(b"\n")
        patched: dict[int, dict[str, Any]] = {}
        originals: dict[int, bytes] = {}
        for index in indexes:
            decoded = decode_line(lines[index])
            if not isinstance(decoded, dict):
                return None
            patched[index] = {name: decoded[name] for name in self.wanted if name in decoded}
            originals[index] = lines[index]
            lines[index] = json.dumps({**decoded, **dict.fromkeys(patched[index])}).encode()
        block = FRAME_TEXT + b"\n".join(lines)
        for index, text in originals.items():
            lines[index] = text
        return block, lines, patched

    def parse_lines(
        self, lines: list[bytes], deep: list[int], line: int, record: int, schema_lines: int
    ) -> tuple[pa.Table, int, list[BadRecord]]:
        """A block of `lines` Arrow could not parse whole with `schema` (`deep` ones nested
        too deeply): each line is decoded by the standard library and the model's values
        are converted here, one by one; Arrow parses the other columns and reports the
        lines it cannot read. Bad lines and values are bad records (without
        `on_bad_record`, the first raises DataError)."""
        nonblank = [index for index, text in enumerate(lines) if text.strip(BLANK)]
        problems, objects = self._decoded(lines, nonblank, deep, schema_lines)
        order = list(objects)
        values, found = self.values([objects[index] for index in order])
        for position, problem in found.items():
            problems.setdefault(order[position], problem)
        rest = pa.schema([field for field in self.schema if field.name not in self.wanted])
        options = pajson.ParseOptions(explicit_schema=rest, unexpected_field_behavior="ignore")
        parse = functools.partial(parse_json_lines, options=options, fixed=True)
        table, rows, kept, bad_lines = self._parse_rest(
            lines, problems, parse, rest, line, schema_lines
        )
        if len(kept) != rows or not set(kept) <= objects.keys():
            raise DataError(
                f"{self._path}: lines {line}-{line + len(lines) - 1}: a line is read differently "
                "by Arrow and by Python's json module (two JSON documents on one line?)"
            )
        problems.update({index: (None, reason, None) for index, reason in bad_lines.items()})
        bad = self._report(problems, lines, nonblank, line, record)
        position_of = {index: position for position, index in enumerate(order)}
        positions = pa.array([position_of[index] for index in kept], pa.int64())
        arrays = [
            values[field.name].take(positions)
            if field.name in self.wanted
            else table.column(field.name)
            for field in self.schema
        ]
        fields = [field.with_type(self.wanted.get(field.name, field.type)) for field in self.schema]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), len(nonblank), bad

    def _decoded(
        self, lines: list[bytes], nonblank: list[int], deep: list[int], schema_lines: int
    ) -> tuple[dict[int, Problem], dict[int, dict[str, Any]]]:
        """The `nonblank` lines decoded by the standard library, by line index: what is
        wrong with those that are bad, and the objects of the others."""
        problems: dict[int, Problem] = dict.fromkeys(deep, (None, TOO_DEEP, None))
        objects: dict[int, dict[str, Any]] = {}
        for index in nonblank:
            decoded = None if index in problems else decode_line(lines[index])
            if isinstance(decoded, str):
                problems[index] = (None, decoded, None)
            elif decoded is not None:
                new = sorted(decoded.keys() - set(self.schema.names))
                if new:
                    reason = f"new fields {new} (columns and types come from the first "
                    problems[index] = (None, f"{reason}{schema_lines} lines)", None)
                else:
                    objects[index] = decoded
        return problems, objects

    def _parse_rest(
        self,
        lines: list[bytes],
        problems: dict[int, Problem],
        parse: LineParser,
        rest: pa.Schema,
        line: int,
        schema_lines: int,
    ) -> tuple[pa.Table, int, list[int], dict[int, str]]:
        """Arrow's parse of `lines` but those with `problems` (the columns of `rest`): the
        table (no columns if `rest` has none), its number of rows, the indexes of the lines
        they come from, and the lines Arrow could not read, with the reason. Without
        `on_bad_record`, raises DataError for the first bad line unless a problem comes
        earlier (which the caller then reports)."""
        if self._options.on_bad_record is None:
            first = min(problems, default=len(lines))
            head = lines[:first]
            try:
                table, rows = parse(b"\n".join(head) + b"\n")
            except pa.ArrowException:
                raise first_bad_line_error(
                    self._path, head, line, parse, rest, schema_lines
                ) from None
            if first < len(lines):
                return pa.table({}), 0, [], {}
            return table, rows, [i for i, text in enumerate(lines) if text.strip(BLANK)], {}
        keep = [index for index in range(len(lines)) if index not in problems]
        subset = [lines[index] for index in keep]
        rows_of = [keep[j] for j, text in enumerate(subset) if text.strip(BLANK)]
        try:
            table, rows = parse(b"\n".join(subset) + b"\n")
            bad: list[BadRecord] = []
        except pa.ArrowException:
            table, rows, bad = skip_bad_lines(subset, [], 0, parse, rest, schema_lines)
            rows -= len(bad)
        bad_lines = {rows_of[record.row - 1]: record.reason for record in bad}
        kept = [index for index in rows_of if index not in bad_lines]
        return table, rows, kept, bad_lines

    def _report(
        self,
        problems: dict[int, Problem],
        lines: list[bytes],
        nonblank: list[int],
        line: int,
        record: int,
    ) -> list[BadRecord]:
        """The bad records for `problems` (by line index) of a block whose first line is
        `line`, after `record` records; without `on_bad_record`, DataError for the first."""
        if not problems:
            return []
        rank = {index: position for position, index in enumerate(nonblank)}
        if self._options.on_bad_record is None:
            first = min(problems)
            column, reason, _ = problems[first]
            row, at = record + rank[first] + 1, line + first
            if column is None:
                raise DataError(f"{self._path}: line {at}: {reason}")
            where = f"row {row}" if row == at else f"row {row} (line {at})"
            raise DataError(f"{self._path}: {where}, column {column!r}: {reason}")
        return [
            BadRecord(record + rank[index] + 1, reason, line_text(lines[index]), column, value)
            for index, (column, reason, value) in sorted(problems.items())
        ]

    def values(
        self, objects: list[dict[str, Any]]
    ) -> tuple[dict[str, pa.Array], dict[int, Problem]]:
        """The model's columns from decoded records, in the types it needs, and by position
        the first problem of each record that has one: a value that does not parse (a
        string is parsed as a CSV field would be), and with `reject_nulls` a null."""
        arrays: dict[str, pa.Array] = {}
        problems: dict[int, Problem] = {}
        reject_nulls = self._options.reject_nulls
        for name, kind in self.wanted.items():
            values: list[Any] = [None] * len(objects)
            texts: list[str] = []
            text_at: list[int] = []
            for position, obj in enumerate(objects):
                value = obj.get(name, MISSING)
                if value is None or value is MISSING:
                    if reject_nulls:
                        why = "value is null" if value is None else f"field {name!r} is missing"
                        problems.setdefault(position, (name, why, None))
                elif isinstance(value, str):
                    texts.append(value)
                    text_at.append(position)
                else:
                    number = json_number(value, kind)
                    if number is None:
                        shown = json.dumps(value)[:KEPT_VALUE_CHARS]
                        problems.setdefault(position, (name, not_readable(shown, kind), shown))
                    values[position] = number
            if texts:
                self._text_values(name, kind, texts, text_at, values, problems)
            arrays[name] = pa.array(values, type=kind)
        return arrays, problems

    def _text_values(
        self,
        name: str,
        kind: pa.DataType,
        texts: list[str],
        text_at: list[int],
        values: list[Any],
        problems: dict[int, Problem],
    ) -> None:
        """The `texts` of column `name` (at positions `text_at`) parsed as a CSV field
        would be, into `values`; their problems added to `problems`."""
        strings = pa.array(texts, pa.string())
        parsed, failures = parse_text_values(strings, kind, self._null_values)
        numbers = parsed.to_pylist()
        for j, (position, number) in enumerate(zip(text_at, numbers, strict=True)):
            text = texts[j][:KEPT_VALUE_CHARS]
            if j in failures:
                problems.setdefault(position, (name, not_readable(texts[j], kind), text))
            elif number is None and self._options.reject_nulls:
                problems.setdefault(position, (name, "value is null", text))
            values[position] = number
