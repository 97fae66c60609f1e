"""The local engine: read -> score -> write, overlapped on threads of this process.

Three stages overlap, each on one thread for the whole run: a reading thread reads and
prepares the next chunks for the model while the model scores the current ones, and a
writer thread (`output_thread`) encodes finished chunks and commits outputs. Rows of
consecutive small inputs are scored together and split back per output. Each output is
committed (renamed into place) only after all its rows were written; any failure aborts
it, leaving the previous output untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict import shards, storage
from batchpredict.batching import Prefetch
from batchpredict.config import RunConfig
from batchpredict.errors import BatchPredictError, DataError, UsageError
from batchpredict.formats.base import ReadOptions
from batchpredict.formats.registry import (
    check_delimiter,
    check_delta_inputs,
    read_options,
    reader_for,
    writer_for,
)
from batchpredict.manifest import Manifest, identify_model, input_identity, prediction_options
from batchpredict.model import LoadedModel
from batchpredict.observe import Progress, get_logger
from batchpredict.output_thread import Action, OutputThread, PendingOutput
from batchpredict.outputs import (
    SUCCESS_MARKER,
    OutputTarget,
    RejectsWriter,
    plan_outputs,
    rejects_path,
)
from batchpredict.predictions import output_batch
from batchpredict.predictor import Predictor, chunk_rows_for, devices_for
from batchpredict.reading import End, Event, Piece, Reading
from batchpredict.run_stats import StatsRun, compact
from batchpredict.scoring import (
    Ready,
    RunColumns,
    Scorer,
    check_error_rate,
    plan_run_mapping,
    scorer_for,
)
from batchpredict.sources import InputFile, expand_inputs
from batchpredict.summary import Counts, RunState, RunSummary

#: Pieces (converted chunks, or whole small inputs) and ends of outputs waiting for the
#: model; the reading thread works on one more.
PREFETCH_EVENTS = 2
#: Scored chunks (each a group of output batches) waiting for the writer thread; bounds
#: memory.
WRITE_QUEUE_CHUNKS = 2


def run(config: RunConfig, state: RunState) -> RunSummary:
    """Predict every input into its output, counting into `state` as it goes."""
    listing = expand_inputs(config.input_files, config.input_format)
    shard = shards.of(config.shard_index, config.shard_count)
    inputs = listing if shard is None else shards.take(listing, shard)
    check_delimiter(config.delimiter, ((i.path, i.format) for i in inputs))
    check_delta_inputs(config, ((i.path, i.format) for i in inputs))
    targets = plan_outputs(inputs, config)
    rejects = _rejects_writers(targets, config)
    stats = StatsRun(config) if config.collects_stats else None  # reads --baseline
    state.before_model(config)
    setup = _start(config, inputs, stats, listing)
    manifest = _open_manifest(config, setup.scorer.model, setup.mapping.as_dict(), listing)
    progress = Progress(
        _known_total_rows(inputs, read_options(config)),
        enabled=config.progress,
        every_seconds=config.progress_every,
    )
    try:
        skipped = _predict_targets(
            targets, setup, config, manifest, rejects, progress, state.totals
        )
        progress.close()
        statistics = _finish_stats(stats, setup, manifest, inputs, state)
        if manifest is not None:
            _finish_manifest(manifest, statistics)
    except BaseException as exc:
        progress.close()
        if manifest is not None:
            _flush_manifest(manifest)
        # Bad rows are the diagnosis of a data failure: keep them; otherwise drop them.
        _end_rejects(rejects, keep=isinstance(exc, DataError))
        raise
    _end_rejects(rejects, keep=True)
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
        prefetch=setup.scorer.predictor.prefetch,
        column_mapping=setup.mapping.as_dict(),
        statistics=None if statistics is None else compact(statistics),
        drift=None if statistics is None else statistics["drift"],
        shard=None if shard is None else {"index": shard.index, "count": shard.count},
    )


def _rejects_writers(targets: list[OutputTarget], config: RunConfig) -> dict[str, RejectsWriter]:
    """One rejects file per rejects path of the outputs, with `--on_error skip`."""
    if config.on_error != "skip":
        return {}
    paths = {rejects_path(t, config) for t in targets}
    return {path: RejectsWriter(path, config.max_output_bytes) for path in paths}


def _end_rejects(rejects: dict[str, RejectsWriter], *, keep: bool) -> None:
    """Commit the rejects files (`keep`), or remove what they staged."""
    for writer in rejects.values():
        if keep:
            writer.commit()
        else:
            writer.abort()


def _finish_stats(
    stats: StatsRun | None,
    setup: _Started,
    manifest: Manifest | None,
    inputs: list[InputFile],
    state: RunState,
) -> dict[str, Any] | None:
    """Write the run's statistics (before `_SUCCESS`); None when none were gathered."""
    if stats is None:
        return None
    mapping = setup.mapping.mapping
    return stats.finish(
        model=setup.model_name,
        sha256=(
            identify_model(setup.model_name, setup.scorer.model).sha256
            if manifest is None
            else manifest.model.sha256
        ),
        inputs=[i.path for i in inputs],
        counts=state.totals,
        seconds=time.monotonic() - state.started,
        features=() if mapping is None else mapping.read_columns,
    )


