"""Which reader and writer class handles which format name and file extension."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pyarrow as pa

from batchpredict import storage
from batchpredict.config import RunConfig
from batchpredict.errors import UsageError
from batchpredict.formats.avro import AvroReader, AvroWriter
from batchpredict.formats.base import (
    COMPRESSION_SUFFIXES,
    STDIO,
    BadRecord,
    Reader,
    ReadOptions,
    Writer,
    compression_of,
    strip_compression,
)
from batchpredict.formats.csv_io import CsvReader, TsvReader
from batchpredict.formats.csv_writer import CsvWriter, TsvWriter
from batchpredict.formats.delta_io import DeltaReader, DeltaWriter, import_deltalake
from batchpredict.formats.json_io import JsonLinesReader, JsonLinesWriter
from batchpredict.formats.parquet_io import ParquetReader, ParquetWriter

READERS: dict[str, type[Reader]] = {
    cls.name: cls
    for cls in (CsvReader, TsvReader, JsonLinesReader, AvroReader, ParquetReader, DeltaReader)
}
WRITERS: dict[str, type[Writer]] = {
    cls.name: cls
    for cls in (CsvWriter, TsvWriter, JsonLinesWriter, AvroWriter, ParquetWriter, DeltaWriter)
}
#: Other names users reach for; each maps to a registered name.
ALIASES: dict[str, str] = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet", "tab": "tsv"}


def _extensions() -> dict[str, str]:
    """Extension (".csv") -> format name, over readers and writers."""
    classes: list[type[Reader] | type[Writer]] = [*READERS.values(), *WRITERS.values()]
    return {ext: cls.name for cls in classes for ext in cls.extensions}


def _canonical(format_name: str, table: dict[str, type[Reader]] | dict[str, type[Writer]]) -> str:
    """The registered name for a user-given format name, or a UsageError listing them."""
    name = format_name.strip().lower().lstrip(".")
    name = ALIASES.get(name, name)
    if name not in table:
        raise UsageError(
            f"unknown format {format_name!r}; valid formats: {', '.join(sorted(table))}"
        )
    return name


def reader_format(format_name: str) -> str:
    """The registered reader name for `--input_format` (aliases allowed), or a UsageError."""
    return _canonical(format_name, READERS)


def writer_format(format_name: str) -> str:
    """The registered writer name for `--output_format` (aliases allowed), or a UsageError."""
    return _canonical(format_name, WRITERS)


def read_options(
    config: RunConfig,
    on_bad_record: Callable[[BadRecord], None] | None = None,
    column_types: Callable[[pa.Schema], Mapping[str, pa.DataType]] | None = None,
) -> ReadOptions:
    """How every reader of a run reads its input: chunk size, dialect, null markers, what a
    bad record does, and (text formats) which columns to parse as numbers."""
    return ReadOptions(
        chunk_size=config.chunk_size,
        on_bad_record=on_bad_record,
        column_types=column_types,
        null_values=config.null_values,
        delimiter=config.delimiter,
        reject_nulls=config.fill_value is None,
        max_record_bytes=config.max_record_bytes,
        table_version=config.input_version,
    )


def preflight(config: RunConfig) -> None:
    """The checks of a run's options that need the formats and the stores, made before
    anything is loaded or read (`RunConfig` checks the rest and imports neither): every
    URI's scheme has a store, and `--output_format` agrees with `--output_file`."""
    locations = (
        config.model,
        *config.input_files,
        config.output_file,
        config.output_dir,
        config.rejects_file,
        config.summary_file,
    )
    for value in locations:
        if value is not None and storage.is_uri(value):
            storage.check_scheme(value)
    _check_output_format(config)


def _check_output_format(config: RunConfig) -> None:
    """Refuse an `--output_format` the `--output_file`'s extension contradicts (a `.parquet`
    file holding CSV), and a compression suffix on a format that compresses internally."""
    path = config.output_file
    if path is None or path == STDIO:
        # An unknown name is refused here, and so is delta without its extra.
        if config.output_format is not None and writer_format(config.output_format) == "delta":
            import_deltalake()
        return
    by_extension = format_for_path(path)
    chosen = writer_format(config.output_format) if config.output_format else by_extension
    if by_extension is not None and chosen != by_extension:
        raise UsageError(
            f"--output_file {path} has the extension of {by_extension} but --output_format is "
            f"{config.output_format}; make them agree (or drop --output_format)"
        )
    if (
        chosen is not None
        and compression_of(path)
        and not WRITERS[chosen].accepts_compression_suffix
    ):
        raise UsageError(
            f"--output_file {path}: {chosen} files are compressed internally; remove the "
            f"{Path(path).suffix} suffix"
        )


