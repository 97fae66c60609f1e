"""Decoding runs of container blocks into Arrow tables, by polars or by fastavro.

The choice is made once per file, from the writer schema: polars (Rust, about ten times
faster) when every field has a type it decodes as the Avro specification says, fastavro
(record by record, in Python objects) otherwise. tests/test_avro_equivalence.py proves on
the corpora and on generated schemas that both give the same tables for those types.

Both read the blocks as this package framed and decompressed them. polars is lenient where
fastavro fails (it ignores bytes left over in a block, reads past one whose count is too
large), so each polars block ends in a sentinel record of random values that must come
out intact, the way a sync marker ends a block. When polars fails, or that sentinel or a
value's range says the run is not what the file declares, fastavro decodes the run: it
gives the error (with the record's number) or the values the reader always gave. What
neither catches is a corrupt union branch index: polars reads any index other than the
null's as the value's, where fastavro would refuse one out of range.
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
from batchpredict.formats.avro.container import Block, Header, container_header, encode_long
from batchpredict.formats.avro.container import reason as _reason
from batchpredict.formats.avro.schema import is_null, is_record


class FastavroDecoder:
    """Decodes records one by one with fastavro, then converts them to Arrow."""

    def __init__(self, path: str, header: Header, schema: pa.Schema) -> None:
        self.path = path
        self._avro = header.schema
        self._schema = schema
        self._is_record = is_record(header.schema)

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
                    f"{detail or _reason(exc)}"
                ) from exc
            left = len(block.data) - data.tell()
            if left:
                last = before + len(rows)
                what = f"records {last - block.count + 1}-{last}" if block.count else "no records"
                raise ReadWriteError(
                    f"{self.path}: corrupt Avro block at byte {block.offset} ({what}): {left} "
                    "bytes left over after its last record"
                )
        return self._table(rows, before) if rows else None

    def _table(self, rows: list[Any], before: int) -> pa.Table:
        try:
            if self._is_record:
                array = pa.array(rows, type=pa.struct(self._schema))
                return pa.Table.from_batches([pa.RecordBatch.from_struct_array(array)])
            return pa.table([pa.array(rows, type=self._schema[0].type)], schema=self._schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise DataError(
                f"{self.path}: records {before + 1}-{before + len(rows)} do not fit the Arrow "
                f"types derived from the Avro schema: {error_text(exc)}"
            ) from exc


# -- which fields polars decodes ---------------------------------------------------------
_EPOCH = dt.datetime(1970, 1, 1)
#: Microseconds and days fastavro turns into datetimes and dates (inside years 1 to 9999).
_MICROS = (
    (dt.datetime(1, 1, 2) - _EPOCH) // dt.timedelta(microseconds=1),
    (dt.datetime(9999, 12, 30) - _EPOCH) // dt.timedelta(microseconds=1),
)
_DAYS = ((dt.date(1, 1, 2) - _EPOCH.date()).days, (dt.date(9999, 12, 30) - _EPOCH.date()).days)
_MILLIS = (_MICROS[0] // 1000 + 1, _MICROS[1] // 1000)
#: The range of values fastavro turns into the same Arrow value, by Avro type: given to
#: polars as `long`, they are checked against it (an `int` holds 32 bits; polars would
#: keep the low 32 of a longer varint).
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
    """How polars is given one value of a field, and how its result is taken back."""

    polars: Any  # the Avro schema polars decodes
    #: Bytes of every value, or None when they vary (a varint, a length, a union, ...).
    width: int | None = None
    #: For values given as `long`: the range the Avro type allows.
    bounds: tuple[int, int] | None = None
    #: A boolean, given as an `int`: a byte 0 or 1 reads as 0 or -1, any other byte as
    #: another value (polars would read every byte other than 1 as false).
    boolean: bool = False


def _polars_field(schema: Any, top: bool) -> _Field | None:
    """How polars decodes values of `schema` as fastavro does, or None when it cannot.

    `top`: a record's field, not an array's item (Arrow casts only int32 to date32).
    """
    if isinstance(schema, list):
        nulls = [is_null(branch) for branch in schema]
        if len(schema) != 2 or nulls.count(True) != 1:
            return None
        inner = _polars_field(schema[1] if nulls[0] else schema[0], top)
        if inner is None:
            return None
        union = ["null", inner.polars] if nulls[0] else [inner.polars, "null"]
        return _Field(union, bounds=inner.bounds, boolean=inner.boolean)
    kind, logical = (
        (schema.get("type"), schema.get("logicalType"))
        if isinstance(schema, dict)
        else (schema, None)
    )
    if kind == "array":
        items = _polars_field(schema.get("items"), top=False)
        if items is None or items.boolean:
            return None
        return _Field({"type": "array", "items": items.polars}, bounds=items.bounds)
    if kind == "long" and logical is None:
        return _Field("long")
    if (kind, logical) in _LONG_BOUNDS:
        return _Field("long", bounds=_LONG_BOUNDS[kind, logical])
    if kind == "int" and logical == "date" and top:
        return _Field("long", bounds=_DAYS)
    if kind == "boolean" and logical is None and top:
        return _Field("int", bounds=(-1, 0), boolean=True)
    if kind in ("float", "double", "string", "bytes") and logical is None:
        return _Field(kind, width=_WIDTHS.get(kind))
    return None  # enum, fixed, map, record, time-*, uuid, decimal, ...: fastavro's objects


def _sentinel(schema: Any) -> Any:
    """A value of `schema` (as given to polars) from random bits: some 31 to 64 of them."""
    if isinstance(schema, list):
        return _sentinel(next(branch for branch in schema if branch != "null"))
    if isinstance(schema, dict):
        return [_sentinel(schema["items"])]
    bits = os.urandom(8)
    if schema in ("float", "double"):  # finite: NaN is not equal to itself
        value = struct.unpack("<f" if schema == "float" else "<d", bits[: _WIDTHS[schema]])[0]
        return value if math.isfinite(value) else _sentinel(schema)
    if schema == "string":
        return bits.hex()
    if schema == "bytes":
        return bits
    return int.from_bytes(bits[:4] if schema == "int" else bits, "little", signed=True)


class PolarsDecoder:
    """Decodes runs of blocks with polars, given codec null and the sentinel."""

    def __init__(
        self, fields: list[_Field], header: Header, schema: pa.Schema, slow: FastavroDecoder
    ) -> None:
        import polars  # imported when first needed: it takes a while

        self._polars = polars
        self._fields = fields
        self._schema = schema
        self._slow = slow
        self._sync = header.sync
        polars_schema = {
            "type": "record",
            "name": "r",
            "fields": [{"name": f"f{i}", "type": f.polars} for i, f in enumerate(fields)],
        }
        self._header = container_header(polars_schema, header.sync)
        #: Fewer bytes than this many per record cannot be the block's records: polars is
        #: not given them (it would allocate what the count says, and read past the end).
        self._min_record_size = sum(field.width or 1 for field in fields)
        self._sentinel = {f"f{i}": _sentinel(field.polars) for i, field in enumerate(fields)}
        encoded = io.BytesIO()
        fastavro.schemaless_writer(encoded, fastavro.parse_schema(polars_schema), self._sentinel)
        # A varint read in the 0xff bytes after the sentinel fails (it would be longer than
        # 10 bytes) instead of reading past the end of the block.
        fixed = sum(field.width or 0 for field in fields)
        self._tail = encoded.getvalue() + b"\xff" * (fixed + 16)

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
        """polars' table of the records of `blocks`, or None when it cannot be taken."""
        parts = [self._header]
        for block in blocks:
            length = len(block.data)
            if block.count * self._min_record_size > length:
                return None
            parts += [
                encode_long(block.count + 1),
                encode_long(length + len(self._tail)),
                block.data,
                self._tail,
                self._sync,
            ]
        try:
            table = self._polars.read_avro(io.BytesIO(b"".join(parts))).to_arrow()
        except (Exception, self._polars.exceptions.PanicException):  # noqa: BLE001
            return None  # whatever polars raised, fastavro will say what is wrong
        counts = [block.count for block in blocks]
        if table.num_rows != sum(counts) + len(blocks):
            return None
        return self._without_sentinels(table, counts)

    def _without_sentinels(self, table: pa.Table, counts: list[int]) -> pa.Table | None:
        """`table` without the sentinel after each block's records; None unless each is
        intact (the block held exactly its records)."""
        ends, total = [], 0
        for count in counts:
            total += count + 1
            ends.append(total - 1)
        positions = pa.array(ends)
        for name, column in zip(table.column_names, table.columns, strict=True):
            want = pa.array([self._sentinel[name]] * len(ends), type=column.type)
            if not column.take(positions).equals(pa.chunked_array([want])):
                return None
        keep = np.ones(len(table), dtype=bool)
        keep[ends] = False
        return table.filter(keep)


def _convert(array: pa.Array, field: _Field, kind: pa.DataType) -> pa.Array:
    """A column from polars as the Arrow type `kind`; ValueError out of the Avro range."""
    if field.bounds is not None:
        values = array
        while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            values = values.flatten()
        low, high = pc.min_max(values).values()
        if low.is_valid and (low.as_py() < field.bounds[0] or high.as_py() > field.bounds[1]):
            raise ValueError("a value out of the range of its Avro type")
    if field.boolean:
        return pc.not_equal(array, 0)
    if pa.types.is_date32(kind):
        return array.cast(pa.int32()).cast(kind)
    return array.cast(kind)


def decoder_for(path: str, header: Header, schema: pa.Schema) -> FastavroDecoder | PolarsDecoder:
    """polars when every field of the writer schema allows it, else fastavro."""
    slow = FastavroDecoder(path, header, schema)
    if not is_record(header.schema):
        return slow
    fields = [_polars_field(field["type"], top=True) for field in header.schema["fields"]]
    known = [field for field in fields if field is not None]
    if not known or len(known) != len(fields):
        return slow
    return PolarsDecoder(known, header, schema, slow)
