"""Bad rows: stop at the first, or keep them in the rejects file; never lose a row."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpredict.config import RunConfig
from batchpredict.errors import DataError
from conftest import (
    EXTENSIONS,
    N_FEATURES,
    Completed,
    make_frame,
    read_with_library,
    reference_predictions,
    write_with_library,
)

RunCli = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def with_holes(frame: pd.DataFrame, holes: dict[int, tuple[str, float | None]]) -> pd.DataFrame:
    """`frame` with some feature cells set to null (None) or NaN, by 0-based row."""
    frame = frame.copy()
    for row, (column, value) in holes.items():
        frame.loc[row, column] = np.nan if value is None else value
    return frame


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_first_bad_row_stops_the_run_with_file_row_and_column(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = with_holes(make_frame(300), {205: ("f2", None)})
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--chunk_size", "64", "--batch_size", "16",
    )  # fmt: skip
    assert result.returncode == 65
    assert f"{source}: row 206, column 'f2': value is" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "avro", "parquet"])
def test_skip_writes_bad_rows_to_the_rejects_file_and_the_rest_out(
    fmt: str, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = make_frame(400, seed=2)
    holes = {0: ("f0", None), 150: ("f3", None), 399: ("f1", None)}
    source = write_with_library(with_holes(frame, holes), tmp_path / f"d{EXTENSIONS[fmt]}", fmt)
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--on_error", "skip", "--chunk_size", "100",
        "--output_file", str(tmp_path / "out.parquet"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    good = frame.drop(index=list(holes)).reset_index(drop=True)
    assert out["id"].tolist() == good["id"].tolist()
    expected = reference_predictions(mlp_model, good[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    rejects = rejects_of(tmp_path / "out.parquet.rejects.jsonl")
    assert [(r["row"], r["column"]) for r in rejects] == [(1, "f0"), (151, "f3"), (400, "f1")]
    assert all(r["source"] == str(source) for r in rejects)
    # JSON nulls are rejected by the reader, which keeps the line as read (`text`).
    values = json.loads(rejects[1]["text"]) if fmt == "jsonl" else rejects[1]["values"]
    assert values["id"] == 151 and values["segment"] == frame["segment"][150]
    assert rejects[0]["reason"] in ("value is null", "value is NaN")
    finished = next(line for line in result.log_lines() if line["event"] == "run finished")
    assert (finished["rows_in"], finished["rows_out"], finished["rows_rejected"]) == (400, 397, 3)


def test_too_many_bad_rows_commit_nothing_but_keep_the_rejects(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = with_holes(make_frame(100), dict.fromkeys(range(0, 100, 10), ("f0", None)))
    source = write_with_library(frame, tmp_path / "d.csv", "csv")
    out = tmp_path / "d.predictions.csv"
    out.write_text("yesterday's predictions\n")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--on_error", "skip", "--max_error_rate", "0.05",
        "--rejects_file", str(tmp_path / "bad.jsonl"),
    )  # fmt: skip
    assert result.returncode == 65
    assert (
        "10 of 100 rows rejected" in result.stderr
        and "more than --max_error_rate 5.00%" in result.stderr
    )
    assert out.read_text() == "yesterday's predictions\n"
    assert len(rejects_of(tmp_path / "bad.jsonl")) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "d.csv", "d.predictions.csv"]


def test_fill_value_scores_rows_with_missing_features(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = make_frame(20)
    holed = with_holes(frame, {3: ("f1", None), 7: ("f2", None)})
    source = write_with_library(holed, tmp_path / "d.jsonl", "jsonl")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--fill_value", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = read_with_library(tmp_path / "d.predictions.jsonl", "jsonl")
    filled = holed[FEATURES].fillna(0.0).to_numpy()
    np.testing.assert_allclose(
        out["prediction"],
        reference_predictions(mlp_model, filled).reshape(-1),
        rtol=1e-5,
        atol=1e-6,
    )


corruption = st.dictionaries(
    keys=st.integers(min_value=0, max_value=119),
    values=st.tuples(st.sampled_from(FEATURES), st.sampled_from([None, float("nan")])),
    max_size=12,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    holes=corruption,
    fmt=st.sampled_from(["parquet", "avro", "jsonl", "csv"]),
    chunk=st.integers(5, 50),
)
def test_rows_in_equal_rows_out_plus_rejected(
    holes: dict[int, tuple[str, float | None]],
    fmt: str,
    chunk: int,
    tmp_path_factory: pytest.TempPathFactory,
    mlp_model: Path,
) -> None:
    """Every row is either written, in order, or in the rejects file with its row number."""
    from batchpredict import pipeline

    tmp = tmp_path_factory.mktemp("conservation")
    frame = make_frame(120, seed=len(holes))
    source = write_with_library(with_holes(frame, holes), tmp / f"d{EXTENSIONS[fmt]}", fmt)
    config = RunConfig(
        model=str(mlp_model), input_files=(str(source),), output_file=str(tmp / "o.parquet"),
        keep_columns=("id", "segment"), on_error="skip", max_error_rate=1.0,
        chunk_size=chunk, batch_size=8,
    )  # fmt: skip
    summary = pipeline.run(config)
    rejected_rows = sorted(r["row"] for r in rejects_of(tmp / "o.parquet.rejects.jsonl"))
    written = pq.read_table(tmp / "o.parquet").column("id").to_pylist()
    assert summary.rows_in == 120 == summary.rows_out + summary.rows_rejected
    assert rejected_rows == sorted(row + 1 for row in holes)
    assert written == [i for i in frame["id"].tolist() if i - 1 not in holes]


def test_python_api_reports_the_first_bad_row(mlp_model: Path) -> None:
    import batchpredict

    frame = with_holes(make_frame(5), {2: ("f0", None)})
    with pytest.raises(DataError, match=r"DataFrame: row 3, column 'f0'"):
        batchpredict.load_predictor(str(mlp_model)).predict_frame(
            frame, keep_columns=["id", "segment"]
        )


def test_rejects_keep_values_json_cannot_hold(tmp_path: Path) -> None:
    from batchpredict.conversion import RowProblem
    from batchpredict.outputs import RejectsWriter

    writer = RejectsWriter(str(tmp_path / "r.jsonl"))
    table = pa.table({"x": [float("nan"), float("inf")], "b": [b"\xff", b"ok"]})
    writer.add(
        "f.parquet",
        np.array([7, 8]),
        table,
        [RowProblem(0, "x", "value is NaN"), RowProblem(1, "x", "too big")],
    )
    writer.commit()
    rows = rejects_of(tmp_path / "r.jsonl")
    assert rows[0]["values"] == {"x": "NaN", "b": "\\xff"} and rows[0]["row"] == 7
    assert rows[1]["values"]["x"] == "Infinity"
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(0, 10))
def test_file_rows_skip_the_records_a_reader_dropped(bad: list[bool], first: int) -> None:
    """Row numbers of yielded rows, with dropped records between them, match the file's."""
    from batchpredict.scoring import file_rows

    records = list(range(1, len(bad) + 1))
    dropped = [r for r, is_bad in zip(records, bad, strict=True) if is_bad]
    good = [r for r, is_bad in zip(records, bad, strict=True) if not is_bad]
    first = min(first, len(good))
    assert file_rows(first, len(good) - first, dropped).tolist() == good[first:]


