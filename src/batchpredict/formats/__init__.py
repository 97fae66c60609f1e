"""Readers and writers for the supported file formats, found by name or extension."""

from __future__ import annotations

from batchpredict.formats.base import Reader, ReadOptions, Writer
from batchpredict.formats.registry import (
    READERS,
    WRITERS,
    default_extension,
    describe_formats,
    format_for_path,
    reader_for,
    writer_for,
)

__all__ = [
    "READERS",
    "WRITERS",
    "ReadOptions",
    "Reader",
    "Writer",
    "default_extension",
    "describe_formats",
    "format_for_path",
    "reader_for",
    "writer_for",
]
