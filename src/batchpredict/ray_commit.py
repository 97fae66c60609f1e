"""The commit of an `--engine ray` run: once every input is scored into the staging
folder, the previous run's parts are removed, the new ones moved into place and recorded
in the manifest, the rejects merged into one file, the statistics written, and `_SUCCESS`
last. Nothing here imports Ray."""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchpredict import storage
from batchpredict.atomic import write_whole
from batchpredict.config import RunConfig
from batchpredict.errors import BatchPredictError
from batchpredict.formats.registry import default_extension
from batchpredict.manifest import Manifest, ModelIdentity
from batchpredict.observe import get_logger
from batchpredict.outputs import MANIFEST, REJECTS, SUCCESS_MARKER, OutputTarget
from batchpredict.ray_actor import InputDone, Part
from batchpredict.run_stats import RunStats
from batchpredict.scoring import check_error_rate
from batchpredict.sources import InputFile
from batchpredict.summary import Counts

#: The folder of `--output_dir` that holds the runs' staging folders.
STAGING = "_temporary"

#: Writes a run's statistics from the actors' merged collector and the run's counts.
FinishStats = Callable[[RunStats, Counts], dict[str, Any]]


@dataclass(frozen=True)
class Provenance:
    """What the manifest records a run's parts as made with and from."""

    model: ModelIdentity
    options: dict[str, Any]
    #: The identity of each of the run's inputs, by path (taken before reading).
    inputs: dict[str, dict[str, Any]]


def commit(
    config: RunConfig,
    dealt: list[InputFile],
    staging: str,
    output_format: str,
    done: list[InputDone],
    made: Provenance,
    finish_stats: FinishStats | None = None,
) -> dict[str, Any]:
    """Check the reject rate, then move the parts into place, merge the rejects, write the
    statistics, and the manifest and `_SUCCESS` last (past `--max_drift`, the parts and
    the manifest stand but `_SUCCESS` is not written, as with the local engine).
    `done` is in the order of `dealt`, the inputs as the actors were dealt them."""
    assert config.output_dir is not None
    counts = Counts(
        read=sum(result.read for result in done),
        written=sum(part.rows for result in done for part in result.parts),
        rejected=sum(result.rejected for result in done),
    )
    check_error_rate(
        counts.rejected,
        counts.read,
        config.max_error_rate,
        of="",
        consequence="nothing was written",
    )
    output_dir = config.output_dir
    for marker in (SUCCESS_MARKER, MANIFEST):
        storage.delete(storage.join(output_dir, marker))
    manifest = Manifest(
        output_dir, model=made.model, options=made.options, resume=False, engine="ray"
    )
    parts = [part for result in done for part in result.parts]
    try:
        outputs = _publish_parts(config, dealt, output_format, parts, made, manifest)
    except BaseException:
        _flush_quietly(manifest)
        raise
    rejects_file = config.rejects_file or storage.join(output_dir, REJECTS)
    if config.on_error == "skip":
        rejects = [result.rejects for result in done if result.rejects is not None]
        write_whole(rejects_file, b"".join(storage.read_bytes(p) for p in rejects).decode())
    storage.delete_tree(staging)
    storage.delete_if_empty(storage.join(output_dir, STAGING))
    statistics = None
    if finish_stats is not None:
        statistics = finish_stats(_merged_stats(done), counts)
    drift = None if statistics is None else statistics["drift"]
    if drift and drift["exceeded"]:
        manifest.flush()
    else:
        manifest.finish()
    return {
        "statistics": statistics,
        "counts": counts,
        "outputs": outputs,
        "rejects_files": (rejects_file,) if config.on_error == "skip" else (),
    }


def _merged_stats(done: list[InputDone]) -> RunStats:
    """The statistics every actor call collected, merged (each input's come with it)."""
    merged = RunStats()
    for result in done:
        if result.stats is not None:
            merged.merge(pickle.loads(result.stats))
    return merged


def _publish_parts(
    config: RunConfig,
    dealt: list[InputFile],
    output_format: str,
    parts: list[Part],
    made: Provenance,
    manifest: Manifest,
) -> tuple[str, ...]:
    """Remove the previous run's parts, then move this run's into place, recording each
    with the input it holds rows of (its rejected rows are not told apart by part: the
    run's are in its rejects file)."""
    assert config.output_dir is not None
    extension = default_extension(output_format)
    for old in storage.list_files(config.output_dir):
        if fnmatch.fnmatch(old.rsplit("/", 1)[-1], f"part-*{extension}"):
            storage.delete(old)
    outputs = []
    for index, part in enumerate(parts):
        final = storage.join(config.output_dir, f"part-{index:05d}{extension}")
        storage.publish(part.path, final)
        source = dealt[part.input]
        target = OutputTarget(final, output_format, (source,))
        content = storage.Content(part.sha256, part.bytes)
        manifest.record(target, [made.inputs[source.path]], part.rows, None, content)
        outputs.append(final)
    return tuple(outputs)


def _flush_quietly(manifest: Manifest) -> None:
    """Record the parts moved before a failure; a failure to do so never hides it."""
    try:
        manifest.flush()
    except BatchPredictError as exc:
        get_logger().warning("could not write the manifest", error=str(exc))
