"""`--engine ray`: the same readers, column mapping, predictor and writers, run by Ray
actors (plain Ray, not Ray Data: its own actors alone took 500 MiB).

    the driver                              ray_actor.ModelActor (as many as asked,
    the run's inputs (Parquet files split    at most one per input): reads the input
    into row-group ranges when there are  -> a chunk ahead, scores each chunk, writes
    fewer files than actors), each dealt     it as a part file into staging, returns
    to the least busy actor                  what it wrote (`ray_commit` commits it)

The column mapping and the model's identity are planned by the first model actor loaded,
so the driver never loads TensorFlow and no process loads the model only to plan. Each
input's call returns, beside its parts, the statistics of its rows when the run keeps
them; the driver merges them. `ray_dispatch` holds the driver's loop: which actor scores
an input, a lost actor's inputs sent again, and Ray's failures as exit codes.

Every part file and every rejects part is written into `OUTPUT_DIR/_temporary/<run id>/`
first; only when every input has been scored does the driver commit them (`ray_commit`):
the previous run's parts removed, the new ones moved into place, the rejects merged into
one file, `_manifest.json` (the local engine's, see `manifest.Manifest`: one record per
part) and `_SUCCESS`, last. A failed run removes its staging folder and leaves the
previous outputs as they were.

Ray is imported only here, and this module only when the engine is used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any

from batchpredict import storage
from batchpredict.columns import RunMapping
from batchpredict.config import RunConfig
from batchpredict.errors import BatchPredictError, ConfigError, UsageError
from batchpredict.formats.registry import check_delimiter, check_delta_inputs, writer_format
from batchpredict.manifest import (
    ModelIdentity,
    input_identity,
    prediction_options,
)
from batchpredict.observe import get_logger, stderr_captured
from batchpredict.ray_actor import InputDone, ModelActor
from batchpredict.ray_commit import STAGING, FinishStats, Provenance, commit
from batchpredict.ray_dispatch import Scoring, cluster_failure, ray_error_text
from batchpredict.run_stats import RunStats, StatsRun, compact
from batchpredict.scoring import warn_if_guessed
from batchpredict.shards import split_row_groups
from batchpredict.sources import InputFile, expand_inputs
from batchpredict.store_options import EMULATOR_VARIABLE
from batchpredict.summary import Counts, RunState, RunSummary

#: The object store of a Ray this run starts itself: only the calls' small results and
#: arguments pass through it (actors read their inputs themselves).
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
_NO_PRESTARTED_WORKERS = {"prestart_worker_first_driver": False}
#: How long a `--ray_address` of `host:port` may take to take a TCP connection.
RAY_CONNECT_SECONDS = 30.0
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
    actor applies the same one whichever input it is dealt.
    """
    import_ray()  # without Ray, say how to install it before loading anything
    inputs = expand_inputs(config.input_files, config.input_format)
    check_delimiter(config.delimiter, ((i.path, i.format) for i in inputs))
    for item in inputs:
        if item.format == "delta":  # the actors are dealt files; a table is read whole
            raise UsageError(f"{item.path}: Delta tables are read by the local engine only")
    check_delta_inputs(config, ((i.path, i.format) for i in inputs))
    stats = StatsRun(config) if config.collects_stats else None  # reads --baseline
    state.before_model(config)
    ray = _start_ray(import_ray(), config)
    mapping, done = _run_on_actors(ray, config, state, inputs, stats)
    state.totals.add(done["counts"])
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


def _started(
    config: RunConfig,
    state: RunState,
    inputs: list[InputFile],
    stats: StatsRun | None,
    planned: tuple[RunMapping, ModelIdentity],
) -> tuple[Provenance, FinishStats | None]:
    """Log `run started` with the planned mapping, and what the commit records the parts
    as made with and from, and writes the statistics with."""
    mapping, model_identity = planned
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
    warn_if_guessed(mapping)
    made = Provenance(
        model=model_identity,
        options=prediction_options(config, mapping.as_dict()),
        # Taken before reading, as the local engine does.
        inputs={item.path: input_identity(item) for item in inputs},
    )
    get_logger().info("model identified", model=config.model, sha256=made.model.sha256)
    if stats is None:
        return made, None
    features = mapping.read_columns
    return made, functools.partial(_finish_stats, stats, state, config, inputs, made, features)


