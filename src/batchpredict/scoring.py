"""Scoring a table, the one way every engine and the Python API do it.

    table -> map columns -> convert for the model -> reject bad rows -> predict
          -> prediction columns beside the kept columns

The local engine (`pipeline`), the Ray engine (`ray_engine`) and the Python API (`api`)
build a `Scorer` with `load_scorer`, turn each table into model arrays with `prepare`
and score them with `Scorer.score`; they differ only in how they schedule the work.
Bad rows stop the work with one message naming file, row and column (`bad_row`), or go to
a rejects sink; `check_error_rate` refuses a share of rejected rows over
`--max_error_rate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict.columns import ColumnMapping, RunMapping, plan_mapping
from batchpredict.config import STDIO, RunConfig
from batchpredict.conversion import Converted, RowProblem, to_model_arrays
from batchpredict.errors import DataError, InputMissingError
from batchpredict.formats.base import BadRecord
from batchpredict.formats.registry import read_options, reader_for
from batchpredict.model import LoadedModel, load_model
from batchpredict.observe import get_logger
from batchpredict.predictions import PredictionColumns, output_batch
from batchpredict.predictor import Predictor
from batchpredict.run_stats import RunStats
from batchpredict.sources import InputFile
from batchpredict.tensors import ModelTensors

#: What takes a chunk's bad rows: the chunk, each row's file row, and the problems.
RejectSink = Callable[[pa.Table, np.ndarray, Sequence[RowProblem]], None]


def where(row: int, column: str | None) -> str:
    """`row R, column 'c'` (just `row R` for a record that did not parse)."""
    return f"row {row}" + (f", column {column!r}" if column else "")


def bad_row(source: str, row: int, column: str | None, reason: str) -> str:
    """The one message for a bad row: `file: row R, column 'c': reason`."""
    return f"{source}: {where(row, column)}: {reason}"


def too_many_rejected(rejected: int, read: int, max_error_rate: float) -> bool:
    """Whether more than `--max_error_rate` of the rows read were rejected."""
    return rejected > max_error_rate * read


def check_error_rate(
    rejected: int, read: int, max_error_rate: float, *, of: str, consequence: str
) -> None:
    """DataError when more than `--max_error_rate` of the rows read (`of` says which, as
    ` for OUTPUT` or nothing) were rejected; `consequence` says what was not written."""
    if too_many_rejected(rejected, read, max_error_rate):
        raise DataError(
            f"{rejected} of {read} rows rejected{of} ({rejected / max(read, 1):.2%}), more "
            f"than --max_error_rate {max_error_rate:.2%}; {consequence}"
        )


# -- row numbers ------------------------------------------------------------------------------
def file_rows(first_row: int, rows: int, dropped: list[int]) -> np.ndarray:
    """1-based file record numbers of the rows `first_row .. first_row + rows` read so far.

    A reader leaves out records it could not parse (`dropped`, their record numbers), so
    the k-th row it yields is record k plus the number of dropped records before it.
    """
    ordinals = np.arange(first_row + 1, first_row + rows + 1)
    if not dropped:
        return ordinals
    drops = np.sort(np.asarray(dropped))
    # Good records before each dropped one; a drop precedes row k if fewer than k are.
    good_before = drops - 1 - np.arange(len(drops))
    return ordinals + np.searchsorted(good_before, ordinals, side="left")


class FileRows:
    """Numbers the rows one reader yields by their record in the file, counting the records
    it could not parse (which `on_bad_record` passes on to `keep`, when given)."""

    def __init__(self, source: str, keep: Callable[[str, BadRecord], None] | None = None) -> None:
        self.source = source
        self.dropped: list[int] = []
        self.read = 0
        self._keep = keep

    def on_bad_record(self, record: BadRecord) -> None:
        """What a reader calls for a record it could not parse: note its row, keep it."""
        self.dropped.append(record.row)
        if self._keep is not None:
            self._keep(self.source, record)

    def next(self, rows: int) -> np.ndarray:
        """The file rows of the next `rows` rows the reader yields."""
        numbers = file_rows(self.read, rows, self.dropped)
        self.read += rows
        return numbers

    def check_not_empty(self) -> None:
        """InputMissingError for a file that held no records at all."""
        if self.read == 0 and not self.dropped:
            raise InputMissingError(f"{self.source}: holds no data rows")


# -- mapping ----------------------------------------------------------------------------------
def plan_run_mapping(
    inputs: Sequence[InputFile], model: ModelTensors, config: RunConfig
) -> RunMapping | None:
    """The run's column mapping, from the first input's columns (its schema only: a Parquet
    footer, the first block of a text file); None for stdin, which cannot be read twice."""
    first = inputs[0]
    if first.path == STDIO:
        return None
    # Failing, a bad record here is the error the run would stop at; skipping, the run
    # reports it, and a first block of nothing but bad records leaves the plan to the run.
    skipping = config.on_error == "skip"
    options = read_options(config, _ignore_bad_record if skipping else None)
    reader = reader_for(first.path, first.format, options)
    try:
        schema = reader.schema()
    except InputMissingError:
        if skipping:
            return None
        raise
    return plan_mapping(
        model.inputs,
        schema,
        first.path,
        config.features,
        config.keep_columns,
        declared_types=reader.declares_types,
    )


def _ignore_bad_record(record: BadRecord) -> None:
    """Planning reads only column names and types; bad records are reported by the run."""


class RunColumns:
    """The run's column mapping, applied to each file by name.

    Planned before the run from the first input; for stdin, which cannot be read twice, from
    its first chunk, and logged then.
    """

    def __init__(self, model: ModelTensors, config: RunConfig, planned: RunMapping | None) -> None:
        self.model = model
        self.config = config
        self.mapping = planned

    def for_file(self, schema: pa.Schema, source: str, declared_types: bool) -> ColumnMapping:
        """The mapping for one file; DataError naming what it lacks."""
        if self.mapping is None:
            self.mapping = plan_mapping(
                self.model.inputs,
                schema,
                source,
                self.config.features,
                self.config.keep_columns,
                declared_types=declared_types,
            )
            get_logger().info("column mapping decided", column_mapping=self.as_dict())
            self.warn_if_guessed()
        return self.mapping.for_file(schema, source)

    def read_types(self, schema: pa.Schema, source: str) -> dict[str, pa.DataType]:
        """`ReadOptions.column_types` of a text input: the columns the run parses as numbers
        (planned here from stdin's first block when nothing was planned before)."""
        if self.mapping is None:
            self.for_file(schema, source, declared_types=False)
        assert self.mapping is not None
        return self.mapping.read_types(schema, source)

    def as_dict(self) -> dict[str, Any] | None:
        """JSON-ready mapping, or None until it is decided."""
        return None if self.mapping is None else self.mapping.as_dict()

    def warn_if_guessed(self) -> None:
        """Say so when the column order came from the first input, not from the user."""
        if self.mapping is not None:
            warn_if_guessed(self.mapping)


def warn_if_guessed(mapping: RunMapping) -> None:
    """Say so when the column order came from the first input, not from the user."""
    if mapping.guessed_order:
        get_logger().warning(
            "feature order taken from the first input",
            features=",".join(mapping.read_columns),
            first_input=mapping.decided_by.removeprefix("the columns of "),
            hint="every input is read by these names; pin the order with --features",
        )


# -- scoring ----------------------------------------------------------------------------------
@dataclass
class Ready:
    """Rows ready for the model: their model-input arrays and the columns to keep."""

    source: str
    kept: pa.Table
    arrays: dict[str, np.ndarray]
    rows: int
    #: The chunk as read, its model columns only (every row, rejected ones too), which rows
    #: were kept (None: all) and why the others were not: what run statistics observe.
    read: pa.Table | None = None
    good: np.ndarray | None = None
    problems: tuple[RowProblem, ...] = ()


def prepare(
    table: pa.Table,
    mapping: ColumnMapping,
    rows: np.ndarray,
    *,
    source: str | Callable[[int], str],
    fill_value: float | None = None,
    reject: RejectSink | None = None,
) -> Ready:
    """Convert `table` for the model by `mapping`, leaving out its bad rows (see `sift`).

    `rows` are the file rows of the table's rows and `source` their file (or, for a table
    mixing files, the file of the row at an index).
    """
    first_source = source if isinstance(source, str) else source(0)
    converted = to_model_arrays(table, mapping, first_source, fill_value)
    return sift(table, mapping, converted, rows, source=source, reject=reject)


def sift(
    table: pa.Table,
    mapping: ColumnMapping,
    converted: Converted,
    rows: np.ndarray,
    *,
    source: str | Callable[[int], str],
    reject: RejectSink | None = None,
) -> Ready:
    """The rows of `table` that `converted` holds, ready for the model. Without `reject`,
    the first bad row stops the work with a DataError naming its file, row and column;
    with it, the bad rows go there and are left out."""
    kept = table.select(list(mapping.kept))
    if converted.problems:
        if reject is None:
            first = converted.problems[0]
            path = source if isinstance(source, str) else source(first.index)
            raise DataError(bad_row(path, int(rows[first.index]), first.column, first.reason))
        reject(table, rows, converted.problems)
        assert converted.good is not None
        kept = kept.filter(pa.array(converted.good))
    first_source = source if isinstance(source, str) else source(0)
    read = table.select(list(mapping.read_columns))  # no copy
    return Ready(
        first_source,
        kept,
        converted.arrays,
        converted.rows,
        read,
        converted.good,
        converted.problems,
    )


@dataclass(frozen=True)
class Scorer:
    """A loaded model, how it is fed, and how its predictions become columns."""

    model: LoadedModel
    predictor: Predictor
    columns: PredictionColumns
    #: Where the statistics of what is scored go (None: none are gathered).
    stats: RunStats | None = None

    def score(self, ready: Ready, nested: bool) -> pa.RecordBatch:
        """The kept columns of `ready` followed by its prediction columns (lists when
        `nested`, else split into `name_i` columns)."""
        predictions = self.predictor.predict_arrays(ready.arrays, ready.rows)
        results = self.columns.build(predictions, nested)
        self.observe(ready, predictions, results)
        return output_batch(ready.kept, results, nested, ready.source, self.columns)

    def observe(
        self,
        ready: Ready,
        predictions: dict[str, np.ndarray],
        results: Sequence[tuple[str, pa.Array]],
    ) -> None:
        """Add a scored chunk to the statistics: its model columns as read, its predictions
        and (`results`, its output columns) its labels and their scores."""
        if self.stats is None:
            return
        if ready.read is not None:
            self.stats.observe_read(ready.read, ready.good, ready.problems)
        columns = self.columns
        labels = (
            [(n, a) for n, a in results if n in (columns.label_column, columns.score_column)]
            if columns.labelled
            else []
        )
        self.stats.observe_predictions(predictions, columns.names, labels)


def load_model_of(config: RunConfig) -> LoadedModel:
    """The model `config` names, loaded with its signature, version and trust options."""
    return load_model(
        config.model,
        signature=config.signature,
        version=config.model_version,
        unsafe=config.unsafe_model_load,
    )


def load_scorer(
    model: str,
    *,
    columns: Callable[[LoadedModel], PredictionColumns],
    batch_size: int | None = None,
    signature: str = "serving_default",
    version: int | None = None,
    unsafe: bool = False,
    devices: Sequence[str] = ("/CPU:0",),
    prefetch: str = "auto",
) -> Scorer:
    """Load `model`, set up its predictor on `devices` (batches fed as `--prefetch`
    says), and name its prediction columns with `columns`."""
    loaded = load_model(model, signature=signature, version=version, unsafe=unsafe)
    return Scorer(loaded, Predictor(loaded, batch_size, devices, prefetch), columns(loaded))


def scorer_for(
    config: RunConfig, devices: Sequence[str] = ("/CPU:0",), stats: RunStats | None = None
) -> Scorer:
    """The scorer of a `predict` run: its model, batch size and prediction columns, and
    where the statistics of what it scores go."""
    scorer = load_scorer(
        config.model,
        columns=lambda model: PredictionColumns.from_config(model, config),
        batch_size=config.batch_size,
        signature=config.signature,
        version=config.model_version,
        unsafe=config.unsafe_model_load,
        devices=devices,
        prefetch=config.prefetch,
    )
    return scorer if stats is None else dataclasses.replace(scorer, stats=stats)
