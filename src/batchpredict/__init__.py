"""batchpredict: run TensorFlow/Keras models over CSV, JSON lines, Avro and Parquet files.

The public API is `predict(...)`, which runs the same pipeline as the CLI, and
`load_predictor(path).predict_frame(df)` for notebooks. Importing the package does not
import TensorFlow; the functions do, when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batchpredict.api import FramePredictor
    from batchpredict.pipeline import RunSummary

__all__ = ["FramePredictor", "RunSummary", "__version__", "load_predictor", "predict"]


def predict(
    model: str, input_file: str | list[str] | tuple[str, ...], **options: Any
) -> RunSummary:
    """Run a prediction like `batchpredict predict`; options are `RunConfig` field names."""
    from batchpredict.api import predict as _predict

    return _predict(model, input_file, **options)


def load_predictor(path: str, **options: Any) -> FramePredictor:
    """Load a model once and predict pandas DataFrames with it."""
    from batchpredict.api import load_predictor as _load

    return _load(path, **options)


def __getattr__(name: str) -> Any:
    if name == "RunSummary":
        from batchpredict.pipeline import RunSummary

        return RunSummary
    if name == "FramePredictor":
        from batchpredict.api import FramePredictor

        return FramePredictor
    raise AttributeError(name)
