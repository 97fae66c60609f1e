"""CSV and TSV written by pyarrow's CSV writer: a header row, nulls as empty fields."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.csv as pacsv

from batchpredict.errors import DataError, error_text
from batchpredict.formats.base import Writer


class CsvWriter(Writer):
    """Writes comma-separated values with a header row; nulls as empty fields."""

    name = "csv"
    extensions: ClassVar[tuple[str, ...]] = (".csv",)
    supports_nested = False
    delimiter: ClassVar[str] = ","

    def _start(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise DataError(
                f"{self.path}: {self.name.upper()} cannot hold list or struct columns {nested}"
            )
        try:
            self._writer = pacsv.CSVWriter(
                sink, schema, write_options=pacsv.WriteOptions(delimiter=self.delimiter)
            )
        except pa.ArrowException as exc:
            raise DataError(f"{self.path}: cannot write {error_text(exc)}") from exc

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _finish(self) -> None:
        self._writer.close()


class TsvWriter(CsvWriter):
    """Writes tab-separated values with a header row; nulls as empty fields."""

    name = "tsv"
    extensions = (".tsv", ".tab")
    delimiter = "\t"
