"""`--engine ray`: the same readers, column mapping, predictor and writers, run on Ray's
tasks and actors (not Ray Data: its own actors alone took 500 MiB).

    a read task per input file (our reader)  ->  the driver  ->  _ModelActor: score, write
    blocks of --chunk_size rows, streamed      each block to     a part file per block,
    two blocks ahead at most                   the least busy    returns one row about it

The column mapping and the model's identity are planned in a short-lived actor, so the
driver never loads TensorFlow. Each model actor call returns, beside its part, the
statistics of its rows when the run keeps them; the driver merges them.
`ray_dispatch` holds the driver's loop: which actor scores a block, a lost actor's blocks
sent again, and Ray's failures as exit codes.

Every part file and every rejects part is written into `OUTPUT_DIR/_temporary/<run id>/`
first; only when the whole dataset has been written does the driver move the parts into
place (after removing the previous run's parts), merge the rejects into one file, and write
`_manifest.json` (the local engine's, see `manifest.Manifest`: one record per part) and
`_SUCCESS`, last. A failed run removes its staging folder and leaves the previous outputs
as they were.

Ray is imported only here, and this module only when the engine is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import hashlib
import logging
import os
import pickle
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict import storage
from batchpredict.atomic import write_whole
from batchpredict.columns import ColumnMapping, RunMapping
from batchpredict.config import RunConfig
from batchpredict.conversion import RowProblem
from batchpredict.errors import BatchPredictError, ConfigError, UsageError
from batchpredict.formats.registry import (
    check_delimiter,
    check_delta_inputs,
    default_extension,
    read_options,
    reader_for,
    writer_for,
    writer_format,
)
from batchpredict.manifest import (
    Manifest,
    ModelIdentity,
    identify_model,
    input_identity,
    prediction_options,
)
from batchpredict.observe import get_logger
from batchpredict.outputs import (
    MANIFEST,
    REJECTS,
    SUCCESS_MARKER,
    OutputTarget,
    RejectsWriter,
)
from batchpredict.ray_dispatch import Scoring, cluster_failure
from batchpredict.run_stats import RunStats, StatsRun, compact
from batchpredict.scoring import (
    FileRows,
    Scorer,
    check_error_rate,
    load_model_of,
    plan_run_mapping,
    prepare,
    scorer_for,
)
from batchpredict.sources import InputFile, expand_inputs
from batchpredict.store_options import EMULATOR_VARIABLE
from batchpredict.summary import Counts, RunState, RunSummary

#: Columns the read tasks add so that actors can name a rejected row's file and row.
SOURCE_COLUMN = "__batchpredict_source"
ROW_COLUMN = "__batchpredict_row"
STAGING = "_temporary"
#: The object store of a Ray this run starts itself: a few blocks in flight per process.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
#: Blocks (of --chunk_size rows) a read task yields ahead of the model actors.
READ_AHEAD_BLOCKS = 2
INSTALL_HINT = "--engine ray needs Ray: pip install 'batchpredict[ray]'"


def import_ray() -> Any:
    """Ray, or a configuration error (exit 78) that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return ray


def run(config: RunConfig, state: RunState) -> RunSummary:
    """`--engine ray`: predict every input on Ray and commit the parts.

    The run's one column mapping is planned once from the first input, so that every
    actor applies the same one whichever file's rows reach it first.
    """
    import_ray()  # without Ray, say how to install it before loading anything
    inputs = expand_inputs(config.input_files, config.input_format)
    check_delimiter(config.delimiter, ((i.path, i.format) for i in inputs))
    for item in inputs:
        if item.format == "delta":  # Ray's blocks are files; a table is read whole
            raise UsageError(f"{item.path}: Delta tables are read by the local engine only")
    check_delta_inputs(config, ((i.path, i.format) for i in inputs))
    stats = StatsRun(config) if config.collects_stats else None  # reads --baseline
    state.before_model(config)
    ray = _start_ray(import_ray(), config)
    mapping, model_identity = _planned(ray, config, inputs)
    if stats is not None:
        stats.check_features(mapping.read_columns)
    get_logger().info(
        "run started",
        engine="ray",
        model=config.model,
        model_version=config.model_version,
        signature=config.signature,
        inputs=list(config.input_files),
        batch_size=config.batch_size or "auto",
        column_mapping=mapping.as_dict(),
    )
    _warn_if_guessed(mapping)
    made = _Provenance(
        model=model_identity,
        options=prediction_options(config, mapping.as_dict()),
        # Taken before reading, as the local engine does.
        inputs=[input_identity(item) for item in inputs],
    )
    get_logger().info("model identified", model=config.model, sha256=made.model.sha256)
    finish_stats = None
    if stats is not None:
        finish_stats = functools.partial(
            _finish_stats, stats, state, config, inputs, made, mapping.read_columns
        )
    done = _run_dataset(config, inputs, uuid.uuid4().hex, mapping, made, finish_stats)
    totals = state.totals
    totals.read, totals.written, totals.rejected = done["read"], done["written"], done["rejected"]
    statistics = done["statistics"]
    return state.summary(
        inputs=tuple(item.path for item in inputs),
        outputs=done["outputs"],
        skipped=(),
        rejects_files=done["rejects_files"],
        model=config.model,
        model_version=config.model_version,
        batch_size=config.batch_size,
        device="ray",
        column_mapping=mapping.as_dict(),
        statistics=None if statistics is None else compact(statistics),
        drift=None if statistics is None else statistics["drift"],
    )


