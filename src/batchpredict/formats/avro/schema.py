"""Avro schemas mapped to Arrow schemas and back.

Reading, the Arrow types are derived from the writer schema so that every batch, even one
with only nulls, has the same types; writing, the Avro schema is derived from the batches'.
"""

from __future__ import annotations

import re
from typing import Any

import fastavro
import pyarrow as pa

from batchpredict.errors import DataError

_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PRIMITIVES: dict[str, pa.DataType] = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "string": pa.string(),
}
#: Logical types fastavro decodes into Python objects, by (type, logicalType).
_LOGICAL: dict[tuple[str, str], pa.DataType] = {
    ("int", "date"): pa.date32(),
    ("int", "time-millis"): pa.time32("ms"),
    ("long", "time-micros"): pa.time64("us"),
    ("long", "timestamp-millis"): pa.timestamp("ms", tz="UTC"),
    ("long", "timestamp-micros"): pa.timestamp("us", tz="UTC"),
    ("long", "local-timestamp-millis"): pa.timestamp("ms"),
    ("long", "local-timestamp-micros"): pa.timestamp("us"),
    ("string", "uuid"): pa.uuid(),
}


def is_record(schema: Any) -> bool:
    """Whether an Avro schema is a record (rows with fields)."""
    return isinstance(schema, dict) and schema.get("type") in ("record", "error")


def is_null(schema: Any) -> bool:
    """Whether an Avro schema is the null type, in either spelling."""
    return schema in ("null", {"type": "null"})


# -- Avro schema -> Arrow schema --------------------------------------------------------
def arrow_schema(avro_schema: Any, path: str = "<schema>") -> pa.Schema:
    """The Arrow schema for records of `avro_schema`; a non-record becomes column `value`."""
    expanded = fastavro.parse_schema(avro_schema, expand=True)  # named types written out
    if is_record(expanded):
        return pa.schema(list(_arrow_type(expanded, path)))
    return pa.schema([_arrow_field("value", expanded, path)])


def _arrow_field(name: str, schema: Any, path: str) -> pa.Field:
    """An Arrow field: unions with null become nullable, anything else is required."""
    if not isinstance(schema, list):
        kind = _arrow_type(schema, path)
        return pa.field(name, kind, nullable=pa.types.is_null(kind))
    branches = [branch for branch in schema if not is_null(branch)]
    if len(branches) > 1:
        shown = [b if isinstance(b, str) else b.get("name", b["type"]) for b in branches]
        raise DataError(
            f"{path}: field {name!r}: Avro unions of several types are not supported ({shown})"
        )
    return pa.field(name, _arrow_type(branches[0], path) if branches else pa.null())


def _arrow_type(schema: Any, path: str) -> pa.DataType:
    """The Arrow type of one Avro schema (a union becomes its non-null branch)."""
    if isinstance(schema, list):
        return _arrow_field("item", schema, path).type
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:  # the one name left in an expanded schema
            raise DataError(f"{path}: recursive Avro type {schema!r} is not supported")
        return _PRIMITIVES[schema]
    kind, logical = schema["type"], schema.get("logicalType")
    if (kind, logical) in _LOGICAL:
        return _LOGICAL[kind, logical]
    if kind in ("bytes", "fixed") and logical == "decimal":
        precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
        return (pa.decimal128 if precision <= 38 else pa.decimal256)(precision, scale)
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "array":
        return pa.list_(_arrow_field("item", schema["items"], path))
    if kind == "map":
        return pa.map_(pa.string(), _arrow_field("value", schema["values"], path))
    if kind in ("enum", "fixed"):
        return pa.string() if kind == "enum" else pa.binary(int(schema["size"]))
    return pa.struct([_arrow_field(f["name"], f["type"], path) for f in schema["fields"]])


# -- Arrow schema -> Avro schema --------------------------------------------------------
_AVRO: dict[pa.DataType, Any] = {arrow: avro for avro, arrow in _PRIMITIVES.items()}
_AVRO |= dict.fromkeys([pa.int8(), pa.int16(), pa.uint8(), pa.uint16()], "int")
_AVRO |= dict.fromkeys([pa.uint32(), pa.uint64()], "long")
_AVRO |= dict.fromkeys([pa.large_string(), pa.string_view()], "string")
_AVRO |= dict.fromkeys([pa.large_binary(), pa.binary_view()], "bytes")


class _AvroTypes:
    """Converts Arrow types to Avro schemas, naming records and fixed types uniquely."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._names: set[str] = set()

    def unique(self, base: str) -> str:
        name = re.sub(r"\W", "_", base) or "type"
        name = name if _AVRO_NAME.fullmatch(name) else f"_{name}"
        candidate, n = name, 1
        while candidate in self._names:
            n += 1
            candidate = f"{name}_{n}"
        self._names.add(candidate)
        return candidate

    def field(self, field: pa.Field) -> dict[str, Any]:
        """An Avro record field; nullable fields are unions with null, defaulting to null."""
        if not _AVRO_NAME.fullmatch(field.name):
            raise DataError(
                f"{self.path}: column {field.name!r} is not a valid Avro name "
                "(letters, digits and _, not starting with a digit)"
            )
        kind = self.type(field.type, field.name)
        if field.nullable and kind != "null":
            return {"name": field.name, "type": ["null", kind], "default": None}
        return {"name": field.name, "type": kind}

    def type(self, kind: pa.DataType, name: str) -> Any:
        """The Avro schema of one Arrow type."""
        types = pa.types
        if kind in _AVRO:
            return _AVRO[kind]
        if types.is_date(kind):
            return _logical("int", "date")
        if types.is_fixed_size_binary(kind):
            return {"type": "fixed", "name": self.unique(f"{name}_fixed"), "size": kind.byte_width}
        if types.is_timestamp(kind):
            unit = "millis" if kind.unit in ("s", "ms") else "micros"
            return _logical("long", f"{'' if kind.tz else 'local-'}timestamp-{unit}")
        if types.is_time32(kind) or types.is_time64(kind):
            time32 = types.is_time32(kind)
            return _logical("int", "time-millis") if time32 else _logical("long", "time-micros")
        if types.is_decimal(kind):
            return _logical("bytes", "decimal") | {"precision": kind.precision, "scale": kind.scale}
        if types.is_dictionary(kind):
            return self.type(kind.value_type, name)
        if isinstance(kind, pa.UuidType):
            return _logical("string", "uuid")
        if types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind):
            item = self.type(kind.value_type, f"{name}_item")
            nullable = kind.value_field.nullable and item != "null"
            return {"type": "array", "items": ["null", item] if nullable else item}
        if types.is_map(kind) and types.is_string(kind.key_type):
            value = self.type(kind.item_type, f"{name}_value")
            return {"type": "map", "values": ["null", value] if value != "null" else value}
        if types.is_struct(kind):
            fields = [self.field(kind.field(i)) for i in range(kind.num_fields)]
            return {"type": "record", "name": self.unique(name), "fields": fields}
        raise DataError(f"{self.path}: column {name!r}: Avro cannot hold Arrow type {kind}")


def _logical(kind: str, logical: str) -> dict[str, Any]:
    return {"type": kind, "logicalType": logical}


def avro_schema(schema: pa.Schema, path: str = "<schema>") -> dict[str, Any]:
    """The Avro record schema for rows of `schema`."""
    types = _AvroTypes(path)
    name = types.unique("Row")
    return {"type": "record", "name": name, "fields": [types.field(field) for field in schema]}
