"""The library: `predict`, `inspect`, `validate`, `profile`, `report` and `verify` do
what the commands of the same names do, and `load_predictor` scores pandas DataFrames in
memory.

Options are `RunConfig` fields, named like the command-line options (`output_file=...`,
`keep_columns=["id"]`, `on_error="skip"`); failures raise the `BatchPredictError` whose
`exit_code` the command would exit with (`predict(..., baseline=..., max_drift=...)`
raises `DriftError`, 3, after committing its outputs; its `summary` is the run's). A
library call changes nothing process-wide: TensorFlow's start-up is not silenced (no file
descriptor redirection, no warning filters) and `device` picks among the devices
TensorFlow sees without hiding any; a program wanting the command line's set-up calls
`process.prepare_tensorflow(config)`. Log lines go through structlog, to stderr unless
the program configured it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import structlog

from batchpredict import checks, pipeline, shards, verification
from batchpredict.checks import ValidationReport
from batchpredict.columns import plan_mapping
from batchpredict.config import RunConfig
from batchpredict.formats.registry import preflight
from batchpredict.observe import (
    bind_run_id,
    configure_logging,
    logging_configured,
    new_run_id,
    reset_logging,
    unbind_run_id,
)
from batchpredict.predictions import PredictionColumns
from batchpredict.scoring import file_rows, load_scorer, prepare
from batchpredict.summary import RunSummary
from batchpredict.verification import VerifyReport

if TYPE_CHECKING:
    import pandas as pd

#: How error messages name a DataFrame's rows' source.
_FRAME = "DataFrame"
#: One input, or several: paths, URIs, glob patterns or folders.
Inputs = str | Sequence[str]


def predict(model: str, input_file: Inputs, **options: Any) -> RunSummary:
    """Predict every row of the inputs with `model` and write the predictions atomically,
    as `batchpredict predict` does (outputs beside the inputs unless `output_file` or
    `output_dir` says otherwise); returns what the run did."""
    config = _config(model, input_file, options)
    with _logging(config.log_level):
        bind_run_id(new_run_id())
        try:
            return pipeline.run(config)
        finally:
            unbind_run_id()


def profile(model: str, input_file: Inputs, stats_file: str, **options: Any) -> dict[str, Any]:
    """Read and score the inputs as `predict` would and write their statistics to
    `stats_file`, as `batchpredict profile` does; no predictions are written. Returns the
    stats document (README "Statistics and drift")."""
    config = _config(model, input_file, {**options, "stats_file": stats_file})
    with _logging(config.log_level):
        bind_run_id(new_run_id())
        try:
            return pipeline.profile(config)
        finally:
            unbind_run_id()


def inspect(model: str, input_file: Inputs = (), **options: Any) -> list[str]:
    """The lines `batchpredict inspect` prints: the model's inputs and outputs and, given
    inputs, the column mapping predict would plan and the columns each input keeps."""
    if not input_file:
        with _logging(options.get("log_level", "info")):
            return checks.inspect_model(
                model,
                signature=options.get("signature", "serving_default"),
                version=options.get("model_version"),
                unsafe=options.get("unsafe_model_load", False),
            )
    config = _config(model, input_file, options)
    with _logging(config.log_level):
        return checks.inspect(config)


def validate(model: str, input_file: Inputs, **options: Any) -> ValidationReport:
    """Check the first chunk of every input as predict would read and convert it, writing
    nothing; the report's `problems` are empty when predict would accept them."""
    config = _config(model, input_file, options)
    with _logging(config.log_level):
        return checks.validate(config)


def report(stats_file: str, output: str, baseline: str | None = None) -> None:
    """Write the HTML report of the stats file `stats_file` to `output`, against the stats
    file `baseline` when given, as `batchpredict report` does (needs the `report` extra)."""
    from batchpredict.html_report import write_report

    write_report(stats_file, output, baseline)


def verify(path: str) -> VerifyReport:
    """Check an output folder's files (or one output file) against its manifest, as
    `batchpredict verify` does; the report's `problems` are empty when all match. Raises
    InputMissingError when there is no manifest, ReadWriteError when it is unreadable."""
    return verification.verify(path)


def _config(model: str, input_file: Inputs, options: dict[str, Any]) -> RunConfig:
    """The run's configuration from keyword options, checked as the command line checks
    its options."""
    files = (input_file,) if isinstance(input_file, str) else tuple(input_file)
    for name in ("features", "keep_columns"):
        if isinstance(options.get(name), str):
            options[name] = tuple(options[name].split(","))
        elif options.get(name) is not None:
            options[name] = tuple(options[name])
    if isinstance(options.get("shard_index"), str):  # "auto", as on the command line
        shard = shards.resolve(options["shard_index"], options.get("shard_count"), os.environ)
        assert shard is not None  # an index was given
        options["shard_index"], options["shard_count"] = shard.index, shard.count
    config = RunConfig(model=model, input_files=files, **options)
    preflight(config)
    return config


@contextlib.contextmanager
def _logging(level: str) -> Iterator[None]:
    """Log lines to stderr for the call, unless the program (or the command line) set up
    logging itself; what was set up before is restored afterwards, so nothing of the
    call's set-up outlives it."""
    if logging_configured() or structlog.is_configured():
        yield
        return
    configure_logging(level)
    try:
        yield
    finally:
        reset_logging()


class FramePredictor:
    """A model loaded once, predicting pandas DataFrames with the CLI's column rules."""

    def __init__(
        self,
        path: str,
        *,
        batch_size: int | None = None,
        signature: str = "serving_default",
        model_version: int | None = None,
        unsafe_model_load: bool = False,
        prediction_column: str = "prediction",
        class_names: tuple[str, ...] | None = None,
        threshold: float | None = None,
        label_output: str | None = None,
        label_column: str = "label",
        score_column: str = "score",
    ) -> None:
        columns = functools.partial(
            PredictionColumns.for_model,
            prediction_column=prediction_column,
            class_names=class_names,
            threshold=threshold,
            label_output=label_output,
            label_column=label_column,
            score_column=score_column,
        )
        self.scorer = load_scorer(
            path,
            columns=columns,
            batch_size=batch_size,
            signature=signature,
            version=model_version,
            unsafe=unsafe_model_load,
        )
        self.model = self.scorer.model

    def predict_frame(
        self,
        frame: pd.DataFrame,
        *,
        features: list[str] | None = None,
        keep_columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """Return the kept columns of `frame` followed by the prediction column(s)."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        planned = plan_mapping(self.model.inputs, table.schema, _FRAME, features, keep_columns)
        mapping = planned.for_file(table.schema, _FRAME)
        ready = prepare(table, mapping, file_rows(0, table.num_rows, []), source=_FRAME)
        scored: pd.DataFrame = self.scorer.score(ready, nested=True).to_pandas()
        return scored


def load_predictor(path: str, **options: Any) -> FramePredictor:
    """Load the model at `path` for `predict_frame`."""
    return FramePredictor(path, **options)
