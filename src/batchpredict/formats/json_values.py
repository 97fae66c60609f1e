"""What the JSON reader knows of one line or one value, apart from any read.

Arrow parses blocks of JSON lines (`parse_json_lines`, with the `{}` frame it needs first);
the standard library decodes single lines where Arrow's answer is not enough
(`decode_line`); the nesting depth is bounded before Arrow sees a line (`too_deep`); and
decoded values are sorted by JSON kind and converted to the model's numeric types.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from batchpredict.errors import error_text

#: Put before every block parsed: Arrow crashes when the first document is `null`.
FRAME_TEXT = b"{}\n"
FRAME = len(FRAME_TEXT)
#: Bytes that make a line blank (no record) besides the line end.
BLANK = b" \t\r"
#: Deepest nesting of objects and arrays accepted in a JSON line. Arrow's parser recurses
#: and crashes the process (segfault, pyarrow 26) somewhere past 10,000 levels; the
#: standard library, used for a JSON array, stops at about 1,000.
MAX_JSON_DEPTH = 1000
TOO_DEEP = f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
#: Characters of a bad line kept in its report.
MAX_BAD_TEXT = 1000
#: Arrow block size once the schema is known: several per block of lines, for threads.
_PARSE_BLOCK = 1 << 20

_COLUMN = re.compile(r"Column\(/?([^)]*)\)")
#: Arrow's row within the block it parsed, at the end of its error.
ROW_SUFFIX = re.compile(r" in row (\d+)$")

#: What is wrong with a value of a record: its column (None: the whole line), the reason,
#: the value as text (None for a null or a missing field).
Problem = tuple[str | None, str, str | None]
#: A reason to be found out: the value is null or its field is missing.
NULL = "<null or missing>"
MISSING = object()
_INT64 = (-(2**63), 2**63 - 1)


def _read_json(data: bytes | memoryview, block_size: int, options: pajson.ParseOptions) -> pa.Table:
    """Arrow's JSON reader over `data` (not copied) in blocks of `block_size` bytes; on
    threads only when there are several blocks (one block gains nothing from the pool, and
    pays for it: ~20% of a small file's parse)."""
    threads = len(data) > block_size
    return pajson.read_json(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pajson.ReadOptions(use_threads=threads, block_size=block_size),
        parse_options=options,
    )


def parse_json_lines(
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
    data = lines if framed else FRAME_TEXT + bytes(lines)
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


#: `parse_json_lines` with its options (and `fixed`) bound: how a block's lines are parsed.
LineParser = Callable[..., tuple[pa.Table, int]]


def first_failure(count: int, fails: Callable[[int], bool]) -> int:
    """The smallest n in 1..count with `fails(n)` (which must be monotonic), by bisection."""
    low, high = 1, count
    while low < high:
        middle = (low + high) // 2
        if fails(middle):
            high = middle
        else:
            low = middle + 1
    return low


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


def too_deep(
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


def schema_line(schema: pa.Schema) -> bytes | None:
    """One JSON line from which Arrow infers `schema`, or None if unsure of a type."""
    try:
        return json.dumps({field.name: _example(field.type) for field in schema}).encode()
    except TypeError:
        return None


def line_text(line: bytes) -> str:
    """A line's text for its report: decoded, without the line end, cut short."""
    return line.decode("utf-8", "replace").removesuffix("\r")[:MAX_BAD_TEXT]


def arrow_message(exc: BaseException) -> str:
    """Arrow's JSON error without its block-relative row, with columns named plainly."""
    text = ROW_SUFFIX.sub("", error_text(exc)).removeprefix("JSON parse error: ")
    return _COLUMN.sub(lambda m: f"column {m.group(1).replace('/', '.')!r}", text)


class _DuplicateField(ValueError):
    """A JSON object names a field twice (Arrow refuses it; Python keeps the last)."""


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateField(next(n for n, _ in pairs if n in seen or seen.add(n)))  # type: ignore[func-returns-value]
    return fields


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_fields)


def decode_line(text: bytes) -> dict[str, Any] | str | None:
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
        return TOO_DEEP
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def block_lines(
    data: bytes, cut: int, lines: list[bytes] | None = None
) -> tuple[list[bytes], list[int]]:
    """The `lines` of a block `data[FRAME:cut]` (split here if None), and the indexes of
    those not blank."""
    lines = data[FRAME:cut].split(b"\n") if lines is None else lines
    return lines, [index for index, text in enumerate(lines) if text.strip(BLANK)]


def as_schema(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
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


def kind_of(value: Any) -> str:
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


def usual_kinds(objects: Iterable[dict[str, Any]]) -> dict[str, str]:
    """For every field whose values (nulls aside) are of more than one kind, the most
    common kind."""
    counts: dict[str, collections.Counter[str]] = {}
    for obj in objects:
        for name, value in obj.items():
            counts.setdefault(name, collections.Counter())[kind_of(value)] += 1
    usual = {}
    for name, kinds in counts.items():
        kinds.pop("null", None)
        if len(kinds) > 1:
            usual[name] = kinds.most_common(1)[0][0]
    return usual


def unusual_as_null(obj: dict[str, Any], usual: dict[str, str]) -> dict[str, Any]:
    """The fields of `obj` whose value is of another kind than `usual` for it, as null
    (so that Arrow infers a field's type from its usual kind)."""
    return {
        name: None for name, kind in usual.items() if kind_of(obj.get(name)) not in ("null", kind)
    }


def json_number(value: Any, kind: pa.DataType) -> Any:
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
