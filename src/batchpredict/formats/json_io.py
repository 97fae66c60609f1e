"""JSON lines through pyarrow's JSON parser; a `[ ... ]` array of objects streamed in Python.

JSON lines are cut into blocks of whole lines of about `chunk_size` rows, each parsed by
Arrow with the schema inferred from the first block, so every batch has the same schema
and an error names its line. A file that starts with `[` holds one array of objects; it is
decoded element by element with the standard library, never loaded whole.

With `ReadOptions.on_bad_record` set (`--on_error skip`), a JSON line that cannot be read
(malformed, not an object, nested too deeply, or not fitting the schema) is reported and
left out, and the block is parsed without it. Elements of a JSON array are not skipped.
"""

from __future__ import annotations

import base64
import codecs
import collections
import contextlib
import datetime
import decimal
import functools
import itertools
import json
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from batchpredict.errors import DataError, InputMissingError, ReadWriteError, error_text
from batchpredict.formats.base import (
    KEPT_VALUE_CHARS,
    BadRecord,
    PrefixedStream,
    Reader,
    ReadOptions,
    Writer,
    model_column_types,
    not_readable,
    read_null_values,
)
from batchpredict.formats.text_values import parse_text_values

_SAMPLE_BYTES = 1 << 20
_MIN_BLOCK = 64 << 10
#: Blocks above glibc's largest mmap threshold (32 MiB) are fresh pages every time: reading
#: 1M lines took 6.5 s with 38 MiB blocks, 5.2 s with 16 MiB.
_MAX_BLOCK = 16 << 20
#: Arrow block size once the schema is known: several per block of lines, for threads.
_PARSE_BLOCK = 1 << 20
#: Put before every block parsed: Arrow crashes when the first document is `null`.
_FRAME_TEXT = b"{}\n"
_FRAME = len(_FRAME_TEXT)
_WHITESPACE = " \t\r\n"
#: Deepest nesting of objects and arrays accepted in a JSON line. Arrow's parser recurses
#: and crashes the process (segfault, pyarrow 26) somewhere past 10,000 levels; the
#: standard library, used for a JSON array, stops at about 1,000.
MAX_JSON_DEPTH = 1000
#: Characters of a bad line kept in its report.
_MAX_BAD_TEXT = 1000

_COLUMN = re.compile(r"Column\(/?([^)]*)\)")
_ROW_SUFFIX = re.compile(r" in row (\d+)$")


def _read_json(data: bytes | memoryview, block_size: int, options: pajson.ParseOptions) -> pa.Table:
    """Arrow's JSON reader over `data` (not copied) in blocks of `block_size` bytes."""
    return pajson.read_json(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pajson.ReadOptions(use_threads=True, block_size=block_size),
        parse_options=options,
    )


def _first_failure(count: int, fails: Callable[[int], bool]) -> int:
    """The smallest n in 1..count with `fails(n)` (which must be monotonic), by bisection."""
    low, high = 1, count
    while low < high:
        middle = (low + high) // 2
        if fails(middle):
            high = middle
        else:
            low = middle + 1
    return low


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


def _max_depth(line: bytes) -> int:
    """The deepest nesting of objects and arrays in one JSON text (brackets in strings
    do not count; valid for well-formed strings, which cannot hold a raw newline)."""
    # A leading space: every quote then has a byte before it.
    data = np.frombuffer(b" " + line, dtype=np.uint8)
    quotes = np.flatnonzero(data == ord('"'))
    if b"\\" in line and len(quotes):
        # A quote preceded by an odd run of backslashes is escaped.
        positions = np.arange(len(data))
        last_other = np.maximum.accumulate(np.where(data == ord("\\"), 0, positions))
        run = quotes - 1 - last_other[quotes - 1]
        quotes = quotes[run % 2 == 0]
    step = (data == ord("{")).astype(np.int32) + (data == ord("["))
    step -= (data == ord("}")).astype(np.int32) + (data == ord("]"))
    # Inside a string: from an opening quote up to its closing quote.
    toggles = np.zeros(len(data) + 1, dtype=np.int32)
    toggles[quotes + 1] = 1
    step[np.cumsum(toggles[:-1]) % 2 == 1] = 0
    return int(np.cumsum(step).max(initial=0))


def _too_deep(
    data: bytes,
    limit: int = MAX_JSON_DEPTH,
    first_only: bool = True,
    start: int = 0,
    end: int | None = None,
) -> list[int]:
    """The 0-based indexes of the lines of `data[start:end]` nested deeper than `limit`
    (only the first if `first_only`).

    A line with more than `limit` brackets is longer than `limit` bytes: only lines that
    long are counted and only those with more than `limit` opening brackets (an upper
    bound of their depth) are measured; ordinary data costs one scan for line ends.
    """
    end = len(data) if end is None else end
    view = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
    ends = np.append(np.flatnonzero(view == ord("\n")), len(view)) + start
    starts = np.concatenate(([start], ends[:-1] + 1))
    found: list[int] = []
    for index in np.flatnonzero(ends - starts > limit).tolist():
        first, last = int(starts[index]), int(ends[index])
        if data.count(b"{", first, last) + data.count(b"[", first, last) <= limit:
            continue
        if _max_depth(data[first:last]) > limit:
            found.append(index)
            if first_only:
                break
    return found


def _example(kind: pa.DataType) -> Any:
    """A JSON value from which Arrow's JSON reader infers `kind`; TypeError if unsure."""
    if pa.types.is_null(kind):
        return None
    if pa.types.is_boolean(kind):
        return True
    if pa.types.is_integer(kind):
        return 0
    if pa.types.is_floating(kind):
        return 0.5
    if pa.types.is_string(kind):
        return "s"
    if pa.types.is_timestamp(kind) and kind.unit == "s" and kind.tz is None:
        return "1970-01-01 00:00:00"
    if pa.types.is_list(kind):
        return [_example(kind.value_type)]
    if pa.types.is_struct(kind):
        return {kind.field(i).name: _example(kind.field(i).type) for i in range(kind.num_fields)}
    raise TypeError(f"no example for {kind}")


