"""The one place that wires read -> map columns -> batch -> predict -> write.

Three stages overlap: a reading thread reads and converts the next chunks while the
model computes the current batch, and a writer thread encodes and writes finished chunks.
Each output is committed (renamed into place) only after all its rows were written; any
failure aborts it, leaving the previous output untouched.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict import storage
from batchpredict.batching import Prefetch, rechunk
from batchpredict.columns import ColumnMapping, RunMapping, plan_mapping, to_model_arrays
from batchpredict.config import STDIO, RunConfig
from batchpredict.errors import (
    BatchPredictError,
    DataError,
    InputMissingError,
    LockHeldError,
    UsageError,
    exit_code_for,
)
from batchpredict.formats.base import BadRecord, ReadOptions, Writer
from batchpredict.formats.registry import check_delimiter, read_options, reader_for, writer_for
from batchpredict.locking import hold_lock
from batchpredict.manifest import Manifest, identify_model, input_identity, prediction_options
from batchpredict.model import LoadedModel, load_model
from batchpredict.observe import (
    Progress,
    get_logger,
    report_lock_held,
    report_run,
    shown_name,
)
from batchpredict.outputs import (
    SUCCESS_MARKER,
    OutputTarget,
    PredictionColumns,
    RejectsWriter,
    output_batch,
    plan_outputs,
    rejects_path,
)
from batchpredict.predictor import Predictor, chunk_rows_for, configure_devices
from batchpredict.sources import InputFile, expand_inputs

#: Converted chunks waiting for the model; the reading thread works on one more.
PREFETCH_CHUNKS = 2
#: Finished output chunks waiting for the writer thread; bounds memory.
WRITE_QUEUE_CHUNKS = 2


@dataclass(frozen=True)
class RunSummary:
    """What a run did: counts, timing and where the results went."""

    rows_in: int
    rows_out: int
    rows_rejected: int
    seconds: float
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: Inputs not read because `--skip_existing` found their output complete.
    skipped: tuple[str, ...]
    rejects_files: tuple[str, ...]
    model: str
    model_version: int | None
    batch_size: int | None
    device: str
    #: Model calls per device: with several (`--device gpu:0,gpu:1`), each gets a share.
    batches_per_device: dict[str, int] = field(default_factory=dict)
    #: Which columns fed which model input (`RunMapping.as_dict`).
    column_mapping: dict[str, Any] | None = None
    rows_per_second: float = field(init=False)

    def __post_init__(self) -> None:
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        object.__setattr__(self, "rows_per_second", round(rate, 1))

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready values."""
        return asdict(self)


@dataclass
class _Counts:
    """Rows read, written and rejected for one output (or, summed, the run)."""

    read: int = 0
    written: int = 0
    rejected: int = 0

    def add(self, other: _Counts) -> None:
        self.read += other.read
        self.written += other.written
        self.rejected += other.rejected


def run(config: RunConfig) -> RunSummary:
    """Predict every input of `config` and commit every output, or raise and commit nothing.

    Invariant: rows read = rows written + rows rejected, and an output exists under its
    final name only if everything in it was written.
    """
    started = time.monotonic()
    totals = _Counts()
    try:
        with hold_lock(config.lock_file):
            if config.engine == "ray":
                summary = _run_on_ray(config, started, totals)
            else:
                summary = _run(config, started, totals)
    except LockHeldError as exc:
        # This run did not run: it says so; the run holding the lock reports its own end.
        report_lock_held(config, str(exc), time.monotonic() - started)
        raise
    except BaseException as exc:
        _report_failure(config, exc, time.monotonic() - started, totals)
        raise
    report_run(config, summary.as_dict(), status="succeeded", exit_code=0, seconds=summary.seconds)
    return summary


def _report_failure(config: RunConfig, exc: BaseException, seconds: float, totals: _Counts) -> None:
    """Metrics and summary of a failed run; never hides the failure being reported."""
    code = int(exit_code_for(exc))
    summary = {
        "rows_in": totals.read,
        "rows_out": totals.written,
        "rows_rejected": totals.rejected,
        "seconds": round(seconds, 3),
        "error": str(exc) or type(exc).__name__,
    }
    try:
        report_run(config, summary, status="failed", exit_code=code, seconds=seconds)
    except BatchPredictError as report_error:
        get_logger().warning("could not write metrics or summary", error=str(report_error))