#: Writes a run's statistics from the actors' merged collector and the run's counts.
FinishStats = Callable[[RunStats, Counts], dict[str, Any]]


def _finish_stats(
    stats: StatsRun,
    state: RunState,
    config: RunConfig,
    inputs: list[InputFile],
    made: _Provenance,
    features: Sequence[str],
    collected: RunStats,
    counts: Counts,
) -> dict[str, Any]:
    """The stats file of what the actors collected (merged into `collected`), written as
    the local engine writes it, before `_SUCCESS`."""
    stats.collector.merge(collected)
    return stats.finish(
        model=config.model,
        sha256=made.model.sha256,
        inputs=[item.path for item in inputs],
        counts=counts,
        seconds=time.monotonic() - state.started,
        features=features,
    )


@dataclass(frozen=True)
class _Provenance:
    """What the manifest records a run's parts as made with and from."""

    model: ModelIdentity
    options: dict[str, Any]
    #: The identities of the run's inputs: each part may hold rows of any of them.
    inputs: list[dict[str, Any]]


def _plan(config: RunConfig, inputs: list[InputFile]) -> tuple[RunMapping, ModelIdentity]:
    """The run's column mapping and the model's identity, from the model's inputs."""
    from batchpredict.observe import quiet_tensorflow

    quiet_tensorflow(config.log_level)  # a Ray worker, which the command line did not set up
    model = load_model_of(config)
    mapping = plan_run_mapping(inputs, model, config)
    assert mapping is not None  # the Ray engine does not read stdin
    return mapping, identify_model(config.model, model)


def _planned(
    ray: Any, config: RunConfig, inputs: list[InputFile]
) -> tuple[RunMapping, ModelIdentity]:
    """`_plan` in a Ray actor of its own, killed when done: neither the driver nor an idle
    worker holds TensorFlow and a model (some 500 MiB) while the actors run. (A task with
    `max_calls=1` leaves its worker idle, TensorFlow loaded, for seconds.)"""
    planner = ray.remote(num_cpus=0)(_Planner).remote()
    try:
        planned: tuple[RunMapping, ModelIdentity] = ray.get(planner.plan.remote(config, inputs))
    except Exception as exc:
        ours = _unwrapped(exc)
        if ours is exc:
            raise
        raise ours from exc
    finally:
        _kill_and_wait(ray, planner)
    return planned


def _kill_and_wait(ray: Any, actor: Any, seconds: float = 10.0) -> None:
    """Kill `actor` and, when it runs on this machine, wait (at most `seconds`) until its
    process is gone: `ray.kill` returns at once, and the model actors must not load
    TensorFlow while the planner still holds its own (with both, a run's peak memory grew
    by some 500 MiB)."""
    try:
        node, pid = ray.get(actor.process.remote(), timeout=seconds)
    except Exception:  # noqa: BLE001 - an actor that failed: nothing to wait for
        node, pid = None, None
    ray.kill(actor)
    if node != ray_runtime_node():
        return
    started = time.monotonic()
    while os.path.exists(f"/proc/{pid}") and time.monotonic() - started < seconds:
        time.sleep(0.02)
    get_logger().debug("ray actor ended", pid=pid, seconds=round(time.monotonic() - started, 3))


