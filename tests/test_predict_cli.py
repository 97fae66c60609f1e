"""The predict command end to end: in this process through `cli.main`, and through the
installed `batchpredict` command for what only a real process shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import (
    EXTENSIONS,
    FORMATS,
    N_FEATURES,
    Completed,
    make_frame,
    read_with_library,
    reference_predictions,
    write_with_library,
)

FEATURES = [f"f{j}" for j in range(N_FEATURES)]
RunCli = Callable[..., Completed]


def expected_for(frame: pd.DataFrame, model: Path) -> np.ndarray:
    return reference_predictions(model, frame[FEATURES].to_numpy()).reshape(-1)


def assert_predictions(out: pd.DataFrame, frame: pd.DataFrame, model: Path) -> None:
    """Kept columns equal the input's in order; predictions equal the model's own."""
    assert list(out.columns) == ["id", "segment", "prediction"]
    assert out["id"].tolist() == frame["id"].tolist()
    assert out["segment"].tolist() == frame["segment"].tolist()
    np.testing.assert_allclose(
        out["prediction"].to_numpy(), expected_for(frame, model), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_input_format_predicts_like_the_model(
    fmt: str, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = make_frame(1000, seed=3)
    source = write_with_library(frame, tmp_path / f"data{EXTENSIONS[fmt]}", fmt)
    # 1000 rows, batch 64 and chunk 300: batches don't divide the rows, chunks cut batches.
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id,segment",
        "--batch_size",
        "64",
        "--chunk_size",
        "300",
    )
    assert result.returncode == 0, result.stderr
    output = tmp_path / f"data.predictions{EXTENSIONS[fmt]}"
    assert output.exists()
    assert_predictions(read_with_library(output, fmt), frame, mlp_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, output.name])


@pytest.mark.parametrize(
    ("in_fmt", "out_fmt"),
    [("csv", "parquet"), ("parquet", "jsonl"), ("jsonl", "avro"), ("avro", "csv")],
)
def test_output_format_differs_from_input(
    in_fmt: str, out_fmt: str, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = make_frame(257, seed=4)
    source = write_with_library(frame, tmp_path / f"in{EXTENSIONS[in_fmt]}", in_fmt)
    output = tmp_path / "out" / f"scored{EXTENSIONS[out_fmt]}"
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input-file",
        str(source),
        "--output_file",
        str(output),
        "--keep_columns",
        "id,segment",
    )
    assert result.returncode == 0, result.stderr
    assert_predictions(read_with_library(output, out_fmt), frame, mlp_model)


def test_default_features_are_numeric_columns_not_kept(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    """Without --features, the numeric columns except kept-only ones feed a [None, k] input."""
    frame = make_frame(10)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    ok = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id,segment",
    )
    assert ok.returncode == 0, ok.stderr
    # Without --keep_columns the numeric id is a fifth candidate: the error lists them all.
    bad = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--output_file",
        str(tmp_path / "x.parquet"),
    )
    assert bad.returncode == 65
    assert "takes 4 feature columns" in bad.stderr and "id, f0, f1, f2, f3" in bad.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_features_option_orders_columns(tmp_path: Path, mlp_model: Path, run_main: RunCli) -> None:
    frame = make_frame(50)
    renamed = frame.rename(columns={"f0": "z", "f1": "y", "f2": "x", "f3": "w"})
    source = write_with_library(renamed, tmp_path / "d.csv", "csv")
    out = tmp_path / "p.csv"
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--features",
        "z,y,x,w",
        "--output_file",
        str(out),
        "--prediction_column",
        "p",
    )
    assert result.returncode == 0, result.stderr
    got = read_with_library(out, "csv")
    assert list(got.columns) == ["id", "segment", "p"]
    np.testing.assert_allclose(got["p"], expected_for(frame, mlp_model), rtol=1e-5, atol=1e-6)


def test_output_dir_mirrors_partitions_and_writes_marker_last(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    exports = tmp_path / "exports"
    frames = {}
    for day in (1, 2):
        (exports / f"date={day}").mkdir(parents=True)
        frames[day] = make_frame(100 + day, seed=day)
        write_with_library(frames[day], exports / f"date={day}" / "part-0.parquet", "parquet")
    out_dir = tmp_path / "scored"
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(exports / "*" / "*.parquet"),
        "--output_dir",
        str(out_dir),
        "--keep_columns",
        "id,segment",
        "--log_format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    for day, frame in frames.items():
        assert_predictions(
            read_with_library(out_dir / f"date={day}" / "part-0.parquet", "parquet"),
            frame,
            mlp_model,
        )
    assert (out_dir / "_SUCCESS").exists()
    import json

    manifest = json.loads((out_dir / "_manifest.json").read_text())
    assert [e["rows"] for e in manifest["outputs"]] == [101, 102]
    assert manifest["outputs"][0]["output"] == "date=1/part-0.parquet"
    finished = [line for line in result.log_lines() if line["event"] == "run finished"]
    assert finished and finished[0]["rows_out"] == 203


def test_one_output_for_several_inputs_keeps_order(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    parts = [make_frame(30, seed=s) for s in (7, 8)]
    write_with_library(parts[0], tmp_path / "a.jsonl", "jsonl")
    write_with_library(parts[1], tmp_path / "b.csv", "csv")
    out = tmp_path / "all.parquet"
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(tmp_path / "b.csv"),
        "--input_file",
        str(tmp_path / "a.jsonl"),
        "--output_file",
        str(out),
        "--keep_columns",
        "id,segment",
    )
    assert result.returncode == 0, result.stderr
    assert_predictions(
        read_with_library(out, "parquet"),
        pd.concat([parts[1], parts[0]], ignore_index=True),
        mlp_model,
    )


def test_failed_run_leaves_previous_output_untouched(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    good = make_frame(200)
    source = tmp_path / "d.csv"
    write_with_library(good, source, "csv")
    out = tmp_path / "d.predictions.csv"
    out.write_text("previous run's output\n")
    # Row 150 has a value that is not a number: the run fails after writing some chunks.
    text = source.read_text().splitlines()
    cells = text[150].split(",")
    cells[1] = "oops"
    text[150] = ",".join(cells)
    source.write_text("\n".join(text) + "\n")
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id,segment",
        "--chunk_size",
        "64",
        "--batch_size",
        "16",
    )
    assert result.returncode == 65, result.stderr
    assert str(source) in result.stderr
    assert out.read_text() == "previous run's output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "d.predictions.csv"]


def test_stdin_to_stdout(tmp_path: Path, mlp_model: Path, run_main: RunCli) -> None:
    frame = make_frame(20)
    source = write_with_library(frame, tmp_path / "d.csv", "csv")
    result = run_main(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        "-",
        "--input_format",
        "csv",
        "--output_file",
        "-",
        "--keep_columns",
        "id,segment",
        input=source.read_bytes(),
    )
    assert result.returncode == 0, result.stderr
    (tmp_path / "out.csv").write_text(result.stdout)
    assert_predictions(read_with_library(tmp_path / "out.csv", "csv"), frame, mlp_model)


@pytest.mark.slow
def test_stderr_has_only_our_log_lines(tmp_path: Path, mlp_model: Path, run_cli: RunCli) -> None:
    source = write_with_library(make_frame(5), tmp_path / "d.parquet", "parquet")
    result = run_cli(
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id,segment",
    )
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("{") for line in lines), result.stderr
    events = [entry["event"] for entry in result.log_lines()]
    assert events == [
        "run started",
        "feature order taken from the first input",
        "batch size chosen",
        "run finished",
    ]


@pytest.mark.slow
def test_several_devices_each_get_batches_and_order_is_kept(
    tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    """The CPU split into two logical devices stands in for two GPUs: one replica each."""
    frame = make_frame(3000, seed=11)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--device", "cpu:0,cpu:1",
        "--batch_size", "64", "--chunk_size", "1000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_predictions(
        read_with_library(tmp_path / "d.predictions.parquet", "parquet"), frame, mlp_model
    )
    finished = result.log_lines()[-1]
    assert finished["device"] == "/CPU:0,/CPU:1"
    per_device = finished["batches_per_device"]
    assert set(per_device) == {"/CPU:0", "/CPU:1"}
    # Chunks of 1024 rows (1000 rounded up to whole batches): 1024 + 1024 + 952 rows.
    assert sum(per_device.values()) == 16 + 16 + 15
    assert min(per_device.values()) >= 23, "batches alternate between the devices"
