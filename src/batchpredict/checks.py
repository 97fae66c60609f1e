"""`inspect` and `validate`: what predict would do with a model and its inputs, without
writing anything. Both read as predict reads (the same column mapping and conversion)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pyarrow as pa

from batchpredict.batching import rechunk
from batchpredict.columns import ColumnMapping
from batchpredict.config import RunConfig
from batchpredict.conversion import to_model_arrays
from batchpredict.errors import DataError, InputMissingError
from batchpredict.formats.base import BadRecord
from batchpredict.formats.registry import read_options, reader_for
from batchpredict.model import describe, load_model
from batchpredict.observe import shown_name
from batchpredict.scoring import (
    RunColumns,
    file_rows,
    load_model_of,
    plan_run_mapping,
    too_many_rejected,
    where,
)
from batchpredict.sources import InputFile, expand_inputs


def _first_chunk(
    source: InputFile, config: RunConfig, run_columns: RunColumns, bad_records: list[BadRecord]
) -> pa.Table:
    """The first chunk of an input as predict reads it (for `inspect` and `validate`);
    records the reader could not parse are collected in `bad_records`."""
    numbers = functools.partial(run_columns.read_types, source=source.path)
    options = read_options(config, bad_records.append, numbers)
    reader = reader_for(source.path, source.format, options)
    for table in rechunk(reader.iter_batches(), config.chunk_size):
        return table
    raise InputMissingError(f"{source.path}: holds no data rows")


def inspect_model(
    model: str,
    *,
    signature: str = "serving_default",
    version: int | None = None,
    unsafe: bool = False,
) -> list[str]:
    """Lines describing the model's inputs and outputs."""
    return describe(load_model(model, signature=signature, version=version, unsafe=unsafe))


def inspect(config: RunConfig) -> list[str]:
    """The model, the column mapping predict would plan for `config`, and for each input
    whether it supplies it and which columns would be kept."""
    model = load_model_of(config)
    lines = describe(model)
    inputs = expand_inputs(config.input_files, config.input_format)
    run_columns = RunColumns(model, config, plan_run_mapping(inputs, model, config))
    for source in inputs:
        table = _first_chunk(source, config, run_columns, [])
        reader = reader_for(source.path, source.format, read_options(config, None))
        mapping = run_columns.for_file(table.schema, source.path, reader.declares_types)
        if source is inputs[0]:
            assert run_columns.mapping is not None
            lines.extend(run_columns.mapping.describe())
        kept = ", ".join(mapping.kept) or "(none)"
        name = shown_name(source.path)
        lines.append(f"input {name} ({source.format}): kept columns: {kept}")
    return lines


@dataclass(frozen=True)
class ValidationReport:
    """What `validate` found: a line per input checked, and every problem."""

    lines: tuple[str, ...]
    problems: tuple[str, ...]


def validate(config: RunConfig) -> ValidationReport:
    """Check each input's first chunk as predict would read and convert it with `config`
    (its column mapping, `--fill_value`, `--on_error` and `--max_error_rate`), collecting
    every problem found. Each model input is converted on its own, so one bad column does
    not hide another."""
    model = load_model_of(config)
    inputs = expand_inputs(config.input_files, config.input_format)
    lines: list[str] = []
    problems: list[str] = []
    try:
        run_columns = RunColumns(model, config, plan_run_mapping(inputs, model, config))
    except DataError as exc:
        return ValidationReport((), (str(exc),))
    if run_columns.mapping is not None:
        lines.extend(run_columns.mapping.describe())
    for source in inputs:
        line, found = _validate_input(source, run_columns, config)
        problems.extend(found)
        if line is not None:
            lines.append(line)
    return ValidationReport(tuple(lines), tuple(problems))


def _validate_input(
    source: InputFile, run_columns: RunColumns, config: RunConfig
) -> tuple[str | None, list[str]]:
    """`ok: ...` (or None) and the problems of one input's first chunk: with `--on_error
    fail` one per column holding bad rows, with `skip` one if more than `--max_error_rate`
    of the rows would be rejected."""
    bad_records: list[BadRecord] = []
    try:
        table = _first_chunk(source, config, run_columns, bad_records)
        reader = reader_for(source.path, source.format, read_options(config, None))
        mapping = run_columns.for_file(table.schema, source.path, reader.declares_types)
    except DataError as exc:
        return None, [str(exc)]
    rows = file_rows(0, table.num_rows, [record.row for record in bad_records])
    checked = table.num_rows + len(bad_records)
    # Per column (None: a record that did not parse), the bad rows and their reasons.
    bad: dict[str | None, dict[int, str]] = {}
    for record in bad_records:
        bad.setdefault(record.column, {})[record.row] = record.reason
    found: list[str] = []
    for binding in mapping.bindings:
        try:
            converted = to_model_arrays(
                table, ColumnMapping((binding,), ()), source.path, config.fill_value
            )
        except DataError as exc:
            found.append(str(exc))
            continue
        for problem in converted.problems:
            bad.setdefault(problem.column, {})[int(rows[problem.index])] = problem.reason
    rejected = len({row for column in bad.values() for row in column})
    if config.on_error == "fail":
        for column, reasons in bad.items():
            first = min(reasons)
            which = "records" if column is None else f"column {column!r}"
            found.append(
                f"{source.path}: {which}: {len(reasons)} of {checked} rows checked are bad; "
                f"first, row {first}: {reasons[first]}"
            )
    elif too_many_rejected(rejected, checked, config.max_error_rate):
        found.append(
            f"{source.path}: {rejected} of {checked} rows checked would be rejected, more "
            f"than --max_error_rate {config.max_error_rate:g}; first, {_first_bad(bad)}"
        )
    if found:
        return None, found
    note = f"; {rejected} would be rejected, first {_first_bad(bad)}" if rejected else ""
    return f"ok: {shown_name(source.path)} ({checked} rows checked{note})", []


def _first_bad(bad: dict[str | None, dict[int, str]]) -> str:
    """`row R, column 'c': reason` for the first bad row of any column."""
    row, column = min((row, column or "") for column, rows in bad.items() for row in rows)
    return f"{where(row, column)}: {bad[column or None][row]}"