class _Planner:
    """Runs `_plan` in a Ray actor (a process the driver can kill when it is done)."""

    def plan(self, config: RunConfig, inputs: list[InputFile]) -> tuple[RunMapping, ModelIdentity]:
        with _store_settings(config):
            return _plan(config, inputs)

    def process(self) -> tuple[str, int]:
        """The node and the process id of this actor."""
        return ray_runtime_node(), os.getpid()


def _store_settings(config: RunConfig) -> contextlib.AbstractContextManager[None]:
    """The run's store settings in a worker (an actor's or task's process of its own, where
    the driver's `store_settings` is not in force)."""
    return storage.store_settings(config.s3_endpoint_url, config.storage_timeout)


def _warn_if_guessed(mapping: RunMapping) -> None:
    """Say so when the column order came from the first input, not from the user."""
    if mapping.guessed_order:
        get_logger().warning(
            "feature order taken from the first input",
            features=",".join(mapping.read_columns),
            first_input=mapping.decided_by.removeprefix("the columns of "),
            hint="every input is read by these names; pin the order with --features",
        )


def _run_dataset(
    config: RunConfig,
    inputs: list[InputFile],
    run_id: str,
    mapping: RunMapping,
    made: _Provenance,
    finish_stats: FinishStats | None = None,
) -> dict[str, Any]:
    """Read, score and write every input on Ray into a staging folder, then commit the
    parts; returns the run's counts and outputs."""
    ray = import_ray()
    gpus, concurrency = _actors(ray, config)
    assert config.output_dir is not None  # RunConfig requires it for the Ray engine
    output_format = writer_format(config.output_format) if config.output_format else None
    output_format = output_format or inputs[0].format
    staging = storage.join(config.output_dir, STAGING, run_id)
    storage.make_dirs(staging)
    scoring = None
    try:
        actors = _model_actors(ray, config, gpus, concurrency, (staging, mapping, output_format))
        free_cpus = _cpus_left(ray, config, concurrency)
        reads = _read_tasks(ray, config, inputs, (staging, mapping), free_cpus)
        scoring = Scoring(ray, actors, reads, max(1, int(free_cpus)))
        parts = _in_input_order(scoring.run(), inputs)
        scoring.stop()  # the actors' memory back, and none of them writes into staging now
        _log_scoring(parts)
        return _commit(config, inputs, staging, output_format, parts, made, finish_stats)
    except BaseException as exc:
        if scoring is not None:  # nothing may write into the staging folder once removed
            scoring.stop()
            scoring = None
        storage.delete_tree(staging)
        storage.delete_if_empty(storage.join(config.output_dir, STAGING))
        ours = _unwrapped(exc)
        if ours is exc:
            ours = cluster_failure(ray, exc)
        if ours is exc:
            raise
        raise ours from exc
    finally:
        if scoring is not None:
            scoring.stop()


def _model_actors(
    ray: Any, config: RunConfig, gpus: float, count: int, work: tuple[str, RunMapping, str]
) -> list[Any]:
    """`count` model actors, each given the staging folder, the run's mapping and the
    output format (`work`); they load their models when asked (`_ModelActor.load`)."""
    actor_class = ray.remote(_ModelActor).options(
        num_cpus=config.ray_cpus_per_worker or 1,
        num_gpus=gpus,
        # Model actors on as many nodes as there are actors, not packed onto the first
        # node with room: each holds TensorFlow and the model, and competes for CPUs.
        scheduling_strategy="SPREAD",
        # Not restarted: a restarted actor would have to load the model again, and calls
        # sent to it would wait for a node with room. A lost actor's blocks go to the
        # others instead (`ray_dispatch.Scoring`).
        max_restarts=0,
    )
    return [actor_class.remote(config, *work) for _ in range(count)]


