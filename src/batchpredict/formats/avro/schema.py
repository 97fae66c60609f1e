"""Avro schemas mapped to Arrow schemas and back.

Reading, the Arrow types are derived from the writer schema so that every batch, even one
with only nulls, has the same types; writing, the Avro schema is derived from the batches'.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from batchpredict.errors import DataError

_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# -- Avro schema -> Arrow schema --------------------------------------------------------
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
#: Logical types fastavro decodes into Python objects, by "<type>-<logicalType>".
_LOGICAL: dict[str, pa.DataType] = {
    "int-date": pa.date32(),
    "int-time-millis": pa.time32("ms"),
    "long-time-micros": pa.time64("us"),
    "long-timestamp-millis": pa.timestamp("ms", tz="UTC"),
    "long-timestamp-micros": pa.timestamp("us", tz="UTC"),
    "long-local-timestamp-millis": pa.timestamp("ms"),
    "long-local-timestamp-micros": pa.timestamp("us"),
    "string-uuid": pa.uuid(),
}


def is_record(schema: Any) -> bool:
    """Whether an Avro schema is a record (rows with fields)."""
    return isinstance(schema, dict) and schema.get("type") in ("record", "error")


def is_null(schema: Any) -> bool:
    """Whether an Avro schema is the null type, in either spelling."""
    return schema in ("null", {"type": "null"})


class _ArrowTypes:
    """Converts an Avro schema to Arrow, resolving references to named types."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: Full name -> Arrow type of the named types met so far; None while converting.
        self.named: dict[str, pa.DataType | None] = {}

    def field(self, name: str, schema: Any, namespace: str) -> pa.Field:
        """An Arrow field: unions with null become nullable, anything else is required."""
        if isinstance(schema, list):
            branches = [s for s in schema if not is_null(s)]
            if len(branches) > 1:
                shown = [s if isinstance(s, str) else s.get("name", s["type"]) for s in branches]
                raise DataError(
                    f"{self.path}: field {name!r}: Avro unions of several types are not "
                    f"supported ({shown})"
                )
            if not branches:
                return pa.field(name, pa.null())
            return pa.field(name, self.type(branches[0], namespace), nullable=True)
        kind = self.type(schema, namespace)
        return pa.field(name, kind, nullable=pa.types.is_null(kind))

    def type(self, schema: Any, namespace: str) -> pa.DataType:
        """The Arrow type of one Avro schema (a union becomes its non-null branch)."""
        if isinstance(schema, list):
            return self.field("item", schema, namespace).type
        if isinstance(schema, str):
            return _PRIMITIVES.get(schema) or self._reference(schema, namespace)
        kind = schema["type"]
        logical = _LOGICAL.get(f"{kind}-{schema.get('logicalType')}")
        if logical is not None:
            return logical
        if kind in ("bytes", "fixed") and schema.get("logicalType") == "decimal":
            precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
            return (pa.decimal128 if precision <= 38 else pa.decimal256)(precision, scale)
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        if kind == "array":
            return pa.list_(self.field("item", schema["items"], namespace))
        if kind == "map":
            return pa.map_(pa.string(), self.field("value", schema["values"], namespace))
        if kind in ("record", "error", "enum", "fixed"):
            return self._named(schema, namespace)
        return self._reference(kind, namespace)

    def _named(self, schema: dict[str, Any], namespace: str) -> pa.DataType:
        """Convert a named type definition (record, enum, fixed) and remember it."""
        name = schema["name"]
        if "." not in name and schema.get("namespace", namespace):
            name = f"{schema.get('namespace', namespace)}.{name}"
        if schema["type"] == "enum":
            kind = pa.string()
        elif schema["type"] == "fixed":
            kind = pa.binary(int(schema["size"]))
        else:
            self.named[name] = None  # a reference to it from inside is recursion
            inner = name.rpartition(".")[0]
            kind = pa.struct([self.field(f["name"], f["type"], inner) for f in schema["fields"]])
        self.named[name] = kind
        return kind

    def _reference(self, name: str, namespace: str) -> pa.DataType:
        """The type a name refers to (a type defined earlier in the schema)."""
        for full in (f"{namespace}.{name}", name):
            if full in self.named:
                kind = self.named[full]
                if kind is None:
                    raise DataError(f"{self.path}: recursive Avro type {full!r} is not supported")
                return kind
        raise DataError(f"{self.path}: unknown Avro type {name!r}")


def arrow_schema(avro_schema: Any, path: str = "<schema>") -> pa.Schema:
    """The Arrow schema for records of `avro_schema`; a non-record becomes column `value`."""
    types = _ArrowTypes(path)
    if is_record(avro_schema):
        return pa.schema(list(types.type(avro_schema, "")))
    return pa.schema([types.field("value", avro_schema, "")])


# -- Arrow schema -> Avro schema --------------------------------------------------------
class _AvroTypes:
    """Converts Arrow types to Avro schemas, naming records and fixed types uniquely."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._names: set[str] = set()

    def _unique(self, base: str) -> str:
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
        if types.is_null(kind):
            return "null"
        if types.is_boolean(kind):
            return "boolean"
        if types.is_int8(kind) or types.is_int16(kind) or types.is_int32(kind):
            return "int"
        if types.is_uint8(kind) or types.is_uint16(kind):
            return "int"
        if types.is_int64(kind) or types.is_uint32(kind) or types.is_uint64(kind):
            return "long"
        if types.is_float32(kind):
            return "float"
        if types.is_float64(kind):
            return "double"
        if types.is_string(kind) or types.is_large_string(kind) or types.is_string_view(kind):
            return "string"
        if types.is_fixed_size_binary(kind):
            return {"type": "fixed", "name": self._unique(f"{name}_fixed"), "size": kind.byte_width}
        if types.is_binary(kind) or types.is_large_binary(kind) or types.is_binary_view(kind):
            return "bytes"
        if types.is_date(kind):
            return {"type": "int", "logicalType": "date"}
        if types.is_timestamp(kind):
            unit = "millis" if kind.unit in ("s", "ms") else "micros"
            local = "" if kind.tz else "local-"
            return {"type": "long", "logicalType": f"{local}timestamp-{unit}"}
        if types.is_time32(kind):
            return {"type": "int", "logicalType": "time-millis"}
        if types.is_time64(kind):
            return {"type": "long", "logicalType": "time-micros"}
        if types.is_decimal(kind):
            return {
                "type": "bytes",
                "logicalType": "decimal",
                "precision": kind.precision,
                "scale": kind.scale,
            }
        if types.is_dictionary(kind):
            return self.type(kind.value_type, name)
        if isinstance(kind, pa.UuidType):
            return {"type": "string", "logicalType": "uuid"}
        if types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind):
            item = self.type(kind.value_type, f"{name}_item")
            nullable = kind.value_field.nullable and item != "null"
            return {"type": "array", "items": ["null", item] if nullable else item}
        if types.is_map(kind) and types.is_string(kind.key_type):
            value = self.type(kind.item_type, f"{name}_value")
            return {"type": "map", "values": ["null", value] if value != "null" else value}
        if types.is_struct(kind):
            return {
                "type": "record",
                "name": self._unique(name),
                "fields": [self.field(kind.field(i)) for i in range(kind.num_fields)],
            }
        raise DataError(f"{self.path}: column {name!r}: Avro cannot hold Arrow type {kind}")


def avro_schema(schema: pa.Schema, path: str = "<schema>") -> dict[str, Any]:
    """The Avro record schema for rows of `schema`."""
    types = _AvroTypes(path)
    return {
        "type": "record",
        "name": types._unique("Row"),
        "fields": [types.field(field) for field in schema],
    }
