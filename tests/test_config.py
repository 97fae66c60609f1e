"""RunConfig refuses option combinations that cannot work, before any data is read."""

from __future__ import annotations

import pytest

from batchpredict.config import RunConfig
from batchpredict.errors import ExitCode, UsageError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output_file": "a.csv", "output_dir": "d"}, "cannot be used together"),
        ({"input_files": ("-",)}, "needs --input_format"),
        ({"input_files": ("-",), "input_format": "csv"}, "needs --output_file"),
        (
            {"input_files": ("-", "a.csv"), "input_format": "csv", "output_file": "-"},
            "cannot be combined",
        ),
        ({"batch_size": 0}, "--batch_size"),
        ({"chunk_size": 0}, "--chunk_size"),
        ({"device": "tpu"}, "--device"),
        ({"device": "cpu:1"}, "--device"),
        ({"device": "gpu:0,cpu:1"}, "--device"),
        ({"device": "gpu:0,"}, "--device"),
        ({"features": ("a", "b"), "keep_columns": ("b",)}, "both --features and --keep_columns"),
        ({"input_files": ()}, "no --input_file"),
        ({"engine": "spark"}, "--engine must be local or ray"),
        ({"engine": "ray", "output_file": "o.csv"}, "give --output_dir"),
        (
            {"engine": "ray", "input_files": ("-",), "input_format": "csv", "output_dir": "d"},
            "stdin",
        ),
        ({"engine": "ray", "output_dir": "d", "skip_existing": True}, "--skip_existing"),
        ({"engine": "ray", "output_dir": "d", "ray_concurrency": 0}, "--ray_concurrency"),
        ({"lock_file": "s3://bucket/run.lock"}, "--lock_file must be a local path"),
        ({"metrics_file": "gs://bucket/m.prom"}, "--metrics_file must be a local path"),
        (
            {"input_files": ("s3://AKIAEXAMPLE:s3cr3t@exports/d.csv",)},
            r"^s3://\*\*\*@exports/\.\.\.: credentials in a URI are refused",
        ),
        ({"output_dir": "gs://u:p@scores/"}, "credentials in a URI are refused"),
    ],
)
def test_invalid_combinations_are_usage_errors(changes: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"model": "m.keras", "input_files": ("a.csv",)}
    options.update(changes)
    with pytest.raises(UsageError, match=message) as info:
        RunConfig(**options)  # type: ignore[arg-type]
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("device", ["auto", "cpu", "gpu", "gpu:3", "gpu:0,gpu:2", "cpu:0,cpu:1"])
def test_valid_devices(device: str) -> None:
    assert RunConfig(model="m", input_files=("a",), device=device).device == device
