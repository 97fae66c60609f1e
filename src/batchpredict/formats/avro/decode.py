"""Runs of container blocks decoded into Arrow tables: by polars (Rust, ~10x faster) when
every field of the writer schema has a type it decodes as fastavro does (proven by
tests/test_avro_equivalence.py), else by fastavro, record by record.

polars is lenient where fastavro fails (it ignores bytes left over in a block, reads past
one whose count is too large), so each block given to polars ends in a sentinel record of
random values that must come out intact, as a sync marker ends a block. When polars fails,
or the sentinel or a value's range says the run is not what the file declares, fastavro
decodes the run and gives the error (naming the record) or the values. Neither catches a
corrupt union branch index: polars reads any but the null's as the value's.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict.errors import DataError, ReadWriteError, error_text
from batchpredict.formats.avro.container import Block, Header, encode_long, reason
from batchpredict.formats.avro.schema import is_null, is_record


class FastavroDecoder:
    """Decodes records one by one with fastavro, then converts them to Arrow."""

    def __init__(self, path: str, header: Header, schema: pa.Schema) -> None:
        self.path, self._avro, self._schema = path, header.schema, schema

    def decode(self, blocks: list[Block], before: int) -> pa.Table | None:
        """The records of `blocks`, the first of which is record `before` + 1."""
        rows: list[Any] = []
        for block in blocks:
            data = io.BytesIO(block.data)
            try:
                for _ in range(block.count):
                    rows.append(fastavro.schemaless_reader(data, self._avro, None))
            except Exception as exc:
                # fastavro has no exception class of its own: an out-of-range union branch
                # or enum symbol is an IndexError, a short block EOFError, and so on.
                detail = "bad union or enum index" if isinstance(exc, IndexError) else ""
                raise ReadWriteError(
                    f"{self.path}: corrupt Avro record {before + len(rows) + 1}: "
                    f"{detail or reason(exc)}"
                ) from exc
            if left := len(block.data) - data.tell():
                last = before + len(rows)
                what = f"records {last - block.count + 1}-{last}" if block.count else "no records"
                raise ReadWriteError(
                    f"{self.path}: corrupt Avro block at byte {block.offset} ({what}): {left} "
                    "bytes left over after its last record"
                )
        return self._table(rows, before) if rows else None

    def _table(self, rows: list[Any], before: int) -> pa.Table:
        if not is_record(self._avro):  # the values, in column "value"
            rows = [{self._schema[0].name: row} for row in rows]
        try:
            return pa.Table.from_struct_array(pa.array(rows, type=pa.struct(self._schema)))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise DataError(
                f"{self.path}: records {before + 1}-{before + len(rows)} do not fit the Arrow "
                f"types derived from the Avro schema: {error_text(exc)}"
            ) from exc


# -- which fields polars decodes ---------------------------------------------------------
_EPOCH = dt.date(1970, 1, 1).toordinal()
#: Days fastavro turns into dates (inside years 1 to 9999), and the range of values it
#: turns into the same Arrow value, by Avro type: given to polars as `long`, they are
#: checked against it (an `int` holds 32 bits; polars would keep the low 32 of a longer one).
_DAYS = (dt.date(1, 1, 2).toordinal() - _EPOCH, dt.date(9999, 12, 30).toordinal() - _EPOCH)
_MILLIS = (_DAYS[0] * 86_400_000 + 1, _DAYS[1] * 86_400_000)
_MICROS = (_DAYS[0] * 86_400_000_000, _DAYS[1] * 86_400_000_000)
_LONG_BOUNDS: dict[tuple[Any, Any], tuple[int, int]] = {
    ("int", None): (-(2**31), 2**31 - 1),
    ("long", "timestamp-millis"): _MILLIS,
    ("long", "local-timestamp-millis"): _MILLIS,
    ("long", "timestamp-micros"): _MICROS,
    ("long", "local-timestamp-micros"): _MICROS,
}
_WIDTHS = {"float": 4, "double": 8}


@dataclass(frozen=True)
class _Field:
    """How polars is given a field's values (`polars`, an Avro schema): `width`, the bytes of
    each (None: they vary); `bounds`, the range of values given as `long`; `boolean`, as an
    `int`: a byte 0 or 1 reads as 0 or -1, another as another value (not as false)."""

    polars: Any
    width: int | None = None
    bounds: tuple[int, int] | None = None
    boolean: bool = False


def _polars_field(schema: Any, top: bool) -> _Field | None:
    """How polars decodes values of `schema` as fastavro does, or None when it cannot.
    `top`: a record's field, not an array's item (Arrow casts only int32 to date32)."""
    if isinstance(schema, list):
        nulls = [is_null(branch) for branch in schema]
        if len(schema) != 2 or sum(nulls) != 1:
            return None
        if (inner := _polars_field(schema[nulls.index(False)], top)) is None:
            return None
        union = ["null", inner.polars] if nulls[0] else [inner.polars, "null"]
        return _Field(union, bounds=inner.bounds, boolean=inner.boolean)
    kind, logical = (
        (schema["type"], schema.get("logicalType")) if isinstance(schema, dict) else (schema, None)
    )
    if kind == "array":
        items = _polars_field(schema["items"], top=False)
        if items is None or items.boolean:
            return None
        return _Field({"type": "array", "items": items.polars}, bounds=items.bounds)
    if (kind, logical) in _LONG_BOUNDS:
        return _Field("long", bounds=_LONG_BOUNDS[kind, logical])
    if (kind, logical) == ("int", "date") and top:
        return _Field("long", bounds=_DAYS)
    if (kind, logical) == ("boolean", None) and top:
        return _Field("int", bounds=(-1, 0), boolean=True)
    if kind in ("long", "float", "double", "string", "bytes") and logical is None:
        return _Field(kind, width=_WIDTHS.get(kind))
    return None  # enum, fixed, map, record, time-*, uuid, decimal, ...: fastavro's objects


def _sentinel(schema: Any) -> Any:
    """A value of `schema` (as given to polars) from random bits: some 31 to 64 of them."""
    if isinstance(schema, dict):
        return [_sentinel(schema["items"])]
    if isinstance(schema, list):
        return _sentinel(next(branch for branch in schema if branch != "null"))
    bits = os.urandom(8)
    if schema in _WIDTHS:  # finite: NaN is not equal to itself
        value = struct.unpack("<f" if schema == "float" else "<d", bits[: _WIDTHS[schema]])[0]
        return value if math.isfinite(value) else _sentinel(schema)
    if schema in ("string", "bytes"):
        return bits.hex() if schema == "string" else bits
    return int.from_bytes(bits[:4] if schema == "int" else bits, "little", signed=True)


class PolarsDecoder:
    """Decodes runs of blocks with polars, each block followed by the sentinel."""

    def __init__(
        self, fields: list[_Field], header: Header, schema: pa.Schema, slow: FastavroDecoder
    ) -> None:
        import polars  # imported when first needed: it takes a while

        self._polars, self._fields, self._schema, self._slow = polars, fields, schema, slow
        self._sync = header.sync
        fields_schema = [{"name": f"f{i}", "type": f.polars} for i, f in enumerate(fields)]
        avro = fastavro.parse_schema({"type": "record", "name": "r", "fields": fields_schema})
        self._sentinel = {f"f{i}": _sentinel(field.polars) for i, field in enumerate(fields)}
        out = io.BytesIO()
        fastavro.writer(out, avro, [], sync_marker=header.sync)
        self._header = out.getvalue()
        fastavro.schemaless_writer(out, avro, self._sentinel)
        # A varint read in the 0xff bytes after the sentinel fails (it would be longer than
        # 10 bytes) instead of reading past the end of the block.
        fixed = sum(field.width or 0 for field in fields)
        self._tail = out.getvalue()[len(self._header) :] + b"\xff" * (fixed + 16)
        #: Fewer bytes than this many per record cannot be the block's records: polars is
        #: not given them (it would allocate what the count says, and read past the end).
        self._min_record_size = sum(field.width or 1 for field in fields)

    def decode(self, blocks: list[Block], before: int) -> pa.Table | None:
        """The records of `blocks`, the first of which is record `before` + 1."""
        table = self._decoded(blocks) if blocks else None
        if table is None:
            return self._slow.decode(blocks, before)
        try:
            columns = [
                _convert(column.combine_chunks(), field, kind.type)
                for column, field, kind in zip(
                    table.columns, self._fields, self._schema, strict=True
                )
            ]
        except (pa.ArrowException, ValueError, TypeError):
            return self._slow.decode(blocks, before)
        return pa.Table.from_arrays(columns, schema=self._schema) if table.num_rows else None

    def _decoded(self, blocks: list[Block]) -> pa.Table | None:
        """polars' table of the records of `blocks` (without the sentinels), or None when
        it cannot be taken, or a sentinel did not come out intact."""
        parts = [self._header]
        for block in blocks:
            if block.count * self._min_record_size > len(block.data):
                return None
            size = encode_long(len(block.data) + len(self._tail))
            parts += [encode_long(block.count + 1), size, block.data, self._tail, self._sync]
        try:
            table = self._polars.read_avro(io.BytesIO(b"".join(parts))).to_arrow()
        except (Exception, self._polars.exceptions.PanicException):  # noqa: BLE001
            return None  # whatever polars raised, fastavro will say what is wrong
        ends = np.cumsum([block.count + 1 for block in blocks]) - 1
        if table.num_rows != ends[-1] + 1:
            return None
        sentinels = pa.Table.from_pylist([self._sentinel] * len(ends), schema=table.schema)
        if not table.take(ends).equals(sentinels):
            return None
        keep = np.ones(table.num_rows, dtype=bool)
        keep[ends] = False
        return table.filter(keep)


def _convert(array: pa.Array, field: _Field, kind: pa.DataType) -> pa.Array:
    """A column from polars as the Arrow type `kind`; ValueError out of the Avro range."""
    if field.bounds is not None:
        nested = pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
        values = pc.list_flatten(array, recursive=True) if nested else array
        low, high = pc.min_max(values).values()
        if low.is_valid and (low.as_py() < field.bounds[0] or high.as_py() > field.bounds[1]):
            raise ValueError("a value out of the range of its Avro type")
    if field.boolean:
        return pc.not_equal(array, 0)
    return array.cast(pa.int32()).cast(kind) if pa.types.is_date32(kind) else array.cast(kind)


def decoder_for(path: str, header: Header, schema: pa.Schema) -> FastavroDecoder | PolarsDecoder:
    """polars when every field of the writer schema allows it, else fastavro."""
    slow = FastavroDecoder(path, header, schema)
    if not is_record(header.schema) or not header.schema["fields"]:
        return slow
    fields = [_polars_field(field["type"], top=True) for field in header.schema["fields"]]
    if None in fields:
        return slow
    return PolarsDecoder([f for f in fields if f is not None], header, schema, slow)
