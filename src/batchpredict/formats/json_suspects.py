"""The first block's schema and the values written another way than their column's type.

With `ReadOptions.column_types`, the first block of JSON lines decides the types: a field
whose values differ in kind (a number here, a string there) takes its usual kind
(`first_block_schema`). Later, `Suspects` finds the lines whose model values are written
another way, so that only those are patched and the block still takes Arrow's fast path.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from batchpredict.formats.json_skipping import skip_bad_lines
from batchpredict.formats.json_values import (
    BLANK,
    FRAME,
    decode_line,
    parse_json_lines,
    unusual_as_null,
    usual_kinds,
)

#: Lines of a first block that does not parse whole whose kinds of values are counted.
_KIND_SAMPLE = 1000

#: How a JSON value that is not a number (or null), a string or a boolean starts.
_NOT_NUMBER = rb'["tf\[{]'
_NOT_STRING = rb"[-0-9tf\[{NI]"
_NOT_BOOLEAN = rb'[-0-9"\[{NI]'
_FRACTION = rb"-?[0-9]+[.eE]"
_SPACE = b" \t\r"


def first_block_schema(
    data: bytes, cut: int, deep: list[int]
) -> tuple[pa.Schema | None, pa.Table | None]:
    """The first block's schema (`data[FRAME:cut]`, `deep` its lines nested too deeply),
    for `ReadOptions.column_types`, as Arrow infers it (and the block as parsed, when Arrow
    could); when a field's values differ in kind (a number here, a string there), inferred
    from the lines with the values of the field's less common kinds read as null. None
    when no line of the block is good."""
    infer = functools.partial(parse_json_lines, options=pajson.ParseOptions(), fixed=False)
    if not deep:
        try:
            table, _ = infer(memoryview(data)[:cut], framed=True)
        except pa.ArrowException:
            pass
        else:
            return (table.schema, table) if table.num_columns else (None, None)
    lines = data[FRAME:cut].split(b"\n")
    # The usual kinds come from the first lines (decoding all of a 16 MiB block costs
    # seconds); Arrow infers the rest, leaving out lines that still conflict.
    objects: dict[int, dict[str, Any]] = {}
    for index, text in enumerate(lines):
        if len(objects) == _KIND_SAMPLE:
            break
        decoded = decode_line(text) if index not in deep and text.strip(BLANK) else None
        if isinstance(decoded, dict):
            objects[index] = decoded
    usual = usual_kinds(objects.values())
    neutral = list(lines)
    for index, value in objects.items():
        unusual = unusual_as_null(value, usual)
        if unusual:
            neutral[index] = json.dumps({**value, **unusual}).encode()
    table, _, _ = skip_bad_lines(neutral, deep, 0, infer, None, 0)
    return (table.schema if table.num_columns else None), None


class Suspects:
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
