"""The library: `predict`, `inspect`, `validate` and `load_predictor` do what the commands
do without changing the process (no TensorFlow start-up silencing, no device set-up),
and the command line loads TensorFlow only after a run's inputs and outputs are planned."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import structlog

import batchpredict
from batchpredict import observe
from batchpredict.errors import DataError
from conftest import make_frame, write_with_library

PROCESS_WIDE = ("quiet_tensorflow", "configure_devices")


@pytest.fixture
def no_process_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module's reference to the process-wide set-up fails the test when called."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a library call set up the process")

    for name, module in list(sys.modules.items()):
        if name.startswith("batchpredict") and module is not None:
            for attribute in PROCESS_WIDE:
                if hasattr(module, attribute):
                    monkeypatch.setattr(module, attribute, refuse)


@pytest.mark.usefixtures("no_process_set_up")
def test_the_library_predicts_inspects_and_validates_without_touching_the_process(
    tmp_path: Path, mlp_model: Path
) -> None:
    frame = make_frame(40, seed=3)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    filters = list(warnings.filters)
    logging_before = (observe.logging_configured(), structlog.is_configured())

    summary = batchpredict.predict(
        str(mlp_model), str(source), output_file=str(tmp_path / "o.parquet"), keep_columns="id"
    )
    lines = batchpredict.inspect(str(mlp_model), str(source), keep_columns=["id"])
    report = batchpredict.validate(str(mlp_model), [str(source)], keep_columns="id")
    scored = batchpredict.load_predictor(str(mlp_model)).predict_frame(frame, keep_columns=["id"])

    assert summary.rows_out == 40 == pq.read_table(tmp_path / "o.parquet").num_rows
    assert any(line.startswith("input features: float32") for line in lines)
    assert any("kept columns: id" in line for line in lines)
    assert report.problems == () and report.lines[-1].startswith("ok: ")
    assert list(scored.columns) == ["id", "prediction"] and len(scored) == 40
    assert warnings.filters == filters
    assert (observe.logging_configured(), structlog.is_configured()) == logging_before


def test_inspect_without_inputs_describes_the_model(mlp_model: Path) -> None:
    lines = batchpredict.inspect(str(mlp_model))
    assert lines[0] == f"path: {mlp_model}" and "input features: float32 [?, 4]" in lines


def test_validate_reports_the_bad_row_with_its_file_row_and_column(
    tmp_path: Path, mlp_model: Path
) -> None:
    frame = make_frame(10)
    frame.loc[4, "f1"] = float("nan")
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    report = batchpredict.validate(str(mlp_model), str(source), keep_columns="id")
    assert len(report.problems) == 1
    assert "column 'f1': 1 of 10 rows checked are bad; first, row 5:" in report.problems[0]
    with pytest.raises(DataError, match=r"d\.parquet: row 5, column 'f1'"):
        batchpredict.predict(
            str(mlp_model), str(source), output_file=str(tmp_path / "o.csv"), keep_columns="id"
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--input_file", "/no/such/input.csv"], 66),
        (["--input_file", "{source}", "--output_file", "{source}"], 73),
    ],
)
def test_early_failures_exit_before_tensorflow_loads(
    tmp_path: Path, args: list[str], code: int
) -> None:
    source = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    argv = ["predict", "--model", str(tmp_path / "m.keras")]
    argv += [a.format(source=source) for a in args]
    script = (
        "import sys; from batchpredict import cli; "
        f"code = cli.main({argv!r}); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'loaded'; "
        "sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == code, result.stderr