def _read_tasks(
    ray: Any,
    config: RunConfig,
    inputs: list[InputFile],
    work: tuple[str, RunMapping],
    free_cpus: float,
) -> list[Callable[[], Any]]:
    """A read task per input, each started when called: a stream of its blocks. Each
    takes a CPU the model actors leave free; when they take every CPU of the cluster,
    none (else the reads would wait for a CPU forever): they share the actors' cores."""
    if free_cpus < 1:
        get_logger().warning(
            "the model actors take every CPU of the Ray cluster; reads share their cores",
            hint="leave a CPU free: lower --ray_concurrency or --ray_cpus_per_worker",
        )
    read = ray.remote(_read_file).options(
        num_returns="streaming",
        num_cpus=1 if free_cpus >= 1 else 0,
        scheduling_strategy="SPREAD",
        # A read task pauses with this many blocks not taken yet: the object store holds
        # a few blocks, it never fills and spills.
        _generator_backpressure_num_objects=READ_AHEAD_BLOCKS,
        # A read lost with its node is run again from the start (Ray replays a streaming
        # generator), which also rebuilds a block lost with the node before an actor
        # took it. Its rejects are named after the file, so they are replaced; a block
        # handed out twice is one part file, published once.
        max_retries=3,
    )
    return [functools.partial(read.remote, item, config, *work) for item in inputs]


def _cpus_left(ray: Any, config: RunConfig, actors: int) -> float:
    """The cluster's CPUs the model actors leave free (for the read tasks)."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return cpus - actors * (config.ray_cpus_per_worker or 1)


def _start_ray(ray: Any, config: RunConfig) -> Any:
    """Join (or start) the cluster quietly; returns `ray`."""
    # Ray's own lines (cluster start, dataset plans, a task's traceback, which we report
    # as our one-line error) would mix with our log lines on stderr.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if not ray.is_initialized():
        ray.init(
            # "local": a new Ray for this run, never one another process started with
            # `ray start` on this machine (which address=None would join).
            address=config.ray_address or "local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.CRITICAL,
            runtime_env=_runtime_env(config),
            # A Ray started here holds a few blocks in flight, not 30% of the RAM.
            object_store_memory=None if config.ray_address else LOCAL_OBJECT_STORE_BYTES,
        )
    logging.getLogger("ray").setLevel(logging.CRITICAL)
    return ray


def _actors(ray: Any, config: RunConfig) -> tuple[float, int]:
    """The GPUs per actor and the actors, as asked or from the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = config.ray_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    concurrency = config.ray_concurrency or _default_concurrency(resources, gpus)
    get_logger().info(
        "ray engine started",
        address=config.ray_address or "local",
        actors=concurrency,
        gpus_per_actor=gpus,
        cpus_per_actor=config.ray_cpus_per_worker or 1,
        cluster_cpus=resources.get("CPU", 0),
        cluster_gpus=resources.get("GPU", 0),
    )
    return gpus, concurrency


def _runtime_env(config: RunConfig) -> dict[str, Any] | None:
    """What the workers need from this run beyond the cluster's own: the S3-compatible
    endpoint (`--s3_endpoint_url`, else this process's AWS_ENDPOINT_URL) and the GCS
    emulator (STORAGE_EMULATOR_HOST), neither a secret; the timeout travels in `config`.
    Credentials are not sent: on a cluster, workers use their nodes' own (instance roles,
    config files), as the SDKs do everywhere."""
    endpoints = {
        "AWS_ENDPOINT_URL": config.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
        EMULATOR_VARIABLE: os.environ.get(EMULATOR_VARIABLE),
    }
    env_vars = {name: value for name, value in endpoints.items() if value}
    return {"env_vars": env_vars} if env_vars else None


def _default_concurrency(resources: dict[str, float], gpus: float) -> int:
    """One actor per GPU; on CPUs one per 4 cores (each actor's TensorFlow uses several)."""
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1)) // 4)


_OUR_ERROR = re.compile(r"batchpredict\.errors\.(\w+): (.+)")


def _unwrapped(exc: BaseException) -> BaseException:
    """The batchpredict error a Ray task raised, rebuilt from Ray's wrapper (Ray passes the
    worker's traceback as text, not the exception), or `exc` itself."""
    from batchpredict import errors

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BatchPredictError):
            return seen
        found = _OUR_ERROR.findall(str(seen))
        if found:
            name, message = found[-1]
            kind = getattr(errors, name, None)
            if isinstance(kind, type) and issubclass(kind, BatchPredictError):
                return kind(message.strip())
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return exc


