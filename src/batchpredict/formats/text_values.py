"""Text values parsed as numbers (or any type) by Arrow's CSV converter.

CSV columns and the text values of JSON inputs are parsed the way Arrow's CSV reader parses
a column, so that nulls, whitespace and number formats agree wherever a value comes from.
Arrow names only the first value of a column that does not convert; `convert_text` finds
every one in few conversions, so that each becomes a bad row of its own.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from batchpredict.errors import error_text

#: Values that did not convert are read as null afterwards (`convert_text`), this many
#: per column at most: Arrow keeps null values in a trie of limited size.
_MAX_KNOWN_BAD = 64
_MAX_KNOWN_BAD_CHARS = 64


CONVERSION = re.compile(r"In CSV column #(\d+): Row #(\d+): (.*)", re.DOTALL)
INVALID_VALUE = re.compile(r"CSV conversion error to (\S+): invalid value (.*)", re.DOTALL)
_CONVERSION_TO = re.compile(r"CSV conversion error to (\S+): (.*)", re.DOTALL)
_INVALID_RAW = re.compile(r"invalid value '(.*)'$", re.DOTALL)


def value_error(detail: str) -> str | None:
    """The reason for the row in Arrow's conversion error `detail` (what follows "Row #n: "),
    or None if it is no error about one value (invalid UTF-8 is about the whole file)."""
    if "UTF8" in detail:
        return None
    if value := INVALID_VALUE.match(detail):
        return f"cannot read {value.group(2)} as {value.group(1)}"
    if other := _CONVERSION_TO.match(detail):
        return f"cannot read as {other.group(1)}: {other.group(2)}"
    return None


def quoted_lines(values: pa.Array) -> tuple[pa.Buffer, np.ndarray]:
    """`values` (text) as one-column CSV, every value quoted on its own line: the bytes and
    the offset of each line (one more offset than values)."""
    escaped = pc.replace_substring(values.fill_null(""), '"', '""')
    lines = pc.binary_join_element_wise('"', escaped, '"\n', "")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    return lines.buffers()[2], offsets[lines.offset : lines.offset + len(lines) + 1]


def convert_lines(
    text: pa.Buffer,
    offsets: np.ndarray,
    kind: pa.DataType,
    also_null: list[str],
    null_values: list[str],
) -> pa.Array:
    """The quoted lines of `text` between two offsets converted to `kind` by Arrow's CSV
    converter (the one that read the file, so nulls, whitespace and formats agree), with
    the values `null_values` and `also_null` read as null."""
    start, stop = int(offsets[0]), int(offsets[-1])
    if stop == start:
        return pa.array([], type=kind)
    convert = pacsv.ConvertOptions(column_types={"v": kind}, null_values=null_values)
    if also_null:
        convert.null_values = [*null_values, *also_null]
    table = pacsv.read_csv(
        pa.BufferReader(text.slice(start, stop - start)),
        read_options=pacsv.ReadOptions(
            column_names=["v"], use_threads=False, block_size=stop - start + 1
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=convert,
    )
    return table.column(0).combine_chunks()


def convert_text(
    values: pa.Array, kind: pa.DataType, known_bad: dict[str, str], null_values: list[str]
) -> tuple[pa.Array | None, dict[int, str]]:
    """`values` (a column read as text) converted to `kind` and {}, or None and the reason
    for every index whose value does not convert.

    `known_bad` maps values found not to convert (in this column, so far) to the reason,
    and gains those found here: they are read as null and then left out by value, so that a
    token repeated down the column costs one conversion error, not one each.
    """
    text, offsets = quoted_lines(values)
    # Arrow names the first value that fails only: after one, convert windows that grow
    # while they convert and shrink when they fail, so that bad values cost a conversion
    # or two each plus a few passes over the column.
    failures: dict[int, str] = {}
    array = None
    low, width = 0, len(values)
    while low < len(values):
        high = min(len(values), low + width)
        try:
            window = offsets[low : high + 1]
            array = convert_lines(text, window, kind, list(known_bad), null_values)
        except pa.ArrowInvalid as exc:
            match = CONVERSION.match(error_text(exc))
            reason = value_error(match.group(3)) if match else None
            if match is None or reason is None:
                raise
            index = low + int(match.group(2)) - 1
            failures[index] = reason
            raw = values[index].as_py() or ""
            if len(known_bad) < _MAX_KNOWN_BAD and 0 < len(raw) <= _MAX_KNOWN_BAD_CHARS:
                known_bad[raw] = reason
            low, width = index + 1, max(width // 2, 1)
        else:
            low, width = high, width * 2
    if known_bad:
        matches = pc.is_in(values, value_set=pa.array(list(known_bad), pa.string()))
        for found in np.flatnonzero(matches.fill_null(False).to_numpy(False)).tolist():
            failures.setdefault(found, known_bad[values[found].as_py()])
    return (array, {}) if not failures else (None, failures)


def parse_text_values(
    values: pa.Array, kind: pa.DataType, null_values: list[str]
) -> tuple[pa.Array, dict[int, str]]:
    """Text `values` parsed as `kind` by Arrow's CSV converter (as a CSV column would be,
    with `null_values` read as null): the array, with nulls where a value did not parse,
    and the index of each of those mapped to the value."""
    array, failures = convert_text(values, kind, {}, null_values)
    if array is not None:
        return array, {}
    bad = dict.fromkeys(failures)
    keep = np.ones(len(values), dtype=bool)
    keep[list(bad)] = False
    cleared = pc.if_else(pa.array(keep), values, pa.scalar(None, values.type))
    text, offsets = quoted_lines(cleared)
    array = convert_lines(text, offsets, kind, [], null_values)
    return array, {index: values[index].as_py() or "" for index in bad}


def raw_value(exc: BaseException) -> str | None:
    """The whole value (as read) in Arrow's error about a value that does not convert."""
    match = CONVERSION.match(str(exc))
    value = _INVALID_RAW.search(match.group(3)) if match else None
    return value.group(1) if value else None


def unconvertible_column(exc: BaseException, names: list[str]) -> str | None:
    """The column of Arrow's error about a value that does not convert, or None for other
    errors (invalid UTF-8 included: reading the column as text would fail the same way)."""
    match = CONVERSION.match(error_text(exc))
    if match is None or value_error(match.group(3)) is None:
        return None
    column = int(match.group(1))
    return names[column] if column < len(names) else None