def _finish_manifest(manifest: Manifest, statistics: dict[str, Any] | None) -> None:
    """Write the manifest, then `_SUCCESS`; past `--max_drift` the outputs stand (the
    manifest records them) but the folder is not marked complete."""
    drift = None if statistics is None else statistics["drift"]
    if drift and drift["exceeded"]:
        manifest.flush()
    else:
        manifest.finish()


@dataclass(frozen=True)
class _Started:
    """What a local run sets up before it reads: what scores, and how columns are mapped."""

    scorer: Scorer
    mapping: RunColumns
    device: str
    #: The model as named in logs and the summary (its URI for a model from a store).
    model_name: str


def _start(
    config: RunConfig, inputs: list[InputFile], stats: StatsRun | None, listing: list[InputFile]
) -> _Started:
    """Load the model on its devices, plan the column mapping (from the job's first input,
    so that every shard plans the same), and log `run started`."""
    devices = devices_for(config.device)
    scorer = scorer_for(config, devices.devices, None if stats is None else stats.collector)
    model, columns = scorer.model, scorer.columns
    if config.keep_columns is not None:  # the rest are known once the data is
        clashes = [c for c in config.keep_columns if c in columns.column_names]
        columns.refuse_kept(clashes, "--keep_columns", UsageError)
    # A model from a store is named by its URI; the cached copy loaded is logged beside it.
    where = {"model": model.source.path}
    if storage.is_uri(config.model) and config.model != model.source.path:
        where = {"model": config.model, "model_cache": model.source.path}
    mapping = RunColumns(model, config, plan_run_mapping(listing, model, config))
    get_logger().info(
        "run started",
        **where,
        model_version=model.source.version,
        signature=model.signature,
        inputs=[i.path for i in inputs],
        device=devices.device,
        prefetch=scorer.predictor.prefetch,
        batch_size=scorer.predictor.batch_size or "auto",
        column_mapping=mapping.as_dict(),
        **({"label_output": columns.label_output} if columns.labelled else {}),
    )
    mapping.warn_if_guessed()
    if stats is not None and mapping.mapping is not None:
        stats.check_features(mapping.mapping.read_columns)
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
    """Predict every target (or skip it with `--skip_existing`), recording each in the
    manifest as it is committed; returns the inputs skipped."""
    skipped: list[str] = []
    outputs: list[PendingOutput] = []
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
        writer = writer_for(target.path, target.format, config.max_output_bytes, config.output_mode)
        outputs.append(PendingOutput(target, writer, identities))

    def committed(output: PendingOutput) -> None:
        totals.add(output.counts)
        if manifest is not None:
            counts = output.counts
            manifest.record(
                output.target, output.inputs, counts.written, counts.rejected, output.writer.content
            )

    if outputs:
        _predict_outputs(outputs, run, config, rejects, progress, committed)
    return skipped


