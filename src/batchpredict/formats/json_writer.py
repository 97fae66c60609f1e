"""Writing JSON lines: one object per line; NaN and infinities become null (valid JSON).

Plain columns (numbers, booleans, text, and lists and structs of them) are written by
polars' encoder; others row by row with the standard library, floats first made JSON-safe.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import itertools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict.errors import DataError, error_text
from batchpredict.formats.base import Writer


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


def encode_together(batches: Sequence[pa.RecordBatch]) -> list[bytes] | None:
    """The JSON lines of each batch exactly as `JsonLinesWriter` writes them, from one
    encoding of them all (polars' fixed cost per call is most of a small output's); None
    unless they share one schema that polars writes (`_polars_plain`)."""
    if not batches:
        return None
    schema = batches[0].schema
    if not all(_polars_plain(field.type) for field in schema):
        return None
    if not all(batch.schema.equals(schema) for batch in batches[1:]):
        return None
    import polars as pl

    frame = pl.from_arrow(pa.Table.from_batches(batches, schema))
    assert isinstance(frame, pl.DataFrame)
    text = frame.write_ndjson().encode()
    # One line per row (line ends inside strings are escaped): cut after each batch's last.
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n")) + 1
    if len(ends) != frame.height:
        return None
    last_rows = np.cumsum([batch.num_rows for batch in batches])
    cuts = [0, *(int(ends[row - 1]) if row else 0 for row in last_rows)]
    return [text[start:stop] for start, stop in itertools.pairwise(cuts)]


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

    def write_lines(self, lines: bytes, rows: int) -> None:
        """Append `rows` rows already encoded as JSON lines (by `encode_together`)."""
        try:
            self._out.write(lines)
        except OSError as exc:
            raise self._write_error(exc) from exc
        self.rows_written += rows

    def _finish(self) -> None:
        pass
