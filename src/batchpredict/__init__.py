"""batchpredict: run TensorFlow/Keras models over CSV, JSON lines, Avro and Parquet files.

The library (see `batchpredict.api`): `predict(...)`, `inspect(...)`, `validate(...)`,
`profile(...)`, `report(...)` and `verify(path)` do what the commands of the same names
do, and `load_predictor(path).predict_frame(df)` scores DataFrames for notebooks. They
change nothing process-wide. Importing the package does not import TensorFlow; the
functions do, when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batchpredict.api import FramePredictor, Inputs
    from batchpredict.checks import ValidationReport
    from batchpredict.summary import RunSummary
    from batchpredict.verification import VerifyReport

__all__ = [
    "FramePredictor",
    "RunSummary",
    "ValidationReport",
    "VerifyReport",
    "__version__",
    "inspect",
    "load_predictor",
    "predict",
    "profile",
    "report",
    "validate",
    "verify",
]


def predict(model: str, input_file: Inputs, **options: Any) -> RunSummary:
    """Run a prediction like `batchpredict predict`; options are `RunConfig` field names."""
    from batchpredict.api import predict as _predict

    return _predict(model, input_file, **options)


def inspect(model: str, input_file: Inputs = (), **options: Any) -> list[str]:
    """The lines `batchpredict inspect` prints for the model (and the inputs given)."""
    from batchpredict.api import inspect as _inspect

    return _inspect(model, input_file, **options)


def validate(model: str, input_file: Inputs, **options: Any) -> ValidationReport:
    """Check the inputs' first chunks as `batchpredict validate` does; writes nothing."""
    from batchpredict.api import validate as _validate

    return _validate(model, input_file, **options)


def report(stats_file: str, output: str, baseline: str | None = None) -> None:
    """Write the HTML report of a stats file (against a baseline's) like `batchpredict
    report`; needs `pip install 'batchpredict[report]'`."""
    from batchpredict.api import report as _report

    _report(stats_file, output, baseline)


def verify(path: str) -> VerifyReport:
    """Check an output folder (or one output file) against its manifest, as
    `batchpredict verify` does; reads the outputs, writes nothing."""
    from batchpredict.api import verify as _verify

    return _verify(path)


def profile(model: str, input_file: Inputs, stats_file: str, **options: Any) -> dict[str, Any]:
    """Write the statistics of reference data to `stats_file`, as `batchpredict profile`
    does (a baseline for `predict(..., baseline=...)`); returns the stats document."""
    from batchpredict.api import profile as _profile

    return _profile(model, input_file, stats_file, **options)


def load_predictor(path: str, **options: Any) -> FramePredictor:
    """Load a model once and predict pandas DataFrames with it."""
    from batchpredict.api import load_predictor as _load

    return _load(path, **options)


def __getattr__(name: str) -> Any:
    if name == "RunSummary":
        from batchpredict.summary import RunSummary

        return RunSummary
    if name == "ValidationReport":
        from batchpredict.checks import ValidationReport

        return ValidationReport
    if name == "VerifyReport":
        from batchpredict.verification import VerifyReport

        return VerifyReport
    if name == "FramePredictor":
        from batchpredict.api import FramePredictor

        return FramePredictor
    raise AttributeError(name)
