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
from batchpredict.columns import ColumnMapping, plan_mapping, read_types, to_model_arrays
from batchpredict.config import RunConfig
from batchpredict.errors import (
    BatchPredictError,
    DataError,
    InputMissingError,
    LockHeldError,
    exit_code_for,
)
from batchpredict.formats.base import BadRecord, ReadOptions, Writer
from batchpredict.formats.registry import check_delimiter, reader_for, writer_for
from batchpredict.locking import hold_lock
from batchpredict.model import LoadedModel, TensorInfo, load_model
from batchpredict.observe import Progress, get_logger, write_metrics, write_summary
from batchpredict.outputs import (
    SUCCESS_MARKER,
    Manifest,
    OutputTarget,
    PredictionColumns,
    RejectsWriter,
    input_fingerprint,
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
    except LockHeldError:
        raise  # the run that holds the lock reports for the job
    except BaseException as exc:
        _report_failure(config, exc, time.monotonic() - started, totals)
        raise
    _report(config, summary.as_dict(), succeeded=True, exit_code=0, seconds=summary.seconds)
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
        _report(config, summary, succeeded=False, exit_code=code, seconds=seconds)
    except BatchPredictError as report_error:
        get_logger().warning("could not write metrics or summary", error=str(report_error))


def _report(
    config: RunConfig, summary: dict[str, Any], *, succeeded: bool, exit_code: int, seconds: float
) -> None:
    """Write `--metrics_file` and `--summary_file`, when asked for."""
    if config.metrics_file is not None:
        write_metrics(
            config.metrics_file,
            job=config.job_name,
            succeeded=succeeded,
            finished_at=time.time(),
            duration_seconds=seconds,
            rows=int(summary["rows_in"]),
            rejected_rows=int(summary["rows_rejected"]),
            exit_code=exit_code,
        )
    if config.summary_file is not None:
        status = "succeeded" if succeeded else "failed"
        write_summary(config.summary_file, {"status": status, "exit_code": exit_code, **summary})


def _run(config: RunConfig, started: float, totals: _Counts) -> RunSummary:
    log = get_logger()
    inputs = expand_inputs(config.input_files, config.input_format)
    check_delimiter(config.delimiter, ((i.path, i.format) for i in inputs))
    targets = plan_outputs(inputs, config)
    rejects = (
        {path: RejectsWriter(path) for path in {rejects_path(t, config) for t in targets}}
        if config.on_error == "skip"
        else {}
    )
    devices = configure_devices(config.device, config.gpu_memory_limit)
    model = load_model(
        config.model,
        signature=config.signature,
        version=config.model_version,
        unsafe=config.unsafe_model_load,
    )
    predictor = Predictor(model, config.batch_size, devices.devices)
    columns = PredictionColumns.for_model(
        model, config.prediction_column, config.class_names, config.threshold
    )
    # A model from a store is named by its URI; the cached copy loaded is logged beside it.
    where = {"model": model.source.path}
    if storage.is_uri(config.model) and config.model != model.source.path:
        where = {"model": config.model, "model_cache": model.source.path}
    log.info(
        "run started",
        **where,
        model_version=model.source.version,
        signature=model.signature,
        inputs=[i.path for i in inputs],
        device=devices.device,
        batch_size=predictor.batch_size or "auto",
    )
    manifest: Manifest | None = None
    if config.output_dir is not None:
        # A stale marker from an earlier run must not vouch for a half-updated folder.
        storage.delete(storage.join(config.output_dir, SUCCESS_MARKER))
        manifest = Manifest(config.output_dir, resume=config.skip_existing)
    skipped: list[str] = []
    progress = Progress(
        _known_total_rows(inputs, config.chunk_size),
        enabled=config.progress,
        every_seconds=config.progress_every,
    )
    try:
        for target in targets:
            # Taken before reading: a file that changes during the run is redone next time.
            fingerprints = (
                [input_fingerprint(i) for i in target.inputs] if manifest is not None else []
            )
            if (
                manifest is not None
                and config.skip_existing
                and manifest.already_done(target, fingerprints)
            ):
                log.info("output already complete, skipped", output=target.path)
                skipped.extend(i.path for i in target.inputs)
                continue
            sink = rejects.get(rejects_path(target, config)) if rejects else None
            counts = _predict_target(target, model, predictor, columns, config, sink, progress)
            totals.add(counts)
            if manifest is not None:
                manifest.record(target, fingerprints, counts.written, counts.rejected)
        if manifest is not None:
            manifest.finish()
        progress.close()
    except BaseException as exc:
        progress.close()
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
        model=where["model"],
        model_version=model.source.version,
        batch_size=predictor.batch_size,
        device=devices.device,
        batches_per_device=dict(predictor.batches_per_device),
    )
    log.info("run finished", **summary.as_dict())
    return summary