def test_records_the_reader_cannot_parse_are_rejected_with_their_row(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    """A CSV row with a field too many and a value that is not a number, under skip.

    The bad value lies past the first block (up to 4 MiB), from which types are inferred;
    the model's columns are parsed value by value wherever the value is (see
    test_dirty_values.py for values inside the first block).
    """
    frame = make_frame(60_000)
    source = write_with_library(frame, tmp_path / "d.csv", "csv")
    lines = source.read_text().splitlines()
    lines[10] += ",extra"  # data row 10
    cells = lines[55_000].split(",")
    cells[2] = "oops"  # data row 55000, column f1
    lines[55_000] = ",".join(cells)
    source.write_text("\n".join(lines) + "\n")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--on_error", "skip", "--max_error_rate", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rejects = rejects_of(tmp_path / "d.predictions.csv.rejects.jsonl")
    assert [(r["row"], r["column"]) for r in rejects] == [(10, None), (55_000, "f1")]
    assert "expected 6 fields, got 7" in rejects[0]["reason"] and rejects[0]["text"].endswith(
        ",extra"
    )
    assert "value 'oops' is not a number" in rejects[1]["reason"]
    assert rejects[1]["value"] == "oops"
    out = read_with_library(tmp_path / "d.predictions.csv", "csv")
    assert out["id"].tolist() == [i for i in range(1, 60_001) if i not in (10, 55_000)]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_an_input_whose_every_row_is_rejected_gets_an_output_without_rows(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Any], kind: str
) -> None:
    """With --max_error_rate 1 a file of bad rows is accepted: its output is written, with
    its columns and no rows, beside the outputs of the good files (not exit 70)."""
    bad = tmp_path / "in" / f"bad.{kind}"
    bad.parent.mkdir()
    if kind == "csv":  # rejected by the reader: values that are no numbers
        bad.write_text("id,f0,f1,f2,f3\n1,x,1,1,1\n2,y,2,2,2\n")
    else:  # rejected by the conversion: nulls in a feature column
        pq.write_table(
            pa.table({"id": [1, 2], **{f: pa.array([None, None], pa.float64()) for f in FEATURES}}),
            bad,
        )
    write_with_library(make_frame(5), tmp_path / "in" / f"good.{kind}", kind)
    out = tmp_path / "out"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "in"),
        "--output_dir", str(out), "--keep_columns", "id", "--features", ",".join(FEATURES),
        "--on_error", "skip", "--max_error_rate", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    empty = read_with_library(out / f"bad.{kind}", kind)
    assert len(empty) == 0 and list(empty.columns) == ["id", "prediction"]
    assert len(read_with_library(out / f"good.{kind}", kind)) == 5
    assert len((out / "_rejects.jsonl").read_text().splitlines()) == 2