def _schema_line(schema: pa.Schema) -> bytes | None:
    """One JSON line from which Arrow infers `schema`, or None if unsure of a type."""
    try:
        return json.dumps({field.name: _example(field.type) for field in schema}).encode()
    except TypeError:
        return None


def _line_text(line: bytes) -> str:
    """A line's text for its report: decoded, without the line end, cut short."""
    return line.decode("utf-8", "replace").removesuffix("\r")[:_MAX_BAD_TEXT]


def _arrow_message(exc: BaseException) -> str:
    """Arrow's JSON error without its block-relative row, with columns named plainly."""
    text = _ROW_SUFFIX.sub("", error_text(exc)).removeprefix("JSON parse error: ")
    return _COLUMN.sub(lambda m: f"column {m.group(1).replace('/', '.')!r}", text)


#: Lines of a first block that does not parse whole whose kinds of values are counted.
_KIND_SAMPLE = 1000
#: Bytes that make a line blank (no record) besides the line end.
_BLANK = b" \t\r"
#: What is wrong with a value of a record: its column (None: the whole line), the reason,
#: the value as text (None for a null or a missing field).
_Problem = tuple[str | None, str, str | None]
#: A reason to be found out: the value is null or its field is missing.
_NULL = "<null or missing>"
_MISSING = object()
_INT64 = (-(2**63), 2**63 - 1)


class _DuplicateField(ValueError):
    """A JSON object names a field twice (Arrow refuses it; Python keeps the last)."""


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateField(next(n for n, _ in pairs if n in seen or seen.add(n)))  # type: ignore[func-returns-value]
    return fields


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_fields)


def _decode_line(text: bytes) -> dict[str, Any] | str | None:
    """One JSON line decoded by the standard library: the object; or what is wrong with
    the line when Arrow would read it otherwise (two documents, a field named twice, too
    deep); or None when it is not an object or not JSON (Arrow says why)."""
    try:
        value = _DECODER.decode(text.decode("utf-8"))
    except _DuplicateField as exc:
        return f"field {exc.args[0]!r} appears twice"
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            return None
        try:
            _DECODER.decode(exc.doc[exc.pos :])
        except (ValueError, RecursionError):
            return None  # trailing text that is no JSON: Arrow says why
        return "more than one JSON value on the line"
    except RecursionError:
        return f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


#: How a JSON value that is not a number (or null), a string or a boolean starts.
_NOT_NUMBER = rb'["tf\[{]'
_NOT_STRING = rb"[-0-9tf\[{NI]"
_NOT_BOOLEAN = rb'[-0-9"\[{NI]'
_FRACTION = rb"-?[0-9]+[.eE]"
_SPACE = b" \t\r"


class _Suspects:
    """Finds where a model field's value starts as no value of the type its column is
    parsed as can: a string or list among numbers, a number among strings, a fraction for
    an integer input. It may find more (a nested field of the same name) but finds every
    value of a plainly written key; a key written with escapes makes Arrow fail again, and
    the block is then decoded line by line."""

    def __init__(self, schema: pa.Schema, wanted: dict[str, pa.DataType]) -> None:
        #: Float columns parsed as numbers (the usual case): any `:` before a string, a
        #: boolean, a list or an object is found (fast), then its key looked up.
        self._float_keys: set[bytes] = set()
        specific = []
        for name in wanted:
            kind = schema.field(name).type
            key = json.dumps(name, ensure_ascii=False).encode()
            if pa.types.is_floating(kind):
                self._float_keys.add(key)
                continue
            if pa.types.is_string(kind):
                starts = _NOT_STRING
            elif pa.types.is_boolean(kind):
                starts = _NOT_BOOLEAN
            else:
                starts = _NOT_NUMBER + b"|" + _FRACTION
            specific.append(re.escape(key) + rb"[ \t\r]*:[ \t\r]*(?:" + starts + b")")
        self._any = re.compile(rb":[ \t\r]*" + _NOT_NUMBER)
        self._specific = re.compile(b"|".join(specific)) if specific else None

    def find(self, data: bytes, start: int, end: int) -> list[int]:
        """Positions in `data[start:end]` of such values (or of their keys)."""
        found = []
        if self._float_keys:
            for match in self._any.finditer(data, start, end):
                colon = match.start()
                close = data.rfind(b'"', start, colon)
                opening = data.rfind(b'"', start, close)
                gap = data[close + 1 : colon]
                if data[opening : close + 1] in self._float_keys and not gap.strip(_SPACE):
                    found.append(colon)
        if self._specific is not None:
            found += [match.start() for match in self._specific.finditer(data, start, end)]
        return found


def _block_lines(
    data: bytes, cut: int, lines: list[bytes] | None = None
) -> tuple[list[bytes], list[int]]:
    """The `lines` of a block `data[_FRAME:cut]` (split here if None), and the indexes of
    those not blank."""
    lines = data[_FRAME:cut].split(b"\n") if lines is None else lines
    return lines, [index for index, text in enumerate(lines) if text.strip(_BLANK)]