def _run_on_ray(config: RunConfig, started: float, totals: _Counts) -> RunSummary:
    """`--engine ray`: the same run on Ray Data (see `ray_engine`)."""
    from batchpredict import ray_engine

    log = get_logger()
    log.info(
        "run started",
        engine="ray",
        model=config.model,
        model_version=config.model_version,
        signature=config.signature,
        inputs=list(config.input_files),
        batch_size=config.batch_size or "auto",
    )
    done = ray_engine.run(config, uuid.uuid4().hex)
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
    model: LoadedModel,
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
    writer = writer_for(target.path, target.format)
    nested = writer.supports_nested
    counts = _Counts()
    sink = _BackgroundWriter(writer)
    chunk_rows = chunk_rows_for(config.chunk_size, predictor.batch_size, model)
    choosing = predictor.batch_size is None
    chunks = Prefetch(
        functools.partial(_chunks, target.inputs, model, chunk_rows, config, counts, rejects),
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
            sink.put(output_batch(chunk.kept, results, nested, chunk.source))
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
    model: LoadedModel,
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
        options = ReadOptions(
            chunk_size=config.chunk_size,
            on_bad_record=(
                _bad_record_sink(source.path, rejects, counts, dropped)
                if rejects is not None
                else None
            ),
            column_types=model_column_types(model.inputs, source.path, config),
            null_values=config.null_values,
            delimiter=config.delimiter,
            reject_nulls=config.fill_value is None,
        )
        reader = reader_for(source.path, source.format, options)
        mapping: ColumnMapping | None = None
        first_row = 0
        for table in rechunk(reader.iter_batches(), chunk_rows):
            if mapping is None:
                mapping = plan_mapping(
                    model.inputs,
                    table.schema,
                    source.path,
                    config.features,
                    config.keep_columns,
                )
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


def model_column_types(
    inputs: tuple[TensorInfo, ...], source: str, config: RunConfig
) -> Callable[[pa.Schema], dict[str, pa.DataType]]:
    """`ReadOptions.column_types` for one input: the scalar columns the model reads as
    numbers, by the mapping planned from the file's first block (list columns excluded).
    A mapping that fails reads no column as the model's: it fails again, as before, when
    planned on the first chunk (after the reader's own errors about its first rows)."""

    def column_types(schema: pa.Schema) -> dict[str, pa.DataType]:
        try:
            mapping = plan_mapping(inputs, schema, source, config.features, config.keep_columns)
        except DataError:
            return {}
        types = read_types(mapping)
        return {n: t for n, t in types.items() if not pa.types.is_nested(schema.field(n).type)}

    return column_types


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


def _first_chunk(source: InputFile, chunk_size: int) -> pa.Table:
    """The first chunk of an input (for `inspect` and `validate`)."""
    reader = reader_for(source.path, source.format, ReadOptions(chunk_size=chunk_size))
    for table in rechunk(reader.iter_batches(), chunk_size):
        return table
    raise InputMissingError(f"{source.path}: holds no data rows")


def inspect(
    *,
    model: str,
    signature: str = "serving_default",
    version: int | None = None,
    unsafe: bool = False,
    input_files: tuple[str, ...] = (),
    input_format: str | None = None,
    features: tuple[str, ...] | None = None,
    keep_columns: tuple[str, ...] | None = None,
) -> list[str]:
    """Lines describing the model and, for each input given, the column mapping."""
    from batchpredict.model import describe

    loaded = load_model(model, signature=signature, version=version, unsafe=unsafe)
    lines = describe(loaded)
    for source in expand_inputs(input_files, input_format) if input_files else []:
        table = _first_chunk(source, 1024)
        mapping = plan_mapping(loaded.inputs, table.schema, source.path, features, keep_columns)
        lines.append(f"mapping for {source.path} ({source.format}):")
        lines.extend(f"  {line}" for line in mapping.describe())
    return lines


@dataclass(frozen=True)
class ValidationReport:
    """What `validate` found: a line per input checked, and every problem."""

    lines: tuple[str, ...]
    problems: tuple[str, ...]


def validate(
    *,
    model: str,
    input_files: tuple[str, ...],
    signature: str = "serving_default",
    version: int | None = None,
    unsafe: bool = False,
    input_format: str | None = None,
    features: tuple[str, ...] | None = None,
    keep_columns: tuple[str, ...] | None = None,
    chunk_size: int = 65536,
) -> ValidationReport:
    """Check each input's first chunk against the model, collecting every problem found.

    Each model input is converted on its own, so one bad column does not hide another.
    """
    loaded = load_model(model, signature=signature, version=version, unsafe=unsafe)
    lines: list[str] = []
    problems: list[str] = []
    for source in expand_inputs(input_files, input_format):
        try:
            table = _first_chunk(source, chunk_size)
            mapping = plan_mapping(loaded.inputs, table.schema, source.path, features, keep_columns)
        except DataError as exc:
            problems.append(str(exc))
            continue
        found = []
        for binding in mapping.bindings:
            single = ColumnMapping((binding,), ())
            try:
                converted = to_model_arrays(table, single, source.path)
            except DataError as exc:
                found.append(str(exc))
                continue
            if converted.problems:
                first = converted.problems[0]
                found.append(
                    f"{source.path}: column {first.column!r}: {len(converted.problems)} of "
                    f"{table.num_rows} rows checked are bad; first, row {first.index + 1}: "
                    f"{first.reason}"
                )
        problems.extend(found)
        if not found:
            lines.append(f"ok: {source.path} ({table.num_rows} rows checked)")
    return ValidationReport(tuple(lines), tuple(problems))