def _run(config: RunConfig, started: float, totals: _Counts) -> RunSummary:
    inputs = expand_inputs(config.input_files, config.input_format)
    check_delimiter(config.delimiter, ((i.path, i.format) for i in inputs))
    targets = plan_outputs(inputs, config)
    rejects = (
        {
            path: RejectsWriter(path, config.max_output_bytes)
            for path in {rejects_path(t, config) for t in targets}
        }
        if config.on_error == "skip"
        else {}
    )
    run = _start(config, inputs)
    manifest = _open_manifest(config, run.model, run.mapping.as_dict())
    progress = Progress(
        _known_total_rows(inputs, config.chunk_size),
        enabled=config.progress,
        every_seconds=config.progress_every,
    )
    try:
        skipped = _predict_targets(targets, run, config, manifest, rejects, progress, totals)
        progress.close()
    except BaseException as exc:
        progress.close()
        if manifest is not None:
            _flush_manifest(manifest)
        # Bad rows are the diagnosis of a data failure: keep them; otherwise drop them.
        for writer in rejects.values():
            if isinstance(exc, DataError):
                writer.commit()
            else:
                writer.abort()
        raise
    for writer in rejects.values():
        writer.commit()
    summary = RunSummary(
        rows_in=totals.read,
        rows_out=totals.written,
        rows_rejected=totals.rejected,
        seconds=round(time.monotonic() - started, 3),
        inputs=tuple(i.path for i in inputs),
        outputs=tuple(t.path for t in targets),
        skipped=tuple(skipped),
        rejects_files=tuple(rejects),
        model=run.model_name,
        model_version=run.model.source.version,
        batch_size=run.predictor.batch_size,
        device=run.device,
        batches_per_device=dict(run.predictor.batches_per_device),
        column_mapping=run.mapping.as_dict(),
    )
    get_logger().info("run finished", **summary.as_dict())
    return summary


@dataclass(frozen=True)
class _Started:
    """What a local run sets up before it reads: the model, how it is fed, how its
    predictions become columns."""

    model: LoadedModel
    predictor: Predictor
    columns: PredictionColumns
    mapping: RunColumns
    device: str
    #: The model as named in logs and the summary (its URI for a model from a store).
    model_name: str


def _start(config: RunConfig, inputs: list[InputFile]) -> _Started:
    """Load the model on its devices, plan the column mapping, and log `run started`."""
    devices = configure_devices(config.device, config.gpu_memory_limit)
    model = _load(config)
    predictor = Predictor(model, config.batch_size, devices.devices)
    columns = PredictionColumns.from_config(model, config)
    if config.keep_columns is not None:  # the rest are known once the data is
        clashes = [c for c in config.keep_columns if c in columns.column_names]
        columns.refuse_kept(clashes, "--keep_columns", UsageError)
    # A model from a store is named by its URI; the cached copy loaded is logged beside it.
    where = {"model": model.source.path}
    if storage.is_uri(config.model) and config.model != model.source.path:
        where = {"model": config.model, "model_cache": model.source.path}
    mapping = RunColumns(model, config, plan_run_mapping(inputs, model, config))
    get_logger().info(
        "run started",
        **where,
        model_version=model.source.version,
        signature=model.signature,
        inputs=[i.path for i in inputs],
        device=devices.device,
        batch_size=predictor.batch_size or "auto",
        column_mapping=mapping.as_dict(),
        **({"label_output": columns.label_output} if columns.labelled else {}),
    )
    mapping.warn_if_guessed()
    return _Started(model, predictor, columns, mapping, devices.device, where["model"])