def _commit(
    config: RunConfig,
    inputs: list[InputFile],
    staging: str,
    output_format: str,
    parts: list[dict[str, Any]],
    made: _Provenance,
    finish_stats: FinishStats | None = None,
) -> dict[str, Any]:
    """Check the reject rate, then move the parts into place, merge the rejects, write the
    statistics, and the manifest and `_SUCCESS` last (past `--max_drift`, the parts and
    the manifest stand but `_SUCCESS` is not written, as with the local engine)."""
    assert config.output_dir is not None
    rejects = [
        path
        for path in storage.list_files(staging)
        if fnmatch.fnmatch(path.rsplit("/", 1)[-1], "rejects-*.jsonl")
    ]
    rejected = sum(storage.read_bytes(path).count(b"\n") for path in rejects)
    written = sum(part["rows"] for part in parts)
    read = written + rejected
    check_error_rate(
        rejected, read, config.max_error_rate, of="", consequence="nothing was written"
    )
    output_dir = config.output_dir
    for marker in (SUCCESS_MARKER, MANIFEST):
        storage.delete(storage.join(output_dir, marker))
    manifest = Manifest(
        output_dir, model=made.model, options=made.options, resume=False, engine="ray"
    )
    try:
        outputs = _publish_parts(config, inputs, output_format, parts, made, manifest)
    except BaseException:
        _flush_quietly(manifest)
        raise
    rejects_file = config.rejects_file or storage.join(output_dir, REJECTS)
    if config.on_error == "skip":
        write_whole(rejects_file, b"".join(storage.read_bytes(p) for p in rejects).decode())
    storage.delete_tree(staging)
    storage.delete_if_empty(storage.join(output_dir, STAGING))
    statistics = None
    if finish_stats is not None:
        statistics = finish_stats(_merged_stats(parts), Counts(read, written, rejected))
    drift = None if statistics is None else statistics["drift"]
    if drift and drift["exceeded"]:
        manifest.flush()
    else:
        manifest.finish()
    return {
        "statistics": statistics,
        "read": read,
        "written": written,
        "rejected": rejected,
        "outputs": outputs,
        "rejects_files": (rejects_file,) if config.on_error == "skip" else (),
        "inputs": tuple(item.path for item in inputs),
    }


def _merged_stats(parts: list[dict[str, Any]]) -> RunStats:
    """The statistics every actor call collected, merged (each part carries its own)."""
    merged = RunStats()
    for part in parts:
        if part.get("stats"):
            merged.merge(pickle.loads(part["stats"]))
    return merged


def _publish_parts(
    config: RunConfig,
    inputs: list[InputFile],
    output_format: str,
    parts: list[dict[str, Any]],
    made: _Provenance,
    manifest: Manifest,
) -> tuple[str, ...]:
    """Remove the previous run's parts, then move this run's into place, recording each
    (its rejected rows are not told apart by part: the run's are in its rejects file)."""
    assert config.output_dir is not None
    extension = default_extension(output_format)
    for old in storage.list_files(config.output_dir):
        if fnmatch.fnmatch(old.rsplit("/", 1)[-1], f"part-*{extension}"):
            storage.delete(old)
    outputs = []
    for index, part in enumerate(parts):
        final = storage.join(config.output_dir, f"part-{index:05d}{extension}")
        storage.publish(part["path"], final)
        target = OutputTarget(final, output_format, tuple(inputs))
        content = storage.Content(part["sha256"], part["bytes"])
        manifest.record(target, made.inputs, part["rows"], None, content)
        outputs.append(final)
    return tuple(outputs)


def _flush_quietly(manifest: Manifest) -> None:
    """Record the parts moved before a failure; a failure to do so never hides it."""
    try:
        manifest.flush()
    except BatchPredictError as exc:
        get_logger().warning("could not write the manifest", error=str(exc))


# -- read -------------------------------------------------------------------------------------
def _read_file(
    item: InputFile, config: RunConfig, staging: str, mapping: RunMapping
) -> Iterator[pa.Table]:
    """`_read_batches` under the run's store settings (a read task's worker has none)."""
    with _store_settings(config):
        yield from _read_batches(item, config, staging, mapping)