def _as_schema(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """`table` (the first block, types inferred) in `schema` (the types its lines are then
    parsed with) if that changes no value: a column of nulls or of integers read as
    floats; else None."""
    for field in schema:
        have = table.schema.field(field.name).type
        widened = pa.types.is_integer(have) and pa.types.is_floating(field.type)
        if have != field.type and not (pa.types.is_null(have) or widened):
            return None
    try:
        return table.cast(schema)
    except pa.ArrowInvalid:
        return None


def _kind(value: Any) -> str:
    """The JSON kind of a decoded value: null, bool, number, string, list or object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _usual_kinds(objects: Iterable[dict[str, Any]]) -> dict[str, str]:
    """For every field whose values (nulls aside) are of more than one kind, the most
    common kind."""
    counts: dict[str, collections.Counter[str]] = {}
    for obj in objects:
        for name, value in obj.items():
            counts.setdefault(name, collections.Counter())[_kind(value)] += 1
    usual = {}
    for name, kinds in counts.items():
        kinds.pop("null", None)
        if len(kinds) > 1:
            usual[name] = kinds.most_common(1)[0][0]
    return usual


def _json_number(value: Any, kind: pa.DataType) -> Any:
    """A decoded JSON number or boolean as a value of `kind` (float64, int64 or bool), or
    None if it is not one: a fraction is no integer, only 0 and 1 are booleans."""
    if isinstance(value, bool):
        return value if pa.types.is_boolean(kind) else int(value)
    if isinstance(value, int):
        if pa.types.is_boolean(kind):
            return bool(value) if value in (0, 1) else None
        if pa.types.is_integer(kind):
            return value if _INT64[0] <= value <= _INT64[1] else None
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float):
        return value if pa.types.is_floating(kind) else None
    return None


class JsonLinesReader(Reader):
    """Reads one JSON object per line (or a single JSON array of objects)."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson", ".json")

    def __init__(self, path: str, options: ReadOptions) -> None:
        super().__init__(path, options)
        self._null_values = read_null_values(options)
        #: The columns the model reads as numbers and the types they are yielded in.
        self._wanted: dict[str, pa.DataType] = {}
        #: Once known: the schema lines are parsed with, the model's columns in the JSON
        #: type they are mostly written as (see `_plan_model_columns`).
        self._model_schema: pa.Schema | None = None
        #: Finds the model values written as another JSON kind than their column is parsed as.
        self._suspects: _Suspects | None = None

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
                    yield from self._iter_array(stream, head)
                else:
                    yield from self._iter_lines(stream, head.removeprefix(codecs.BOM_UTF8))
            except OSError as exc:
                raise ReadWriteError(f"{self.path}: cannot read: {error_text(exc)}") from exc

    # -- JSON lines ------------------------------------------------------------------
    def _iter_lines(self, stream: Any, pending: bytes) -> Iterator[pa.RecordBatch | BadRecord]:
        """Parse blocks of whole lines with Arrow."""
        lines_in_sample = max(pending.count(b"\n"), 1)
        size = int(len(pending) / lines_in_sample * self.options.chunk_size)
        # A block never holds more than the longest line allowed, plus its line end; nor
        # does `pending` but at the start, when it is not yet one unfinished line.
        limit = self.options.max_record_bytes
        size = min(max(size, _MIN_BLOCK), _MAX_BLOCK, limit + 1)
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
            # One copy, with the b"{}\n" that Arrow needs first (see `_parse_lines`);
            # the block is then read in place, data[_FRAME:cut].
            data = _FRAME_TEXT + pending + more
            cut = len(data) if at_end else data.rfind(b"\n") + 1
            pending = data[cut:]
            if cut <= _FRAME:  # one line longer than the block: read on
                pending = data[_FRAME:]
                continue
            table, records, bad = self._parse_lines(
                data, cut, line, record, offset, schema, schema_lines
            )
            yield from bad
            line += data.count(b"\n", _FRAME, cut)
            record += records
            offset += cut - _FRAME
            if schema is None and self._model_schema is not None:
                schema, schema_lines = self._model_schema, line - 1
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
        return BadRecord(record + 1, reason, _line_text(start[:_MAX_BAD_TEXT]))

    def _parse_lines(
        self,
        data: bytes,
        cut: int,
        line: int,
        record: int,
        offset: int,
        schema: pa.Schema | None,
        schema_lines: int,
    ) -> tuple[pa.Table, int, list[BadRecord]]:
        """One block of lines, `data[_FRAME:cut]` (the first on `line`, after `record`
        records) as a table with `schema`, inferred if None (else taken from the first
        `schema_lines` lines); the number of records (non-blank lines) in it; and with
        `on_bad_record` the bad lines left out (without, the first raises DataError).

        With `ReadOptions.column_types`, the first block also decides the model's numeric
        columns (`_plan_model_columns`), whose values are then parsed one by one.
        """
        try:
            # ASCII (the usual case) is checked ~10x faster than decoding, in place.
            if not data.isascii():
                data[_FRAME:cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            # Not skipped: a file that is not UTF-8 is the wrong file, not a bad line.
            bad_line = line + data.count(b"\n", _FRAME, _FRAME + exc.start)
            raise DataError(
                f"{self.path}: line {bad_line} (byte {offset + exc.start}): invalid UTF-8"
            ) from exc
        skipping = self.options.on_bad_record is not None
        deep = _too_deep(data, first_only=not skipping, start=_FRAME, end=cut)
        if deep and not skipping:
            raise DataError(
                f"{self.path}: line {line + deep[0]}: JSON nested too deeply "
                f"(more than {MAX_JSON_DEPTH} levels)"
            )
        parsed: pa.Table | None = None  # the block, when inferring the schema parsed it
        if schema is None and self.options.column_types is not None:
            found, inferred = self._first_schema(data, cut, deep)
            if found is not None:
                schema = self._plan_model_columns(found)
                schema_lines = line - 1 + data.count(b"\n", _FRAME, cut)
                parsed = _as_schema(inferred, schema) if inferred is not None else None
        if schema is None:
            options = pajson.ParseOptions()
        else:
            # New fields after the first block would change the schema mid-stream.
            options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        parse = functools.partial(self._parse, options=options, fixed=schema is not None)
        if not deep:
            try:
                if parsed is not None:
                    table, rows = parsed, parsed.num_rows
                else:
                    table, rows = parse(memoryview(data)[:cut], framed=True)
            except pa.ArrowException:
                pass
            else:
                if self._wanted:
                    return self._finish_model_columns(table, data, cut, line, record, schema_lines)
                return table, rows, []
            patch = self._patched_block(data, cut) if self._wanted else None
            if patch is not None:
                try:
                    table, _ = parse(memoryview(patch[0]), framed=True)
                except pa.ArrowException:
                    pass  # another problem: each line is decoded
                else:
                    return self._finish_model_columns(
                        table, data, cut, line, record, schema_lines, patch[2], patch[1]
                    )
        lines = data[_FRAME:cut].split(b"\n")
        if self._wanted:
            assert schema is not None
            return self._parse_model_lines(lines, deep, line, record, schema, schema_lines)
        if skipping:
            return self._skip_bad_lines(lines, deep, record, parse, schema, schema_lines)
        raise self._first_bad_error(lines, line, parse, schema, schema_lines)

    @staticmethod
    def _parse(
        lines: bytes | memoryview,
        options: pajson.ParseOptions,
        fixed: bool,
        threads: bool = True,
        framed: bool = False,
    ) -> tuple[pa.Table, int]:
        """Lines parsed by Arrow with `options` (`fixed`: an explicit schema), and the
        number of records; raises Arrow's error."""
        # Arrow crashes (segfault, pyarrow 26) when the first document is `null`: an
        # empty object first, sliced off after, avoids that (`framed`: already there).
        data = lines if framed else _FRAME_TEXT + bytes(lines)
        whole = max(len(data), 1 << 20)
        # With the schema fixed, Arrow's blocks are parsed on all cores; the first
        # block is one Arrow block, so that its inferred types are not merged.
        size = min(whole, _PARSE_BLOCK) if threads and fixed else whole
        try:
            table = _read_json(data, size, options)
        except pa.ArrowInvalid as exc:
            if size == whole or "straddling" not in str(exc):
                raise
            table = _read_json(data, whole, options)  # a line longer than a block
        # Rows without any field carry nothing (and Arrow cannot slice zero columns).
        rows = table.num_rows - 1
        return (table.slice(1) if table.num_columns else pa.table({})), rows

    def _first_bad_error(
        self,
        lines: list[bytes],
        line: int,
        parse: Callable[..., tuple[pa.Table, int]],
        schema: pa.Schema | None,
        schema_lines: int,
    ) -> DataError:
        """The DataError for the first of `lines` (the first on `line`) that fails."""

        # Arrow's row numbers count documents within a block; bisect for the line.
        def fails(count: int) -> bool:
            try:
                parse(b"\n".join(lines[:count]) + b"\n")
            except pa.ArrowException:
                return True
            return False

        bad = _first_failure(len(lines), fails)
        try:
            parse(b"\n".join(lines[:bad]) + b"\n")
        except pa.ArrowException as exc:
            message = self._line_message(exc, lines[bad - 1], schema, schema_lines)
            error = DataError(f"{self.path}: line {line + bad - 1}: {message}")
            error.__cause__ = exc
            return error
        raise AssertionError("no line of the block fails")  # pragma: no cover

    def _skip_bad_lines(
        self,
        lines: list[bytes],
        deep: list[int],
        record: int,
        parse: Callable[..., tuple[pa.Table, int]],
        schema: pa.Schema | None,
        schema_lines: int,
    ) -> tuple[pa.Table, int, list[BadRecord]]:
        """`_parse_lines` for a block that failed, with `on_bad_record`: find every bad
        line (`deep` ones are known), parse the block without them, and number them.

        The block is parsed in windows of lines after the last bad one, which grow while
        they parse; a window that fails is bisected for its first bad line. With a fixed
        schema, lines are independent. While the schema is inferred, a line is bad if it
        fails after the good lines before it: each window is parsed after one line that
        stands for their inferred schema, and the block without the bad lines is checked
        as a whole at the end (and bisected again in the rare case that still fails).
        """
        reasons: dict[int, str] = dict.fromkeys(
            deep, f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        )
        # Blank lines are no records, never bad: left out, a window's rows are its lines.
        blank = b" \t\r"
        candidates = [i for i, text in enumerate(lines) if text.strip(blank) and i not in reasons]

        def joined(indexes: Sequence[int]) -> bytes:
            return b"".join(lines[i] + b"\n" for i in indexes)

        def probe(context: bytes, indexes: Sequence[int]) -> tuple[pa.Schema | None, Any]:
            """(schema, None) if the lines parse after `context`, else (None, the error)."""
            try:
                table, _ = parse(context + joined(indexes), threads=False)
            except pa.ArrowException as exc:
                return None, exc
            return table.schema, None

        def first_bad(
            context: bytes, window: list[int], failure: Any
        ) -> tuple[int, Any, pa.Schema | None]:
            """For lines `window` that fail with `failure` after `context`: the position of
            the first bad line, its error, and the schema of the lines before it."""
            results: dict[int, tuple[pa.Schema | None, Any]] = {
                0: (None, None),
                len(window): (None, failure),
            }

            def fails(count: int) -> bool:
                if count not in results:
                    results[count] = probe(context, window[:count])
                return results[count][1] is not None

            # Arrow's row, where it gives one, is a guess (a line may hold two documents)
            # that two parses confirm; the row after the `{}` and context rows.
            row = _ROW_SUFFIX.search(str(failure).rstrip())
            guess = int(row.group(1)) - (2 if context else 1) if row else -1
            if 0 <= guess < len(window) and fails(guess + 1) and not fails(guess):
                count = guess + 1
            else:
                count = _first_failure(len(window), fails)
            fails(count - 1)
            return count - 1, results[count][1] or failure, results[count - 1][0]

        kept: list[int] = []
        context = b""
        low, width = 0, 1
        while low < len(candidates):
            window = candidates[low : low + width]
            found, failure = probe(context, window)
            if failure is None:
                kept += window
                low, width = low + len(window), width * 2
            else:
                position, failure, found = first_bad(context, window, failure)
                index = window[position]
                reasons[index] = self._line_message(failure, lines[index], schema, schema_lines)
                kept += window[:position]
                low, width = low + position + 1, max(width // 2, 1)
            if schema is None and found is not None:
                # Exactly the good lines so far, if no single line stands for them.
                context = _schema_line(found) or joined(kept).rstrip(b"\n")
                context += b"\n"
        while True:
            try:
                table, rows = parse(joined(kept))
                break
            except pa.ArrowException as exc:
                # A conflict with a good line that the windows' context missed.
                position, failure, _ = first_bad(b"", kept, exc)
                index = kept.pop(position)
                reasons[index] = self._line_message(failure, lines[index], schema, schema_lines)
        records = list(itertools.accumulate(bool(text.strip(blank)) for text in lines))
        bad = [
            BadRecord(record + records[index], reason, _line_text(lines[index]))
            for index, reason in sorted(reasons.items())
        ]
        return table, rows + len(bad), bad

    def _line_message(
        self, failure: BaseException, text: bytes, schema: pa.Schema | None, schema_lines: int
    ) -> str:
        """What is wrong with the line `text`, from Arrow's error `failure`."""
        message = _arrow_message(failure)
        if schema is not None:
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                pass  # a syntax error: Arrow's message says it all
            else:  # valid JSON that does not fit the schema
                if message == "unexpected field" and isinstance(value, dict):
                    message = f"new fields {sorted(set(value) - set(schema.names))}"
                message += f" (columns and types come from the first {schema_lines} lines)"
        return message

    # -- the model's numeric columns -------------------------------------------------
    def _first_schema(
        self, data: bytes, cut: int, deep: list[int]
    ) -> tuple[pa.Schema | None, pa.Table | None]:
        """The first block's schema, for `ReadOptions.column_types`, as Arrow infers it (and
        the block as parsed, when Arrow could); when a field's values differ in kind (a
        number here, a string there), inferred from the lines with the values of the field's
        less common kinds read as null. None when no line of the block is good."""
        infer = functools.partial(self._parse, options=pajson.ParseOptions(), fixed=False)
        if not deep:
            try:
                table, _ = infer(memoryview(data)[:cut], framed=True)
            except pa.ArrowException:
                pass
            else:
                return (table.schema, table) if table.num_columns else (None, None)
        lines = data[_FRAME:cut].split(b"\n")
        # The usual kinds come from the first lines (decoding all of a 16 MiB block costs
        # seconds); Arrow infers the rest, leaving out lines that still conflict.
        objects: dict[int, dict[str, Any]] = {}
        for index, text in enumerate(lines):
            if len(objects) == _KIND_SAMPLE:
                break
            decoded = _decode_line(text) if index not in deep and text.strip(_BLANK) else None
            if isinstance(decoded, dict):
                objects[index] = decoded
        usual = _usual_kinds(objects.values())
        neutral = list(lines)
        for index, value in objects.items():
            unusual = {
                name: None
                for name, kind in usual.items()
                if _kind(value.get(name)) not in ("null", kind)
            }
            if unusual:
                neutral[index] = json.dumps({**value, **unusual}).encode()
        table, _, _ = self._skip_bad_lines(neutral, deep, 0, infer, None, 0)
        return (table.schema if table.num_columns else None), None

    def _plan_model_columns(self, found: pa.Schema) -> pa.Schema:
        """Ask `ReadOptions.column_types` which columns the model reads as numbers, and
        return the schema lines are parsed with: those columns as the type the model needs,
        unless the first block writes them as strings ("2.5") or booleans, which they are
        then parsed as (so that such files take Arrow's fast path too) and converted after."""
        self._wanted = model_column_types(self.options, found, self.path)
        fields = []
        for field in found:
            kind = self._wanted.get(field.name)
            if kind is not None and not (
                pa.types.is_string(field.type) or pa.types.is_boolean(field.type)
            ):
                field = field.with_type(kind)
            fields.append(field)
        self._model_schema = pa.schema(fields)
        self._suspects = _Suspects(self._model_schema, self._wanted)
        return self._model_schema

    def _schema(self) -> pa.Schema:
        """The schema lines are parsed with, once known."""
        assert self._model_schema is not None
        return self._model_schema

    def _finish_model_columns(
        self,
        table: pa.Table,
        data: bytes,
        cut: int,
        line: int,
        record: int,
        schema_lines: int,
        patched: dict[int, dict[str, Any]] | None = None,
        block_lines: list[bytes] | None = None,
    ) -> tuple[pa.Table, int, list[BadRecord]]:
        """A block Arrow parsed whole (`data[_FRAME:cut]`, as in `_parse_lines`): the
        model's columns converted to their types, with the values of the `patched` lines
        (by line index; Arrow read them as null, see `_patched_block`, which gives the
        block's `block_lines` too) converted here.
        Values that do not parse, and with `reject_nulls` nulls, are bad records left out
        (without `on_bad_record`, the first raises DataError)."""
        lines: list[bytes] = []
        nonblank: list[int] = []
        if patched:
            lines, nonblank = _block_lines(data, cut, block_lines)
            if len(nonblank) != table.num_rows:  # a line holding two JSON documents
                return self._parse_model_lines(
                    lines, [], line, record, self._schema(), schema_lines
                )
        rank = {index: row for row, index in enumerate(nonblank)}
        fixed = sorted(rank[index] for index in patched or {})
        values, found = self._model_values([(patched or {})[nonblank[row]] for row in fixed])
        problems = {fixed[position]: problem for position, problem in found.items()}
        mask = np.zeros(table.num_rows, dtype=bool)
        mask[fixed] = True
        for name, kind in self._wanted.items():
            index = table.schema.get_field_index(name)
            column = table.column(index)
            nulls = self.options.reject_nulls and column.null_count
            if column.type == kind and not fixed and not nulls:
                continue  # the usual case: numbers, parsed by Arrow
            converted = self._convert_column(column.combine_chunks(), name, kind, mask, problems)
            if fixed:
                converted = pc.replace_with_mask(converted, pa.array(mask), values[name])
            table = table.set_column(index, table.schema.field(index).with_type(kind), converted)
        if not problems:
            return table, table.num_rows, []
        if not patched:
            lines, nonblank = _block_lines(data, cut)
            if len(nonblank) != table.num_rows:  # a line holding two JSON documents
                return self._parse_model_lines(
                    lines, [], line, record, self._schema(), schema_lines
                )
        by_line: dict[int, _Problem] = {}
        for row, (column_name, reason, value) in problems.items():
            if reason == _NULL:
                decoded = _decode_line(lines[nonblank[row]])
                missing = isinstance(decoded, dict) and column_name not in decoded
                reason = f"field {column_name!r} is missing" if missing else "value is null"
            by_line[nonblank[row]] = (column_name, reason, value)
        bad = self._report(by_line, lines, nonblank, line, record)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[sorted(problems)] = False
        return table.filter(pa.array(keep)), table.num_rows, bad

    def _convert_column(
        self,
        column: pa.Array,
        name: str,
        kind: pa.DataType,
        skip: np.ndarray,
        problems: dict[int, _Problem],
    ) -> pa.Array:
        """A model column as Arrow parsed it (as numbers, booleans or strings) in `kind`;
        the first problem of each row not in the `skip` mask added to `problems`: a string
        that does not parse, and with `reject_nulls` a null (`_NULL`: why is found later)."""
        found: list[tuple[int, _Problem]] = []
        if pa.types.is_string(column.type):
            converted, failures = parse_text_values(column, kind, self._null_values)
            for row, raw in failures.items():
                found.append((row, (name, not_readable(raw, kind), raw[:KEPT_VALUE_CHARS])))
            if self.options.reject_nulls:
                markers = pc.and_(converted.is_null(), column.is_valid())
                for row in np.flatnonzero(markers.to_numpy(zero_copy_only=False)).tolist():
                    found.append((row, (name, "value is null", column[row].as_py())))
        else:
            converted = column.cast(kind)
        if self.options.reject_nulls and column.null_count:
            for row in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
                found.append((row, (name, _NULL, None)))
        for row, problem in found:
            if not skip[row]:
                problems.setdefault(row, problem)
        return converted

    def _patched_block(
        self, data: bytes, cut: int
    ) -> tuple[bytes, list[bytes], dict[int, dict[str, Any]]] | None:
        """For a block Arrow could not parse whole with the model's columns as usually
        written: the block with the model values of the lines where one is written another
        way (a string among numbers: found by `_Suspects`) set to null, the block's lines
        as they are, and the patched lines' model values, by line index. None when no such
        line is found or one does not decode (the block is then decoded line by line)."""
        assert self._suspects is not None
        found = self._suspects.find(data, _FRAME, cut)
        if not found:
            return None
        view = np.frombuffer(data, dtype=np.uint8, count=cut - _FRAME, offset=_FRAME)
        ends = np.flatnonzero(view == ord("\n"))
        indexes = np.unique(np.searchsorted(ends, np.array(found) - _FRAME)).tolist()
        lines = data[_FRAME:cut].split(b"\n")
        patched: dict[int, dict[str, Any]] = {}
        originals: dict[int, bytes] = {}
        for index in indexes:
            decoded = _decode_line(lines[index])
            if not isinstance(decoded, dict):
                return None
            patched[index] = {name: decoded[name] for name in self._wanted if name in decoded}
            originals[index] = lines[index]
            lines[index] = json.dumps({**decoded, **dict.fromkeys(patched[index])}).encode()
        block = _FRAME_TEXT + b"\n".join(lines)
        for index, text in originals.items():
            lines[index] = text
        return block, lines, patched

    def _parse_model_lines(
        self,
        lines: list[bytes],
        deep: list[int],
        line: int,
        record: int,
        schema: pa.Schema,
        schema_lines: int,
    ) -> tuple[pa.Table, int, list[BadRecord]]:
        """A block of `lines` Arrow could not parse whole with `schema` (`_parse_lines`):
        each line is decoded by the standard library and the model's values are converted
        here, one by one; Arrow parses the other columns and reports the lines it cannot
        read. Bad lines and values are bad records (without `on_bad_record`, the first
        raises DataError)."""
        nonblank = [index for index, text in enumerate(lines) if text.strip(_BLANK)]
        too_deep = f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        problems: dict[int, _Problem] = dict.fromkeys(deep, (None, too_deep, None))
        objects: dict[int, dict[str, Any]] = {}
        for index in nonblank:
            decoded = None if index in problems else _decode_line(lines[index])
            if isinstance(decoded, str):
                problems[index] = (None, decoded, None)
            elif decoded is not None:
                new = sorted(decoded.keys() - set(schema.names))
                if new:
                    reason = f"new fields {new} (columns and types come from the first "
                    problems[index] = (None, f"{reason}{schema_lines} lines)", None)
                else:
                    objects[index] = decoded
        order = list(objects)
        values, found = self._model_values([objects[index] for index in order])
        for position, problem in found.items():
            problems.setdefault(order[position], problem)
        rest = pa.schema([field for field in schema if field.name not in self._wanted])
        options = pajson.ParseOptions(explicit_schema=rest, unexpected_field_behavior="ignore")
        parse = functools.partial(self._parse, options=options, fixed=True)
        table, rows, kept, bad_lines = self._parse_rest(
            lines, problems, parse, rest, line, schema_lines
        )
        if len(kept) != rows or not set(kept) <= objects.keys():
            raise DataError(
                f"{self.path}: lines {line}-{line + len(lines) - 1}: a line is read differently "
                "by Arrow and by Python's json module (two JSON documents on one line?)"
            )
        problems.update({index: (None, reason, None) for index, reason in bad_lines.items()})
        bad = self._report(problems, lines, nonblank, line, record)
        position_of = {index: position for position, index in enumerate(order)}
        positions = pa.array([position_of[index] for index in kept], pa.int64())
        columns = [
            values[field.name].take(positions) if field.name in self._wanted else None
            for field in schema
        ]
        arrays = [
            column if column is not None else table.column(field.name)
            for column, field in zip(columns, schema, strict=True)
        ]
        fields = [field.with_type(self._wanted.get(field.name, field.type)) for field in schema]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), len(nonblank), bad

    def _parse_rest(
        self,
        lines: list[bytes],
        problems: dict[int, _Problem],
        parse: Callable[..., tuple[pa.Table, int]],
        rest: pa.Schema,
        line: int,
        schema_lines: int,
    ) -> tuple[pa.Table, int, list[int], dict[int, str]]:
        """Arrow's parse of `lines` but those with `problems` (the columns of `rest`): the
        table (no columns if `rest` has none), its number of rows, the indexes of the lines
        they come from, and the lines Arrow could not read, with the reason. Without
        `on_bad_record`, raises DataError for the first bad line unless a problem comes
        earlier (which the caller then reports)."""
        if self.options.on_bad_record is None:
            first = min(problems, default=len(lines))
            head = lines[:first]
            try:
                table, rows = parse(b"\n".join(head) + b"\n")
            except pa.ArrowException:
                raise self._first_bad_error(head, line, parse, rest, schema_lines) from None
            if first < len(lines):
                return pa.table({}), 0, [], {}
            return table, rows, [i for i, text in enumerate(lines) if text.strip(_BLANK)], {}
        keep = [index for index in range(len(lines)) if index not in problems]
        subset = [lines[index] for index in keep]
        rows_of = [keep[j] for j, text in enumerate(subset) if text.strip(_BLANK)]
        try:
            table, rows = parse(b"\n".join(subset) + b"\n")
            bad: list[BadRecord] = []
        except pa.ArrowException:
            table, rows, bad = self._skip_bad_lines(subset, [], 0, parse, rest, schema_lines)
            rows -= len(bad)
        bad_lines = {rows_of[record.row - 1]: record.reason for record in bad}
        kept = [index for index in rows_of if index not in bad_lines]
        return table, rows, kept, bad_lines

    def _report(
        self,
        problems: dict[int, _Problem],
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
        if self.options.on_bad_record is None:
            first = min(problems)
            column, reason, _ = problems[first]
            row, at = record + rank[first] + 1, line + first
            if column is None:
                raise DataError(f"{self.path}: line {at}: {reason}")
            where = f"row {row}" if row == at else f"row {row} (line {at})"
            raise DataError(f"{self.path}: {where}, column {column!r}: {reason}")
        return [
            BadRecord(record + rank[index] + 1, reason, _line_text(lines[index]), column, value)
            for index, (column, reason, value) in sorted(problems.items())
        ]

    def _model_values(
        self, objects: list[dict[str, Any]]
    ) -> tuple[dict[str, pa.Array], dict[int, _Problem]]:
        """The model's columns from decoded records, in the types it needs, and by position
        the first problem of each record that has one: a value that does not parse (a
        string is parsed as a CSV field would be), and with `reject_nulls` a null."""
        arrays: dict[str, pa.Array] = {}
        problems: dict[int, _Problem] = {}
        reject_nulls = self.options.reject_nulls
        for name, kind in self._wanted.items():
            values: list[Any] = [None] * len(objects)
            texts: list[str] = []
            text_at: list[int] = []
            for position, obj in enumerate(objects):
                value = obj.get(name, _MISSING)
                if value is None or value is _MISSING:
                    if reject_nulls:
                        why = "value is null" if value is None else f"field {name!r} is missing"
                        problems.setdefault(position, (name, why, None))
                elif isinstance(value, str):
                    texts.append(value)
                    text_at.append(position)
                else:
                    number = _json_number(value, kind)
                    if number is None:
                        shown = json.dumps(value)[:KEPT_VALUE_CHARS]
                        problems.setdefault(position, (name, not_readable(shown, kind), shown))
                    values[position] = number
            if texts:
                strings = pa.array(texts, pa.string())
                parsed, failures = parse_text_values(strings, kind, self._null_values)
                numbers = parsed.to_pylist()
                for j, (position, number) in enumerate(zip(text_at, numbers, strict=True)):
                    text = texts[j][:KEPT_VALUE_CHARS]
                    if j in failures:
                        problems.setdefault(position, (name, not_readable(texts[j], kind), text))
                    elif number is None and reject_nulls:
                        problems.setdefault(position, (name, "value is null", text))
                    values[position] = number
            arrays[name] = pa.array(values, type=kind)
        return arrays, problems

    # -- JSON array ------------------------------------------------------------------
    def _iter_array(
        self, stream: pa.NativeFile, head: bytes
    ) -> Iterator[pa.RecordBatch | BadRecord]:
        """Decode `[ {...}, ... ]` element by element, in batches of `chunk_size` rows.

        A bad element raises DataError even with `on_bad_record`: after a syntax error
        there is no telling where the next element starts (a stray quote or bracket
        changes the meaning of all the text after it), so nothing could be skipped safely.
        A value of the model's numeric columns that does not parse is a bad record.
        """
        text = _TextBuffer(self.path, stream, head)
        parser = json.JSONDecoder(parse_constant=self._reject_constant)
        text.next_char()  # the "[" that chose this path
        text.position += 1
        rows: list[Any] = []
        first_lines: list[int] = []
        schema: pa.Schema | None = None
        record = 0
        char = text.next_char()
        while char != "]":
            first_lines.append(text.line_at(text.position))
            rows.append(self._decode_element(text, parser))
            if len(rows) == self.options.chunk_size:
                table = yield from self._array_chunk(rows, first_lines, schema, record)
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
            table = yield from self._array_chunk(rows, first_lines, schema, record)
            yield from table.to_batches()

    def _array_chunk(
        self,
        rows: list[dict[str, Any]],
        first_lines: list[int],
        schema: pa.Schema | None,
        record: int,
    ) -> Generator[BadRecord, None, pa.Table]:
        """Array elements as a table (`_rows_table`); the model's numeric columns are
        converted value by value, and the elements with a bad value are yielded as bad
        records and left out (without `on_bad_record`, the first raises DataError)."""
        if self.options.column_types is None:
            return self._rows_table(rows, first_lines, schema)
        if self._model_schema is None:
            self._plan_model_columns(self._rows_schema(rows, first_lines))
        assert self._model_schema is not None
        values, problems = self._model_values(rows)
        rest = pa.schema([f for f in self._model_schema if f.name not in self._wanted])
        if problems and self.options.on_bad_record is None:
            first = min(problems)
            self._rows_table(rows[:first], first_lines, rest, self._model_schema)
            column, reason, _ = problems[first]
            raise DataError(
                f"{self.path}: row {record + first + 1} (line {first_lines[first]}), "
                f"column {column!r}: {reason}"
            )
        table = self._rows_table(rows, first_lines, rest, self._model_schema)
        arrays = [
            values[f.name] if f.name in self._wanted else table.column(f.name)
            for f in self._model_schema
        ]
        fields = [f.with_type(self._wanted.get(f.name, f.type)) for f in self._model_schema]
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        if not problems:
            return table
        for index, (column, reason, value) in sorted(problems.items()):
            text = json.dumps(rows[index], ensure_ascii=False)[:_MAX_BAD_TEXT]
            yield BadRecord(record + index + 1, reason, text, column, value)
        keep = np.ones(len(rows), dtype=bool)
        keep[list(problems)] = False
        return table.filter(pa.array(keep))

    def _rows_schema(self, rows: list[dict[str, Any]], first_lines: list[int]) -> pa.Schema:
        """The schema of the first array elements, for `ReadOptions.column_types`; values
        of a field's less common kinds (a string among numbers) are read as null."""
        usual = _usual_kinds(rows)
        neutral = (
            [
                {
                    **row,
                    **{n: None for n, k in usual.items() if _kind(row.get(n)) not in ("null", k)},
                }
                for row in rows
            ]
            if usual
            else rows
        )
        return self._rows_table(neutral, first_lines, None).schema

    def _decode_element(self, text: _TextBuffer, parser: json.JSONDecoder) -> Any:
        """The JSON value at the current position, reading more input while it is cut off
        (up to `max_record_bytes` characters)."""
        limit = self.options.max_record_bytes
        while True:
            try:
                value, end = parser.raw_decode(text.text, text.position)
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
        return f"array element longer than --max_record_bytes ({self.options.max_record_bytes})"

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
                    f"{self.path}: line {first_lines[first]}: fields {sorted(unknown)} are "
                    f"not in the first {self.options.chunk_size} array elements"
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

        bad = _first_failure(len(rows), fails)
        hint = "" if schema is None else " (types come from the first array elements)"
        raise DataError(
            f"{self.path}: line {first_lines[bad - 1]}: {error_text(failure)}{hint}"
        ) from failure

    @staticmethod
    def _reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")


_NON_WHITESPACE = re.compile(r"[^ \t\r\n]")


class _TextBuffer:
    """Decoded text of a byte stream, read on demand, that tracks line numbers."""

    def __init__(self, path: str, stream: pa.NativeFile, head: bytes) -> None:
        self.path = path
        self._stream = stream
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
        size = max(_SAMPLE_BYTES, len(self.text))
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


# -- writing ---------------------------------------------------------------------------
def _has_float(kind: pa.DataType) -> bool:
    """Whether floats occur anywhere in `kind`."""
    if pa.types.is_floating(kind):
        return True
    if pa.types.is_map(kind):  # to_pylist gives dicts; NaN in them fails loudly
        return False
    return any(_has_float(kind.field(i).type) for i in range(kind.num_fields))


def _json_floats(array: pa.Array) -> pa.Array:
    """`array` with NaN and infinities as nulls and floats as float64, at any depth.

    float32 goes through its shortest decimal text, so that Python prints 0.1 and not
    0.10000000149011612; both are exact, but only one is what the model produced.
    """
    kind = array.type
    if pa.types.is_floating(kind):
        if pa.types.is_float16(kind):
            array = pc.cast(array, pa.float32())
        if not pa.types.is_float64(array.type):
            array = pc.cast(pc.cast(array, pa.string()), pa.float64())
        return pc.if_else(pc.is_finite(array), array, pa.scalar(None, pa.float64()))
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list_view(kind):
        return _json_floats(pc.cast(array, pa.list_(kind.value_field)))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = array.offsets
        start, stop = offsets[0].as_py(), offsets[-1].as_py()
        values = _json_floats(array.values.slice(start, stop - start))
        # Rebased offsets: Arrow cannot combine a null mask with sliced offsets.
        return type(array).from_arrays(pc.subtract(offsets, start), values, mask=array.is_null())
    if pa.types.is_struct(kind):
        return pa.StructArray.from_arrays(
            [_json_floats(child) for child in array.flatten()],
            fields=[kind.field(i) for i in range(kind.num_fields)],
            mask=array.is_null(),
        )
    return array


def _polars_plain(kind: pa.DataType) -> bool:
    """Whether polars writes `kind` as JSON the way the per-row path does: numbers,
    booleans, text, and lists and structs of them (not dates, binary, maps, decimals)."""
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return True
    if pa.types.is_float32(kind) or pa.types.is_float64(kind):
        return True
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _polars_plain(kind.value_type)
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_polars_plain(f.type) for f in kind)
    return False


def _json_default(value: Any) -> Any:
    """JSON for the Python values Arrow gives that json cannot encode itself."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "isoformat"):  # datetime, date, time
        return value.isoformat()
    return str(value)  # UUID and other scalar-like objects


class JsonLinesWriter(Writer):
    """Writes one JSON object per line; NaN and infinities become null (valid JSON)."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson", ".json")

    def _start(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        self._out = sink
        self._encode = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
        ).encode
        self._float_columns = [i for i, field in enumerate(schema) if _has_float(field.type)]
        # polars' encoder (Rust, ~30x the per-row path) writes exactly what the per-row
        # path does for these types: shortest float text, NaN and infinities as null.
        self._polars = all(_polars_plain(field.type) for field in schema)

    def _write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._polars:
            import polars as pl

            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            self._out.write(frame.write_ndjson().encode())
            return
        for i in self._float_columns:
            column = _json_floats(batch.column(i))
            batch = batch.set_column(i, batch.schema.field(i).with_type(column.type), column)
        try:
            text = "\n".join(map(self._encode, batch.to_pylist(maps_as_pydicts="lossy")))
        except ValueError as exc:  # NaN inside a map, which _json_floats leaves alone
            raise DataError(f"{self.path}: cannot write as JSON: {error_text(exc)}") from exc
        self._out.write((text + "\n").encode())

    def _finish(self) -> None:
        pass
