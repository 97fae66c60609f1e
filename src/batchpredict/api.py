"""The Python API behind `batchpredict.predict` and `batchpredict.load_predictor`."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchpredict.columns import plan_mapping
from batchpredict.config import RunConfig
from batchpredict.formats.registry import preflight
from batchpredict.observe import (
    bind_run_id,
    configure_logging,
    logging_configured,
    new_run_id,
    quiet_tensorflow,
    unbind_run_id,
)
from batchpredict.outputs import PredictionColumns
from batchpredict.scoring import file_rows, load_scorer, prepare

if TYPE_CHECKING:
    import pandas as pd

    from batchpredict.pipeline import RunSummary

#: How error messages name a DataFrame's rows' source.
_FRAME = "DataFrame"


def predict(
    model: str, input_file: str | list[str] | tuple[str, ...], **options: Any
) -> RunSummary:
    """Build a `RunConfig` from keyword options and run the CLI's pipeline."""
    from batchpredict import pipeline

    files = (input_file,) if isinstance(input_file, str) else tuple(input_file)
    for name in ("features", "keep_columns"):
        if isinstance(options.get(name), str):
            options[name] = tuple(options[name].split(","))
        elif options.get(name) is not None:
            options[name] = tuple(options[name])
    config = RunConfig(model=model, input_files=files, **options)
    preflight(config)
    quiet_tensorflow(config.log_level)
    if not logging_configured():
        configure_logging(config.log_level)
    bind_run_id(new_run_id())
    try:
        return pipeline.run(config)
    finally:
        unbind_run_id()


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
        quiet_tensorflow("info")
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
