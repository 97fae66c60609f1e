"""`batchpredict profile`: the statistics of reference data (a training set, a good
night's input), to measure later runs' drift against (`--baseline`).

The inputs are read, mapped, converted and scored exactly as `predict` does (the
predictions are profiled too) through the local engine's reading, but nothing is written
except the stats file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict import storage
from batchpredict.config import RunConfig
from batchpredict.errors import UsageError
from batchpredict.formats.base import BadRecord
from batchpredict.formats.registry import check_delimiter
from batchpredict.manifest import identify_model
from batchpredict.observe import Progress, get_logger
from batchpredict.predictor import chunk_rows_for, devices_for
from batchpredict.reading import Reading
from batchpredict.run_stats import StatsRun
from batchpredict.scoring import RunColumns, Scorer, check_error_rate, plan_run_mapping, scorer_for
from batchpredict.sources import InputFile, expand_inputs
from batchpredict.summary import Counts


class _Dropped:
    """Where `--on_error skip` sends bad rows while profiling: nowhere (they are counted)."""

    def add(self, source: str, rows: np.ndarray, table: pa.Table, problems: Sequence[Any]) -> None:
        """Bad rows are left out of the profile."""

    def add_record(self, source: str, record: BadRecord) -> None:
        """Records that did not parse are left out of the profile."""


def profile(
    config: RunConfig, *, prepare: Callable[[RunConfig], None] | None = None
) -> dict[str, Any]:
    """Read and score every input of `config` and write their statistics to
    `config.stats_file`; returns the stats document. `prepare` runs just before the model
    loads (the command line sets up TensorFlow there)."""
    if config.stats_file is None:
        raise UsageError("profile needs --stats_file (where the baseline is written)")
    started = time.monotonic()
    with storage.store_settings(config.s3_endpoint_url, config.storage_timeout):
        inputs = expand_inputs(config.input_files, config.input_format)
        check_delimiter(config.delimiter, ((i.path, i.format) for i in inputs))
        stats = StatsRun(config, kind="profile")
        if prepare is not None:
            prepare(config)
        scorer = scorer_for(config, devices_for(config.device).devices, stats.collector)
        mapping = RunColumns(scorer.model, config, plan_run_mapping(inputs, scorer.model, config))
        get_logger().info(
            "profile started",
            model=config.model,
            inputs=[i.path for i in inputs],
            column_mapping=mapping.as_dict(),
        )
        mapping.warn_if_guessed()
        counts = _score_all(config, scorer, mapping, inputs)
        check_error_rate(
            counts.rejected,
            counts.read,
            config.max_error_rate,
            of="",
            consequence="the profile was not written",
        )
        read_columns = () if mapping.mapping is None else mapping.mapping.read_columns
        document = stats.finish(
            model=config.model,
            sha256=identify_model(config.model, scorer.model).sha256,
            inputs=[i.path for i in inputs],
            counts=counts,
            seconds=time.monotonic() - started,
            features=read_columns,
        )
    get_logger().info(
        "profile written",
        stats_file=config.stats_file,
        rows_in=counts.read,
        rows_rejected=counts.rejected,
        seconds=round(time.monotonic() - started, 3),
    )
    return document


def _score_all(
    config: RunConfig, scorer: Scorer, mapping: RunColumns, inputs: Sequence[InputFile]
) -> Counts:
    """Stream every input through the model, the predictions only observed."""
    chunk_rows = chunk_rows_for(config.chunk_size, scorer.predictor.batch_size, scorer.model)
    reading = Reading(mapping, chunk_rows, config, {})
    counts = Counts()
    rejects = _Dropped() if config.on_error == "skip" else None
    progress = Progress(None, enabled=config.progress, every_seconds=config.progress_every)
    try:
        for ready in reading.chunks(tuple(inputs), counts, rejects):
            if ready.rows:
                scorer.score(ready, nested=True)
                progress.update(ready.rows)
    finally:
        progress.close()
    counts.written = counts.read - counts.rejected
    return counts