def _read_batches(
    item: InputFile, config: RunConfig, staging: str, mapping: RunMapping
) -> Iterator[pa.Table]:
    """One input through our reader, as tables of `chunk_size` rows with the file and the
    1-based row of every row; records the reader could not parse go to a rejects part.
    Text inputs parse the columns `mapping` feeds to numeric inputs value by value."""
    # Named after the file: a read run again replaces its rejects, never adds to them.
    name = f"rejects-read-{block_name(item.path, 0)}.jsonl"
    rejects = RejectsWriter(storage.join(staging, name))
    rows = FileRows(item.path, rejects.add_record)
    numbers = functools.partial(mapping.read_types, source=item.path)
    options = read_options(
        config, rows.on_bad_record if config.on_error == "skip" else None, column_types=numbers
    )
    try:
        batches = reader_for(item.path, item.format, options).iter_batches()
        numbered = (
            pa.Table.from_batches([batch]).append_column(
                ROW_COLUMN, pa.array(rows.next(batch.num_rows), pa.int64())
            )
            for batch in batches
        )
        for block in _regrouped(numbered, config.chunk_size):
            names = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(block.num_rows, np.int32)), pa.array([item.path])
            )
            yield block.append_column(SOURCE_COLUMN, names)
        rows.check_not_empty()
    finally:
        if rejects.count:
            rejects.commit()
        else:
            rejects.abort()
        # The worker stays for the next task: give back what Arrow's allocator kept.
        pa.default_memory_pool().release_unused()


def _regrouped(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """`tables` as blocks of `rows` rows (the last one may hold fewer): a reader's batches
    follow its own units (the JSON lines reader's are bytes), a part holds a block."""
    held: list[pa.Table] = []
    count = 0
    for table in tables:
        if not held and table.num_rows == rows:
            yield table  # already a block: no copy
            continue
        held.append(table)
        count += table.num_rows
        while count >= rows:
            joined = pa.concat_tables(held)
            yield joined.slice(0, rows).combine_chunks()
            rest = joined.slice(rows)
            held, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(held).combine_chunks()


# -- predict and write -----------------------------------------------------------------------
#: What each model actor call returns: the part file it wrote, where its first row came
#: from, and (pickled, when the run keeps statistics) the statistics of its rows.
PART_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("source", pa.string()),
        ("first_row", pa.int64()),
        ("stats", pa.binary()),
        ("node", pa.string()),
        # Wall-clock times (`time.time()`) of the actor's model being ready and of the
        # part being written: the run's scoring time, start-up excluded.
        ("ready", pa.float64()),
        ("started", pa.float64()),
        ("written", pa.float64()),
    ]
)


class _ModelActor:
    """Loads the model once; scores each batch of rows and writes its kept columns plus
    predictions as one part file into the staging folder (so that predictions never go
    through Ray's object store); returns a one-row table describing the part."""

    def __init__(
        self, config: RunConfig, staging: str, mapping: RunMapping, output_format: str
    ) -> None:
        self.config = config
        self.staging = staging
        self.output_format = output_format
        self.mapping = mapping
        self.mappings: dict[pa.Schema, ColumnMapping] = {}
        self.node = str(ray_runtime_node())
        self.scorer: Scorer | None = None
        self.failed: BaseException | None = None
        self.ready_at = 0.0

    def placed(self) -> str:
        """The node this actor was placed on: it holds its CPUs and GPUs from now on."""
        return self.node

    def load(self) -> float:
        """Import TensorFlow and load the model; returns when it was done (`time.time()`),
        the end of this actor's start-up."""
        from batchpredict.observe import quiet_tensorflow

        try:
            # An actor is a process of its own, which the command line did not set up.
            quiet_tensorflow(self.config.log_level)
            with _store_settings(self.config):  # the model may be in a store
                self.scorer = scorer_for(self.config)
        except BaseException as exc:
            self.failed = exc
            raise
        self.ready_at = time.time()
        return self.ready_at

    def __call__(self, table: pa.Table) -> pa.Table:
        started = time.time()
        if self.scorer is None:  # `load` failed: every call fails as it did
            raise self.failed or RuntimeError("the model actor was not loaded")
        with _store_settings(self.config):
            return self._score(table, self.scorer, started)

    def _score(self, table: pa.Table, loaded: Scorer, started: float) -> pa.Table:
        sources = table.column(SOURCE_COLUMN)
        rows = table.column(ROW_COLUMN).to_numpy()
        data = table.drop_columns([SOURCE_COLUMN, ROW_COLUMN])
        source = sources[0].as_py() if len(sources) else "<ray>"
        block = block_name(source, int(rows[0]) if len(rows) else 0)
        mapping = self.mappings.get(data.schema)
        if mapping is None:  # once per input schema, as the local engine does per file
            mapping = self.mapping.for_file(data.schema, source)
            self.mappings[data.schema] = mapping
        ready = prepare(
            data,
            mapping,
            rows,
            source=lambda index: str(sources[index].as_py()),
            fill_value=self.config.fill_value,
            reject=(
                functools.partial(self._reject, block, sources)
                if self.config.on_error == "skip"
                else None
            ),
        )
        if not ready.rows:  # every row rejected: no part
            return PART_SCHEMA.empty_table()
        # Each call's statistics go back with its part; the driver merges them.
        collector = RunStats() if self.config.collects_stats else None
        scorer = dataclasses.replace(loaded, stats=collector)
        part = self._write(scorer.score(ready, True), block)
        part.update(
            source=[source],
            first_row=[int(rows[0])],
            stats=[None if collector is None else pickle.dumps(collector)],
            node=[self.node],
            ready=[self.ready_at],
            started=[started],
            written=[time.time()],
        )
        return pa.table(part, schema=PART_SCHEMA)

    def _write(self, batch: pa.RecordBatch, block: str) -> dict[str, list[Any]]:
        """`batch` as a part file of its own in the staging folder (written to a temporary
        file and renamed, so a part there is whole), named after its block."""
        extension = default_extension(self.output_format)
        path = storage.join(self.staging, f"part-{block}{extension}")
        writer = writer_for(path, self.output_format)
        try:
            writer.open(batch.schema)
            writer.write(batch)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        assert writer.content is not None  # committed
        return {
            "path": [path],
            "rows": [writer.rows_written],
            "sha256": [writer.content.sha256],
            "bytes": [writer.content.bytes],
        }

    def _reject(
        self,
        block: str,
        sources: pa.ChunkedArray,
        data: pa.Table,
        rows: np.ndarray,
        problems: Sequence[RowProblem],
    ) -> None:
        """Bad rows of this batch into a rejects part of their own, grouped by file."""
        writer = RejectsWriter(storage.join(self.staging, f"rejects-{block}.jsonl"))
        names = sources.to_pylist()
        for path in dict.fromkeys(names[p.index] for p in problems):
            mine = [p for p in problems if names[p.index] == path]
            writer.add(path, rows, data, mine)
        writer.commit()