def _open_manifest(
    config: RunConfig,
    model: LoadedModel,
    mapping: dict[str, Any] | None = None,
    listing: list[InputFile] | None = None,
) -> Manifest | None:
    """With `--output_dir`: remove the old `_SUCCESS`, identify the model (its files are
    hashed once per run) and start the manifest; `mapping` is the run's column mapping,
    recorded with the prediction options; a shard's manifest is its part of the plan
    made from the job's `listing`."""
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
    shard = shards.of(config.shard_index, config.shard_count)
    return Manifest(
        config.output_dir,
        model=identity,
        options=prediction_options(config, mapping),
        resume=config.skip_existing,
        shard=shard,
        listing="" if shard is None else shards.listing_digest(listing or [], shard),
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


def _predict_outputs(
    outputs: list[PendingOutput],
    run: _Started,
    config: RunConfig,
    rejects: dict[str, RejectsWriter],
    progress: Progress,
    committed: Callable[[PendingOutput], None],
) -> None:
    """Stream the inputs of every output through the model into its writer, in order, on
    one reading thread and one writer thread for the whole run.

    Rows of consecutive small inputs share a model call: pieces are gathered until they
    hold a chunk of rows, scored together and split back per output. Each output is
    committed only once all its rows are written and its share of rejected rows is
    within `--max_error_rate`; a failure aborts the output under way, and the outputs
    read to the end before it are still committed.
    """
    predictor = run.scorer.predictor
    chunk_rows = chunk_rows_for(config.chunk_size, predictor.batch_size, run.scorer.model)
    choosing = predictor.batch_size is None
    events = Prefetch(
        functools.partial(Reading(run.mapping, chunk_rows, config, rejects).events, outputs),
        depth=PREFETCH_EVENTS,
        hold_after_first=choosing,  # reading would skew the timing
    )
    writing = OutputThread(committed, WRITE_QUEUE_CHUNKS)
    score = functools.partial(_score, run=run, config=config, rejects=rejects, progress=progress)
    group: list[Event] = []
    rows = 0
    try:
        for event in events:
            group.append(event)
            rows += event.ready.rows if isinstance(event, Piece) else 0
            if choosing and rows >= chunk_rows:
                # On the first chunk of rows, several small inputs' pieces together: on
                # one small input's rows, sizes above its rows could not be timed.
                _choose_batch_size(predictor, _first_chunk(group), config.chunk_size)
                choosing = False
            events.release()  # held after its first event, a piece or not
            if rows >= chunk_rows:
                full, group, rows = group, [], 0  # scored once, even if scoring fails
                score(full, writing)
        last, group = group, []
        if choosing and any(isinstance(event, Piece) for event in last):
            _choose_batch_size(predictor, _first_chunk(last), config.chunk_size)
        score(last, writing)
        writing.close()
    except BaseException:
        events.close()  # stops the reading thread
        _commit_finished(group, score, writing)
        writing.stop()
        raise


def _first_chunk(group: list[Event]) -> Ready:
    """The pieces of `group` as one chunk to time batch sizes on (the largest piece when
    their arrays do not stack)."""
    readies = [event.ready for event in group if isinstance(event, Piece)]
    if len(readies) == 1 or not _stackable(readies):
        return max(readies, key=lambda ready: ready.rows)
    arrays = {name: np.concatenate([r.arrays[name] for r in readies]) for name in readies[0].arrays}
    rows = sum(ready.rows for ready in readies)
    return Ready(readies[0].source, readies[0].kept, arrays, rows)


def _commit_finished(group: list[Event], score: Callable[..., None], writing: OutputThread) -> None:
    """While failing: score and commit the outputs of `group` read to their end."""
    ends = [i for i, event in enumerate(group) if isinstance(event, End)]
    if not ends:
        return
    try:
        score(group[: ends[-1] + 1], writing, check=False)
    except Exception as exc:  # noqa: BLE001 - the failure being raised says more
        get_logger().warning("outputs read before the failure not committed", error=str(exc))


def _score(
    group: list[Event],
    writing: OutputThread,
    *,
    run: _Started,
    config: RunConfig,
    rejects: dict[str, RejectsWriter],
    progress: Progress,
    check: bool = True,
) -> None:
    """Score the pieces of `group` and queue their batches, and the commits of the outputs
    that ended in it, for the writer thread, in order."""
    pieces = [event for event in group if isinstance(event, Piece)]
    batches = iter(_score_pieces(run.scorer, pieces))
    actions: list[Action] = []
    try:
        for event in group:
            if isinstance(event, Piece):
                actions.append((event.output, next(batches)))
                progress.update(event.ready.rows)
                continue
            sink = rejects.get(rejects_path(event.output.target, config)) if rejects else None
            counts = event.output.counts
            check_error_rate(
                counts.rejected,
                counts.read,
                config.max_error_rate,
                of=f" for {event.output.target.path}",
                consequence="the output was not written"
                + (f"; the bad rows are in {sink.path}" if sink else ""),
            )
            actions.append((event.output, None))
    except BaseException:
        writing.put(actions, check=False)  # the outputs before still commit
        raise
    writing.put(actions, check=check)


def _score_pieces(scorer: Scorer, pieces: list[Piece]) -> list[pa.RecordBatch]:
    """One output batch per piece, from one model call over all of them when they stack."""
    if len(pieces) < 2 or not _stackable([p.ready for p in pieces]):
        return [scorer.score(p.ready, p.output.writer.supports_nested) for p in pieces]
    first = pieces[0].ready.arrays
    arrays = {name: np.concatenate([p.ready.arrays[name] for p in pieces]) for name in first}
    predictions = scorer.predictor.predict_arrays(arrays, sum(p.ready.rows for p in pieces))
    batches = []
    start = 0
    for piece in pieces:
        stop = start + piece.ready.rows
        nested = piece.output.writer.supports_nested
        share = {k: v[start:stop] for k, v in predictions.items()}
        columns = scorer.columns.build(share, nested)
        scorer.observe(piece.ready, share, columns)
        kept, source = piece.ready.kept, piece.ready.source
        batches.append(output_batch(kept, columns, nested, source, scorer.columns))
        start = stop
    return batches


def _stackable(readies: list[Ready]) -> bool:
    """Whether the model arrays of `readies` can be concatenated row-wise."""
    first = readies[0].arrays
    return all(
        ready.arrays.keys() == first.keys()
        and all(
            a.dtype == first[n].dtype and a.shape[1:] == first[n].shape[1:]
            for n, a in ready.arrays.items()
        )
        for ready in readies[1:]
    )


def _known_total_rows(inputs: list[InputFile], options: ReadOptions) -> int | None:
    """All inputs' rows when every format records it (Parquet), for progress and ETA."""
    total = 0
    for source in inputs:
        if source.path == "-":
            return None
        options = dataclasses.replace(options, row_groups=source.row_groups)
        rows = reader_for(source.path, source.format, options).total_rows()
        if rows is None:
            return None
        total += rows
    return total
