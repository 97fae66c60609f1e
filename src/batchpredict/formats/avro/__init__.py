"""Avro object container files: reader, writer and the Avro <-> Arrow schema mapping.

`container` frames and bounds the blocks, `decode` turns them into Arrow (polars or
fastavro, chosen per file), `schema` maps the types, `files` holds the reader and writer.
"""

from __future__ import annotations

from batchpredict.formats.avro.files import AvroReader, AvroWriter
from batchpredict.formats.avro.schema import arrow_schema, avro_schema

__all__ = ["AvroReader", "AvroWriter", "arrow_schema", "avro_schema"]