def _finish_stats(
    stats: StatsRun,
    state: RunState,
    config: RunConfig,
    inputs: list[InputFile],
    made: Provenance,
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


def _run_on_actors(
    ray: Any,
    config: RunConfig,
    state: RunState,
    inputs: list[InputFile],
    stats: StatsRun | None,
) -> tuple[RunMapping, dict[str, Any]]:
    """Start the model actors, plan the run on the first one loaded, have them read, score
    and write every input into a staging folder, then commit the parts; returns the
    run's mapping, and its counts and outputs."""
    gpus, concurrency, described = _actors(ray, config)
    dealt = _dealt_inputs(inputs, concurrency)
    assert config.output_dir is not None  # RunConfig requires it for the Ray engine
    output_format = writer_format(config.output_format) if config.output_format else None
    output_format = output_format or inputs[0].format
    staging = storage.join(config.output_dir, STAGING, uuid.uuid4().hex)
    count = min(concurrency, len(dealt))  # an actor with no input would only load
    scoring = Scoring(ray, _model_actors(ray, config, gpus, count, (staging, output_format)))
    try:
        mapping, identity = scoring.plan(inputs)
        made, finish_stats = _started(config, state, inputs, stats, (mapping, identity))
        _log_pool(described, count, concurrency)
        storage.make_dirs(staging)  # once planned: a run that cannot start creates nothing
        done = sorted(scoring.run(dealt, mapping), key=lambda result: result.input)
        scoring.stop()  # the actors' memory back, and none of them writes into staging now
        _log_scoring(done)
        return mapping, commit(config, dealt, staging, output_format, done, made, finish_stats)
    except BaseException as exc:
        scoring.stop()  # nothing may write into the staging folder once removed
        storage.delete_tree(staging)
        storage.delete_if_empty(storage.join(config.output_dir, STAGING))
        ours = _unwrapped(exc)
        if ours is exc:
            ours = cluster_failure(ray, exc)
        if ours is exc:
            raise
        raise ours from exc


def _dealt_inputs(inputs: list[InputFile], actors: int) -> list[InputFile]:
    """What the actors are dealt: the inputs, or with fewer inputs than actors, the Parquet
    files split into ranges of row groups (as shards split them), so that every actor has
    work where the files allow. Each one is read and scored by one actor."""
    return split_row_groups(inputs, actors) if len(inputs) < actors else inputs


def _model_actors(
    ray: Any, config: RunConfig, gpus: float, count: int, work: tuple[str, str]
) -> list[Any]:
    """`count` model actors, each given the staging folder and the output format
    (`work`); they load their models when asked (`ModelActor.load`)."""
    actor_class = ray.remote(ModelActor).options(
        num_cpus=config.ray_cpus_per_worker or 1,
        num_gpus=gpus,
        # Model actors on as many nodes as there are actors, not packed onto the first
        # node with room: each holds TensorFlow and the model, and competes for CPUs.
        scheduling_strategy="SPREAD",
        # Not restarted: a restarted actor would have to load the model again, and calls
        # sent to it would wait for a node with room. A lost actor's inputs go to the
        # others instead (`ray_dispatch.Scoring`).
        max_restarts=0,
    )
    return [actor_class.remote(config, *work) for _ in range(count)]


def _start_ray(ray: Any, config: RunConfig) -> Any:
    """Join (or start) the cluster quietly; returns `ray`. A cluster that cannot be joined
    is a configuration error (78), said in one line."""
    # Ray's own lines (a task's traceback, which we report as our one-line error, a lost
    # worker) would mix with our log lines on stderr.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    address = config.ray_address or "local"
    if ray.is_initialized():
        return ray
    why = _unreachable(address, RAY_CONNECT_SECONDS)
    if why is not None:
        raise ConfigError(f"--ray_address {address}: no Ray cluster answers there: {why}")
    # Ray's core says, on stderr, that it took that level as it starts.
    quiet = config.log_level != "debug"
    try:
        with stderr_captured(shown_on_failure=False) if quiet else contextlib.nullcontext():
            ray.init(
                # "local": a new Ray for this run, never one another process started with
                # `ray start` on this machine (which address=None would join).
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.CRITICAL,
                runtime_env=_runtime_env(config),
                # A Ray started here holds the calls' small results, not 30% of the RAM...
                object_store_memory=None if config.ray_address else LOCAL_OBJECT_STORE_BYTES,
                # ...and starts no idle workers (one per CPU by default, some 77 MiB each)
                # for tasks this run never submits: its actors start their own. Ray's
                # setting, given only to a Ray the run starts (a cluster keeps its own).
                _system_config=None if config.ray_address else _NO_PRESTARTED_WORKERS,
            )
    except Exception as exc:  # whatever Ray says, the run cannot start
        raise ConfigError(f"--ray_address {address}: {ray_error_text(exc)}") from exc
    logging.getLogger("ray").setLevel(logging.CRITICAL)
    return ray


def _unreachable(address: str, seconds: float) -> str | None:
    """Why nothing takes a connection at a `--ray_address` of `host:port` (or
    `ray://host:port`) within `seconds`; None when something does, or for `auto` and
    `local`. Ray's own client retries such an address for minutes, and quietly."""
    if address in ("auto", "local"):
        return None
    try:
        parsed = urllib.parse.urlsplit(address if "://" in address else f"ray://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:
        return None  # Ray says what is wrong with it
    if host is None or port is None:
        return None
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except TimeoutError:
        return f"no connection within {seconds:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _actors(ray: Any, config: RunConfig) -> tuple[float, int, dict[str, Any]]:
    """The GPUs per actor and the actors, as asked or from the cluster's resources, and
    what the `ray engine started` line says of the pool and the cluster."""
    resources = ray.cluster_resources()
    gpus = config.ray_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    concurrency = config.ray_concurrency or _default_concurrency(resources, gpus)
    described = {
        "address": config.ray_address or "local",
        "gpus_per_actor": gpus,
        "cpus_per_actor": config.ray_cpus_per_worker or 1,
        "cluster_cpus": resources.get("CPU", 0),
        "cluster_gpus": resources.get("GPU", 0),
    }
    return gpus, concurrency, described


def _log_pool(described: dict[str, Any], actors: int, asked: int) -> None:
    """Log `ray engine started` with the actors started; warn when the inputs left fewer
    than asked (or than the default)."""
    get_logger().info("ray engine started", actors=actors, **described)
    if actors < asked:
        get_logger().warning(
            "fewer inputs than model actors",
            actors=actors,
            asked=asked,
            hint="each input (a file, or a range of a Parquet file's row groups) is read "
            "and scored by one actor: split the input into more files to use more",
        )


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
    """The batchpredict error a Ray task raised, or `exc` itself. Ray's error for a task
    is also an instance of the task's error's class, with the worker's traceback as its
    text: the task's own error is its `cause`, else it is rebuilt from that text."""
    from batchpredict import errors

    seen: BaseException | None = exc
    while seen is not None:
        cause = getattr(seen, "cause", None)
        if isinstance(cause, BaseException) and cause is not seen:
            seen = cause  # the task's own error, with its own message
            continue
        if isinstance(seen, BatchPredictError):
            return seen
        found = _OUR_ERROR.findall(str(seen))
        if found:
            name, message = found[-1]
            kind = getattr(errors, name, None)
            if isinstance(kind, type) and issubclass(kind, BatchPredictError):
                return kind(message.strip())
        seen = seen.__cause__
    return exc


def _log_scoring(done: list[InputDone]) -> None:
    """Log the rows each node scored and `ray scoring`: the rows scored and the seconds
    from the first model actor ready to now (every part written, none committed yet), so
    that throughput after start-up is measured inside the run. Times are the nodes'
    clocks: on a cluster, as exact as their synchronisation."""
    nodes: dict[str, int] = {}
    for result in done:
        rows = sum(part.rows for part in result.parts)
        nodes[result.node] = nodes.get(result.node, 0) + rows
    get_logger().info("ray nodes used", rows_per_node=nodes)
    if not done:
        return
    first_ready = min(result.ready for result in done)
    seconds = max(time.time() - first_ready, 1e-9)
    rows = sum(nodes.values())
    get_logger().info(
        "ray scoring",
        rows=rows,
        seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds, 1),
        last_part_written_after=round(max(result.ended for result in done) - first_ready, 3),
        actors=len({(result.node, result.ready) for result in done}),
        inputs=len(done),
        parts=sum(len(result.parts) for result in done),
        actor_call_seconds=round(sum(result.ended - result.started for result in done), 3),
    )
