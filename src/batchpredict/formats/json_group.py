"""Many small JSON lines files parsed by one Arrow call, then split back file by file.

Arrow's JSON reader has a fixed cost per call (a thread started, buffers set up) several
times the work of a 100-line file, so a dump of thousands of small files spent most of its
reading there. Files the reader would parse whole, as one block, are concatenated and
parsed together instead, and the table is cut back at each file's lines.

Each file's table must be the one the file read alone gives, so only plain files are
grouped: every line a JSON object (none blank), every field present and not null in every
row, the same fields in the same order in every file, and columns that each file alone
infers the same type for: integers, booleans, text that Arrow would not read as a
timestamp, and floats (a column the model does not read holds a fraction in each file,
else a file of whole numbers would infer integers). Anything else, and any error, gives
None: the caller reads the files one by one, so that every error and rejected row names
its own file and row as always.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict.errors import BatchPredictError
from batchpredict.formats.base import ReadOptions
from batchpredict.formats.json_io import _SAMPLE_BYTES, JsonLinesReader
from batchpredict.formats.json_values import FRAME_TEXT

#: A line of nothing but blanks (not a record), after a line end.
_BLANK_LINE = re.compile(rb"\n[ \t\r]*(?:\n|\Z)")
#: Text that Arrow's inference may read as a timestamp (it starts like a date).
_DATE_LIKE = r"^\s*[+-]?[0-9]+-[0-9]"


@dataclass(frozen=True)
class SmallFile:
    """A small JSON lines file read whole: its path, bytes and number of lines."""

    path: str
    data: bytes
    lines: int


def small_file(path: str, data: bytes, options: ReadOptions) -> SmallFile | None:
    """`data`, the whole of `path`, if it may be grouped: the reader would parse it as one
    block (smaller than the reader's first read and than `--max_record_bytes`), it starts
    with an object and no line is blank; else None."""
    if len(data) >= _SAMPLE_BYTES or len(data) > options.max_record_bytes:
        return None
    if not data.startswith(b"{"):  # a BOM, blanks first, a JSON array: read alone
        return None
    body = data[:-1] if data.endswith(b"\n") else data
    if _BLANK_LINE.search(body):
        return None
    return SmallFile(path, body + b"\n", body.count(b"\n") + 1)


def read_group(files: Sequence[SmallFile], options: ReadOptions) -> list[pa.Table] | None:
    """Each file's table as its reader would yield it (one block, read with `options`),
    from one parse of them all; None when that cannot be sure to be the same."""
    if len(files) < 2:
        return None
    strict = dataclasses.replace(options, on_bad_record=None)  # a bad line: read alone
    reader = JsonLinesReader(files[0].path, strict)
    data = b"".join([FRAME_TEXT, *(f.data for f in files)])
    counts = [f.lines for f in files]
    try:
        table = reader.parse_group(data, lambda t, model: _as_alone(t, model, files, counts))
    except (BatchPredictError, pa.ArrowException, ValueError):
        return None
    if table is None or table.num_rows != sum(counts):
        return None
    starts = np.cumsum([0, *counts[:-1]]).tolist()
    return [table.slice(start, count) for start, count in zip(starts, counts, strict=True)]


def _as_alone(
    table: pa.Table,
    model_types: dict[str, pa.DataType],
    files: Sequence[SmallFile],
    counts: list[int],
) -> bool:
    """Whether every file's rows of `table` (the group as Arrow infers it) infer the same
    columns and types read alone; `model_types` are the columns the model reads as numbers
    (parsed as such whatever JSON numbers they hold)."""
    if table.num_rows != sum(counts):  # a line holding no record, or two
        return False
    if not all(_first_keys(f.data) == table.column_names for f in files):
        return False
    starts = np.cumsum([0, *counts[:-1]]).tolist()
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if column.null_count:
            return False
        if pa.types.is_string(kind):
            if pc.any(pc.match_substring_regex(column, _DATE_LIKE)).as_py():
                return False
        elif pa.types.is_float64(kind):
            if name not in model_types and not _fraction_in_each(column, starts, counts):
                return False
        elif not (pa.types.is_int64(kind) or pa.types.is_boolean(kind)):
            return False
    return True


def _first_keys(data: bytes) -> list[str] | None:
    """The keys of a file's first line, in order (None if it is not an object)."""
    try:
        value = json.loads(data[: data.find(b"\n")])
    except ValueError:
        return None
    return list(value) if isinstance(value, dict) else None


def _fraction_in_each(column: pa.ChunkedArray, starts: list[int], counts: list[int]) -> bool:
    """Whether every file's values hold a number that is not whole (so that the file alone
    infers floats, not integers)."""
    values = column.to_numpy()
    fractional = np.isfinite(values) & (values != np.floor(values))
    pairs = zip(starts, counts, strict=True)
    return all(fractional[start : start + count].any() for start, count in pairs)
