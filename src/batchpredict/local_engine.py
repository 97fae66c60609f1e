"""The local engine: read -> score -> write, overlapped on threads of this process.

Three stages overlap: a reading thread reads and prepares the next chunks for the model
(`scoring.prepare`) while the model scores the current one (`Scorer.score`), and a
writer thread encodes and writes finished chunks. Each output is committed (renamed into
place) only after all its rows were written; any failure aborts it, leaving the previous
output untouched.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict import storage
from batchpredict.batching import Prefetch, rechunk
from batchpredict.columns import ColumnMapping
from batchpredict.config import RunConfig
from batchpredict.conversion import RowProblem, to_model_arrays
from batchpredict.errors import BatchPredictError, DataError, UsageError
from batchpredict.formats.base import BadRecord, ReadOptions, Writer
from batchpredict.formats.registry import check_delimiter, read_options, reader_for, writer_for
from batchpredict.manifest import Manifest, identify_model, input_identity, prediction_options
from batchpredict.model import LoadedModel
from batchpredict.observe import Progress, get_logger
from batchpredict.outputs import (
    SUCCESS_MARKER,
    OutputTarget,
    RejectsWriter,
    plan_outputs,
    rejects_path,
)
from batchpredict.predictor import Predictor, chunk_rows_for, devices_for
from batchpredict.scoring import (
    FileRows,
    Ready,
    RejectSink,
    RunColumns,
    Scorer,
    check_error_rate,
    plan_run_mapping,
    scorer_for,
    sift,
)
from batchpredict.sources import InputFile, expand_inputs
from batchpredict.summary import Counts, RunState, RunSummary

#: Converted chunks waiting for the model; the reading thread works on one more.
PREFETCH_CHUNKS = 2
#: Finished output chunks waiting for the writer thread; bounds memory.
WRITE_QUEUE_CHUNKS = 2


def run(config: RunConfig, state: RunState) -> RunSummary:
    """Predict every input into its output, counting into `state` as it goes."""
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
    state.before_model(config)
    setup = _start(config, inputs)
    manifest = _open_manifest(config, setup.scorer.model, setup.mapping.as_dict())
    progress = Progress(
        _known_total_rows(inputs, config.chunk_size),
        enabled=config.progress,
        every_seconds=config.progress_every,
    )
    try:
        skipped = _predict_targets(
            targets, setup, config, manifest, rejects, progress, state.totals
        )
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
    return state.summary(
        inputs=tuple(i.path for i in inputs),
        outputs=tuple(t.path for t in targets),
        skipped=tuple(skipped),
        rejects_files=tuple(rejects),
        model=setup.model_name,
        model_version=setup.scorer.model.source.version,
        batch_size=setup.scorer.predictor.batch_size,
        device=setup.device,
        batches_per_device=dict(setup.scorer.predictor.batches_per_device),
        column_mapping=setup.mapping.as_dict(),
    )


@dataclass(frozen=True)
class _Started:
    """What a local run sets up before it reads: what scores, and how columns are mapped."""

    scorer: Scorer
    mapping: RunColumns
    device: str
    #: The model as named in logs and the summary (its URI for a model from a store).
    model_name: str


def _start(config: RunConfig, inputs: list[InputFile]) -> _Started:
    """Load the model on its devices, plan the column mapping, and log `run started`."""
    devices = devices_for(config.device)
    scorer = scorer_for(config, devices.devices)
    model, columns = scorer.model, scorer.columns
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
        batch_size=scorer.predictor.batch_size or "auto",
        column_mapping=mapping.as_dict(),
        **({"label_output": columns.label_output} if columns.labelled else {}),
    )
    mapping.warn_if_guessed()
    return _Started(scorer, mapping, devices.device, where["model"])


def _predict_targets(
    targets: list[OutputTarget],
    run: _Started,
    config: RunConfig,
    manifest: Manifest | None,
    rejects: dict[str, RejectsWriter],
    progress: Progress,
    totals: Counts,
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
        counts = _predict_target(target, run, config, sink, progress)
        totals.add(counts)
        if manifest is not None:
            manifest.record(target, identities, counts.written, counts.rejected)
    if manifest is not None:
        manifest.finish()
    return skipped


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


def _choose_batch_size(predictor: Predictor, chunk: Ready, chunk_size: int) -> None:
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
    run: _Started,
    config: RunConfig,
    rejects: RejectsWriter | None,
    progress: Progress,
) -> Counts:
    """Stream every input of one target through the model into its writer, then commit.

    The output is committed only if its share of rejected rows is within
    `--max_error_rate`; otherwise it is aborted and the run fails with a data error.
    """
    writer = writer_for(target.path, target.format, config.max_output_bytes)
    nested = writer.supports_nested
    counts = Counts()
    sink = _BackgroundWriter(writer)
    predictor = run.scorer.predictor
    chunk_rows = chunk_rows_for(config.chunk_size, predictor.batch_size, run.scorer.model)
    choosing = predictor.batch_size is None
    chunks = Prefetch(
        functools.partial(_chunks, target.inputs, run.mapping, chunk_rows, config, counts, rejects),
        depth=PREFETCH_CHUNKS,
        hold_after_first=choosing,  # reading would skew the timing
    )
    try:
        for chunk in chunks:
            if choosing:
                _choose_batch_size(predictor, chunk, config.chunk_size)
                chunks.release()
                choosing = False
            sink.put(run.scorer.score(chunk, nested))
            progress.update(chunk.rows)
        sink.close()
        check_error_rate(
            counts.rejected,
            counts.read,
            config.max_error_rate,
            of=f" for {target.path}",
            consequence="the output was not written"
            + (f"; the bad rows are in {rejects.path}" if rejects else ""),
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
    counts: Counts,
    rejects: RejectsWriter | None,
) -> Iterator[Ready]:
    """Read, map and convert the inputs chunk by chunk, ready for the model.

    Bad rows stop the run (`--on_error fail`) or go to the rejects file and are left out.
    Runs on the prefetch thread, which re-raises its exceptions in order.
    """
    for source in inputs:
        rows = FileRows(source.path, None if rejects is None else _keep_record(rejects, counts))
        numbers = functools.partial(run_columns.read_types, source=source.path)
        options = read_options(config, None if rejects is None else rows.on_bad_record, numbers)
        reader = reader_for(source.path, source.format, options)
        reject = None if rejects is None else _reject_rows(source.path, rejects, counts)
        mapping: ColumnMapping | None = None
        for table in rechunk(reader.iter_batches(), chunk_rows):
            if mapping is None:
                mapping = run_columns.for_file(table.schema, source.path, reader.declares_types)
            converted = to_model_arrays(table, mapping, source.path, config.fill_value)
            counts.read += table.num_rows
            numbers_in_file = rows.next(table.num_rows)
            ready = sift(
                table, mapping, converted, numbers_in_file, source=source.path, reject=reject
            )
            if ready.rows:
                yield ready
        rows.check_not_empty()


def _keep_record(rejects: RejectsWriter, counts: Counts) -> Callable[[str, BadRecord], None]:
    """Keeps a record the reader could not parse in the rejects file, counted as read."""

    def keep(source: str, record: BadRecord) -> None:
        rejects.add_record(source, record)
        counts.read += 1
        counts.rejected += 1

    return keep


def _reject_rows(source: str, rejects: RejectsWriter, counts: Counts) -> RejectSink:
    """Keeps a chunk's bad rows in the rejects file, counted."""

    def reject(table: pa.Table, rows: np.ndarray, problems: Sequence[RowProblem]) -> None:
        rejects.add(source, rows, table, problems)
        counts.rejected += len(problems)

    return reject


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