def _predict_targets(
    targets: list[OutputTarget],
    run: _Started,
    config: RunConfig,
    manifest: Manifest | None,
    rejects: dict[str, RejectsWriter],
    progress: Progress,
    totals: _Counts,
) -> list[str]:
    """Predict every target in turn (or skip it with `--skip_existing`), recording each in
    the manifest, which is finished with `_SUCCESS`; returns the inputs skipped."""
    skipped: list[str] = []
    for target in targets:
        # Taken before reading: a file that changes during the run is redone next time.
        identities = [input_identity(i) for i in target.inputs] if manifest is not None else []
        if (
            manifest is not None
            and config.skip_existing
            and _already_done(manifest, target, identities)
        ):
            skipped.extend(i.path for i in target.inputs)
            continue
        sink = rejects.get(rejects_path(target, config)) if rejects else None
        counts = _predict_target(
            target, run.mapping, run.predictor, run.columns, config, sink, progress
        )
        totals.add(counts)
        if manifest is not None:
            manifest.record(target, identities, counts.written, counts.rejected)
    if manifest is not None:
        manifest.finish()
    return skipped


def plan_run_mapping(
    inputs: list[InputFile], model: LoadedModel, config: RunConfig
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

    def __init__(self, model: LoadedModel, config: RunConfig, planned: RunMapping | None) -> None:
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
        if self.mapping is not None and self.mapping.guessed_order:
            features = ",".join(self.mapping.read_columns)
            get_logger().warning(
                "feature order taken from the first input",
                features=features,
                first_input=self.mapping.decided_by.removeprefix("the columns of "),
                hint="every input is read by these names; pin the order with --features",
            )


def _open_manifest(
    config: RunConfig, model: LoadedModel, mapping: dict[str, Any] | None = None
) -> Manifest | None:
    """With `--output_dir`: remove the old `_SUCCESS`, identify the model (its files are
    hashed once per run) and start the manifest; `mapping` is the run's column mapping,
    recorded with the prediction options."""
    if config.output_dir is None:
        return None
    # A stale marker from an earlier run must not vouch for a half-updated folder.
    storage.delete(storage.join(config.output_dir, SUCCESS_MARKER))
    identity = identify_model(config.model, model)
    get_logger().info(
        "model identified",
        model=config.model,
        sha256=identity.sha256,
        version=identity.version,
        signature=identity.signature,
        files=identity.files,
        bytes=identity.bytes,
        seconds=identity.seconds,
    )
    return Manifest(
        config.output_dir,
        model=identity,
        options=prediction_options(config, mapping),
        resume=config.skip_existing,
    )


def _already_done(manifest: Manifest, target: OutputTarget, inputs: list[dict[str, Any]]) -> bool:
    """`--skip_existing`: whether a previous run's record covers `target`; logs the
    decision either way, with the reason when the output is made again."""
    reason = manifest.why_redo(target, inputs)
    if reason is None:
        get_logger().info("output already complete, skipped", output=target.path)
        return True
    get_logger().info("output redone", output=target.path, reason=reason)
    return False


def _flush_manifest(manifest: Manifest) -> None:
    """Record the outputs finished before a failure, for `--skip_existing`; a failure to
    do so is logged, never hides the failure being reported."""
    try:
        manifest.flush()
    except BatchPredictError as exc:
        get_logger().warning("could not write the manifest", error=str(exc))


def _run_on_ray(config: RunConfig, started: float, totals: _Counts) -> RunSummary:
    """`--engine ray`: the same run on Ray Data (see `ray_engine`)."""
    from batchpredict import ray_engine

    ray_engine.import_ray()  # without Ray, say how to install it before loading anything
    log = get_logger()
    # Loaded here too, for its inputs: the driver plans the one column mapping of the run.
    model = _load(config)
    inputs = expand_inputs(config.input_files, config.input_format)
    mapping = plan_run_mapping(inputs, model, config)
    assert mapping is not None  # the Ray engine does not read stdin
    log.info(
        "run started",
        engine="ray",
        model=config.model,
        model_version=config.model_version,
        signature=config.signature,
        inputs=list(config.input_files),
        batch_size=config.batch_size or "auto",
        column_mapping=mapping.as_dict(),
    )
    RunColumns(model, config, mapping).warn_if_guessed()
    done = ray_engine.run(config, uuid.uuid4().hex, mapping)
    totals.read, totals.written, totals.rejected = done["read"], done["written"], done["rejected"]
    summary = RunSummary(
        rows_in=totals.read,
        rows_out=totals.written,
        rows_rejected=totals.rejected,
        seconds=round(time.monotonic() - started, 3),
        inputs=done["inputs"],
        outputs=done["outputs"],
        skipped=(),
        rejects_files=done["rejects_files"],
        model=config.model,
        model_version=config.model_version,
        batch_size=config.batch_size,
        device="ray",
        column_mapping=mapping.as_dict(),
    )
    log.info("run finished", **summary.as_dict())
    return summary


@dataclass
class _Chunk:
    """Rows ready for the model: their model-input arrays and the columns to keep."""

    source: str
    kept: pa.Table
    arrays: dict[str, np.ndarray]
    rows: int


def _choose_batch_size(predictor: Predictor, chunk: _Chunk, chunk_size: int) -> None:
    """`--batch_size auto`: measure on the first chunk and log the choice."""
    choice = predictor.choose_batch_size(chunk.arrays, chunk.rows, chunk_size)
    get_logger().info(
        "batch size chosen",
        batch_size=choice.batch_size,
        rows_per_second={str(k): round(v) for k, v in choice.rows_per_second.items()},
        seconds=round(choice.seconds, 3),
    )


def _predict_target(
    target: OutputTarget,
    mapping: RunColumns,
    predictor: Predictor,
    columns: PredictionColumns,
    config: RunConfig,
    rejects: RejectsWriter | None,
    progress: Progress,
) -> _Counts:
    """Stream every input of one target through the model into its writer, then commit.

    The output is committed only if its share of rejected rows is within
    `--max_error_rate`; otherwise it is aborted and the run fails with a data error.
    """
    writer = writer_for(target.path, target.format, config.max_output_bytes)
    nested = writer.supports_nested
    counts = _Counts()
    sink = _BackgroundWriter(writer)
    chunk_rows = chunk_rows_for(config.chunk_size, predictor.batch_size, mapping.model)
    choosing = predictor.batch_size is None
    chunks = Prefetch(
        functools.partial(_chunks, target.inputs, mapping, chunk_rows, config, counts, rejects),
        depth=PREFETCH_CHUNKS,
        hold_after_first=choosing,  # reading would skew the timing
    )
    try:
        for chunk in chunks:
            if choosing:
                _choose_batch_size(predictor, chunk, config.chunk_size)
                chunks.release()
                choosing = False
            predictions = predictor.predict_arrays(chunk.arrays, chunk.rows)
            results = columns.build(predictions, nested)
            sink.put(output_batch(chunk.kept, results, nested, chunk.source, columns))
            progress.update(chunk.rows)
        sink.close()
        if counts.rejected > config.max_error_rate * counts.read:
            raise DataError(
                f"{counts.rejected} of {counts.read} rows rejected for {target.path} "
                f"({counts.rejected / max(counts.read, 1):.2%}), more than --max_error_rate "
                f"{config.max_error_rate:.2%}; the output was not written"
                + (f"; the bad rows are in {rejects.path}" if rejects else "")
            )
        writer.commit()
    except BaseException:
        chunks.close()  # stops the reading thread
        sink.abandon()
        writer.abort()
        raise
    counts.written = writer.rows_written
    return counts


def _chunks(
    inputs: tuple[InputFile, ...],
    run_columns: RunColumns,
    chunk_rows: int,
    config: RunConfig,
    counts: _Counts,
    rejects: RejectsWriter | None,
) -> Iterator[_Chunk]:
    """Read, map and convert the inputs chunk by chunk, ready for the model.

    Bad rows stop the run (`--on_error fail`) or go to the rejects file and are left out.
    Runs on the prefetch thread, which re-raises its exceptions in order.
    """
    for source in inputs:
        # Records the reader could not parse, by record number, for the row numbers
        # of the rows after them (only with --on_error skip).
        dropped: list[int] = []
        sink = None if rejects is None else _bad_record_sink(source.path, rejects, counts, dropped)
        numbers = functools.partial(run_columns.read_types, source=source.path)
        reader = reader_for(source.path, source.format, read_options(config, sink, numbers))
        mapping: ColumnMapping | None = None
        first_row = 0
        for table in rechunk(reader.iter_batches(), chunk_rows):
            if mapping is None:
                mapping = run_columns.for_file(table.schema, source.path, reader.declares_types)
            converted = to_model_arrays(table, mapping, source.path, config.fill_value)
            counts.read += table.num_rows
            kept = table.select(list(mapping.kept))
            if converted.problems:
                rows = file_rows(first_row, table.num_rows, dropped)
                if rejects is None:
                    first = converted.problems[0]
                    raise DataError(
                        f"{source.path}: row {rows[first.index]}, column {first.column!r}: "
                        f"{first.reason}"
                    )
                rejects.add(source.path, rows, table, converted.problems)
                counts.rejected += len(converted.problems)
                assert converted.good is not None
                kept = kept.filter(pa.array(converted.good))
            first_row += table.num_rows
            if converted.rows:
                yield _Chunk(source.path, kept, converted.arrays, converted.rows)
        if first_row == 0 and not dropped:
            raise InputMissingError(f"{source.path}: holds no data rows")


def _known_total_rows(inputs: list[InputFile], chunk_size: int) -> int | None:
    """All inputs' rows when every format records it (Parquet), for progress and ETA."""
    total = 0
    for source in inputs:
        if source.path == "-":
            return None
        rows = reader_for(
            source.path, source.format, ReadOptions(chunk_size=chunk_size)
        ).total_rows()
        if rows is None:
            return None
        total += rows
    return total


def _bad_record_sink(
    source: str, rejects: RejectsWriter, counts: _Counts, dropped: list[int]
) -> Callable[[BadRecord], None]:
    """What a reader calls for a record it could not parse: count it, keep it, note its row."""

    def on_bad_record(record: BadRecord) -> None:
        dropped.append(record.row)
        rejects.add_record(source, record)
        counts.read += 1
        counts.rejected += 1

    return on_bad_record


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


class _BackgroundWriter:
    """Runs a writer on its own thread so that encoding overlaps prediction."""

    _DONE = object()

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=WRITE_QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._schema: pa.Schema | None = None
        self._thread = threading.Thread(target=self._loop, name="batchpredict-writer", daemon=True)
        self._thread.start()

    def put(self, batch: pa.RecordBatch) -> None:
        """Queue a batch; re-raise the writer's failure as soon as it is known."""
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def close(self) -> None:
        """Wait until everything queued is written; re-raise the writer's failure."""
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stop the thread without writing what is still queued."""
        self._error = self._error or RuntimeError("abandoned")
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(self._DONE)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if self._error is not None:
                continue  # drain after a failure so the producer never blocks
            try:
                self._write(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                self._error = exc

    def _write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._schema = batch.schema
            self._writer.open(batch.schema)
        elif not batch.schema.equals(self._schema):
            batch = _conform(batch, self._schema)
        self._writer.write(batch)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a later input's batch to the first input's output schema, or explain why not."""
    if batch.schema.names != schema.names:
        raise DataError(
            f"inputs written to one output have different columns: {', '.join(schema.names)} "
            f"vs {', '.join(batch.schema.names)}; use --output_dir for one output per input"
        )
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"inputs written to one output have different column types: {exc}") from exc


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
    from batchpredict.model import describe

    return describe(load_model(model, signature=signature, version=version, unsafe=unsafe))


def inspect(config: RunConfig) -> list[str]:
    """The model, the column mapping predict would plan for `config`, and for each input
    whether it supplies it and which columns would be kept."""
    from batchpredict.model import describe

    model = _load(config)
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


def _load(config: RunConfig) -> LoadedModel:
    return load_model(
        config.model,
        signature=config.signature,
        version=config.model_version,
        unsafe=config.unsafe_model_load,
    )


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
    model = _load(config)
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
            where = "records" if column is None else f"column {column!r}"
            found.append(
                f"{source.path}: {where}: {len(reasons)} of {checked} rows checked are bad; "
                f"first, row {first}: {reasons[first]}"
            )
    elif rejected > config.max_error_rate * checked:
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
    where = f"row {row}" + (f", column {column!r}" if column else "")
    return f"{where}: {bad[column or None][row]}"