def block_name(source: str, first_row: int) -> str:
    """The staging name of the part (and rejects part) of the block whose first row is
    `first_row` of `source`. A block whose actor was lost is scored again by another; its
    files then replace the first attempt's instead of adding rows (rejects are gathered
    by listing the staging folder)."""
    return hashlib.sha256(f"{source}\0{first_row}".encode()).hexdigest()[:32]


def ray_runtime_node() -> str:
    """The id of the Ray node this process runs on."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _log_scoring(parts: list[dict[str, Any]]) -> None:
    """Log `ray scoring`: the rows scored and the seconds from the first model actor ready
    to now (every part written, none committed yet), so that throughput after start-up is
    measured inside the run. Times are the nodes' clocks: on a cluster, as exact as their
    synchronisation."""
    if not parts:
        return
    first_ready = min(part["ready"] for part in parts)
    seconds = max(time.time() - first_ready, 1e-9)
    rows = sum(part["rows"] for part in parts)
    get_logger().info(
        "ray scoring",
        rows=rows,
        seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds, 1),
        last_part_written_after=round(max(part["written"] for part in parts) - first_ready, 3),
        actors=len({(part["node"], part["ready"]) for part in parts}),
    )


def _in_input_order(parts: list[dict[str, Any]], inputs: list[InputFile]) -> list[dict[str, Any]]:
    """The parts in input order (by the file and row of each part's first row), so that
    part numbers follow the inputs; logs the rows each node scored and, at debug, the
    blocks and the model actors' busy time."""
    order = {item.path: index for index, item in enumerate(inputs)}
    nodes: dict[str, int] = {}
    for part in parts:
        nodes[part["node"]] = nodes.get(part["node"], 0) + part["rows"]
    get_logger().info("ray nodes used", rows_per_node=nodes)
    if parts:
        rows = [part["rows"] for part in parts]
        get_logger().debug(
            "ray stats",
            blocks=len(parts),
            rows_per_block={"min": min(rows), "max": max(rows)},
            actor_call_seconds=round(sum(p["written"] - p["started"] for p in parts), 3),
        )
    return sorted(parts, key=lambda p: (order.get(p["source"], len(order)), p["first_row"]))