def check_delimiter(delimiter: str | None, inputs: Iterable[tuple[str, str]]) -> None:
    """`--delimiter` is for CSV: a UsageError if any of the (path, format) inputs is not CSV
    (a TSV or JSON input with a delimiter is a contradiction, not something to guess at)."""
    if delimiter is None:
        return
    for path, format_name in inputs:
        if format_name != CsvReader.name:
            raise UsageError(f"{path}: --delimiter is for CSV input, and this is {format_name}")


def check_delta_inputs(config: RunConfig, inputs: Iterable[tuple[str, str]]) -> None:
    """With a Delta table among the (path, format) inputs: a missing `delta` extra is
    reported now, before the model loads, and `--skip_existing` is refused (a table's
    folder does not tell when its log gained a version). Without one, `--input_version`
    is refused: it is for tables."""
    tables = [path for path, fmt in inputs if fmt == DeltaReader.name]
    if tables:
        import_deltalake()
        if config.skip_existing:
            raise UsageError(
                f"{tables[0]}: --skip_existing cannot tell whether a Delta table changed "
                "since it was scored; drop it for table inputs"
            )
    elif config.input_version is not None:
        raise UsageError(
            f"--input_version {config.input_version} is for Delta table inputs, and none of "
            "the inputs is one"
        )


def format_for_path(path: str) -> str | None:
    """The format implied by a path's extension (after any .gz/.bz2/.zst), or None."""
    if path == STDIO:
        return None
    return _extensions().get(Path(strip_compression(path)).suffix.lower())


def _format_of(path: str, format_name: str | None, option: str) -> str:
    """The explicit format if given, else the one the extension implies."""
    if format_name:
        return format_name
    found = format_for_path(path)
    if found is None:
        what = "stdin/stdout has no extension" if path == STDIO else "unknown file extension"
        known = ", ".join(sorted(_extensions()))
        raise UsageError(
            f"{path}: {what}; pass {option} (known extensions: {known}, "
            f"optionally followed by {', '.join(COMPRESSION_SUFFIXES)})"
        )
    return found


def _check_compression(path: str, name: str, accepts: bool) -> None:
    """Refuse .gz/.bz2/.zst on formats that compress internally."""
    suffix = Path(path).suffix
    if compression_of(path) and not accepts:
        raise UsageError(
            f"{path}: {name} files are compressed internally; remove the {suffix} suffix"
        )


def reader_for(path: str, format_name: str | None, options: ReadOptions) -> Reader:
    """A reader for `path`, by `format_name` if given, else by extension."""
    name = _canonical(_format_of(path, format_name, "--input_format"), READERS)
    cls = READERS[name]
    _check_compression(path, name, cls.accepts_compression_suffix)
    return cls(path, options)


def writer_for(
    path: str,
    format_name: str | None,
    max_output_bytes: int | None = None,
    output_mode: str | None = None,
) -> Writer:
    """A writer for `path`, by `format_name` if given, else by extension, whose file may
    not grow beyond `max_output_bytes` (None: no limit); `output_mode` is how a Delta
    table is written (None: overwrite)."""
    name = _canonical(_format_of(path, format_name, "--output_format"), WRITERS)
    cls = WRITERS[name]
    _check_compression(path, name, cls.accepts_compression_suffix)
    writer = cls(path)
    writer.max_output_bytes = max_output_bytes
    if isinstance(writer, DeltaWriter) and output_mode is not None:
        writer.mode = output_mode
    return writer


def default_extension(format_name: str) -> str:
    """The usual extension for output files of a format (".csv", ".parquet", ...)."""
    return WRITERS[_canonical(format_name, WRITERS)].extensions[0]


def describe_formats() -> list[tuple[str, tuple[str, ...], bool, bool]]:
    """(name, extensions, can read, can write) for every format, by name."""
    rows = []
    for name in sorted(READERS.keys() | WRITERS.keys()):
        cls = READERS.get(name) or WRITERS[name]
        rows.append((name, cls.extensions, name in READERS, name in WRITERS))
    return rows
