"""Delta Lake tables (the `delta` extra): read at a snapshot, never as their Parquet files;
predictions written as one table in one transaction. Every table here is written by
delta-rs itself (`deltalake.write_deltalake`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchpredict.formats.delta_io import DeltaWriter
from conftest import N_FEATURES, Completed, make_frame, reference_predictions, write_with_library

deltalake = pytest.importorskip("deltalake")

RunMain = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]
KEEP = ("--keep_columns", "id,segment")


def write_table(path: str, frame: pd.DataFrame, mode: str = "error", **options: Any) -> None:
    deltalake.write_deltalake(
        path, pa.Table.from_pandas(frame, preserve_index=False), mode=mode, **options
    )


@pytest.fixture
def overwritten(tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A table whose version 0 (100 rows) an overwrite replaced by version 1 (30 rows):
    the old Parquet file is still in the folder, referenced by version 0 only."""
    table = tmp_path / "exports" / "customers"
    old, new = make_frame(100, seed=1), make_frame(30, seed=2)
    write_table(str(table), old)
    write_table(str(table), new, mode="overwrite")
    return table, old, new


def predict(run_main: RunMain, model: Path, *args: str, **where: Any) -> Any:
    return run_main(
        "predict", "--model", str(model), "--no_progress", "--log_format", "json", *args, **where
    )


def assert_scored(out: pd.DataFrame, frame: pd.DataFrame, model: Path) -> None:
    """`out` holds `frame`'s rows in order with the model's own predictions."""
    assert out["id"].tolist() == frame["id"].tolist()
    assert out["segment"].tolist() == frame["segment"].tolist()
    expected = reference_predictions(model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)


def rows_of(table: str | Path, **options: Any) -> pd.DataFrame:
    frame: pd.DataFrame = deltalake.DeltaTable(str(table), **options).to_pandas()
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


def test_a_table_is_read_at_its_current_snapshot_never_as_its_files(
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    table, old, new = overwritten
    files = sorted(table.glob("*.parquet"))
    # What a plain listing of the folder would score: both versions' rows.
    assert len(files) == 2
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == len(old) + len(new)

    result = predict(run_main, mlp_model, "--input_file", str(table), *KEEP,
                     "--output_file", str(tmp_path / "out.parquet"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_scored(pd.read_parquet(tmp_path / "out.parquet"), new, mlp_model)
    finished = result.log_lines()[-1]
    assert finished["rows_in"] == len(new)


@pytest.mark.parametrize("where", ["parent", "glob", "glob_above"])
def test_a_listing_reaching_into_a_table_is_refused(
    where: str,
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    table = overwritten[0]
    value = {
        "parent": str(table.parent),
        "glob": f"{table}/*.parquet",
        "glob_above": f"{table.parent}/**/*.parquet",
    }[where]
    result = predict(run_main, mlp_model, "--input_file", value,
                     "--output_file", str(tmp_path / "out.parquet"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{table}: is a Delta table" in result.stderr
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("where", ["file", "partition", "partition_glob"])
def test_a_file_or_partition_inside_a_table_is_refused(
    where: str, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    table = tmp_path / "customers"
    write_table(str(table), make_frame(40, seed=1), partition_by=["segment"])
    write_table(str(table), make_frame(20, seed=2), mode="overwrite", partition_by=["segment"])
    partition = table / "segment=a"
    assert len(list(partition.glob("*.parquet"))) == 2  # one of them stale
    value = {
        "file": str(next(partition.glob("*.parquet"))),
        "partition": str(partition),
        "partition_glob": f"{partition}/*.parquet",
    }[where]
    result = predict(run_main, mlp_model, "--input_file", value,
                     "--output_file", str(tmp_path / "out.parquet"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{table}: is a Delta table" in result.stderr


def test_input_version_reads_an_older_snapshot(
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    table, old, _ = overwritten
    out = tmp_path / "v0.csv"
    result = predict(run_main, mlp_model, "--input_file", str(table), "--input_version", "0",
                     *KEEP, "--output_file", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_scored(pd.read_csv(out), old, mlp_model)


def test_a_missing_version_or_a_version_without_a_table_is_refused(
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    table = overwritten[0]
    out = tmp_path / "out.csv"
    result = predict(run_main, mlp_model, "--input_file", str(table), "--input_version", "7",
                     *KEEP, "--output_file", str(out))  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert f"{table}: Delta table has no version 7; its current is 1" in result.stderr
    plain = write_with_library(make_frame(5), tmp_path / "plain.parquet", "parquet")
    result = predict(run_main, mlp_model, "--input_file", str(plain), "--input_version", "0",
                     *KEEP, "--output_file", str(out))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--input_version 0 is for Delta table inputs" in result.stderr
    assert not out.exists()
    # A table's folder does not tell whether its log gained a version: no resuming.
    result = predict(run_main, mlp_model, "--input_file", str(table), *KEEP,
                     "--output_dir", str(tmp_path / "o"), "--skip_existing")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{table}: --skip_existing cannot tell whether a Delta table changed" in result.stderr


def test_writes_a_table_overwritten_then_appended_one_version_per_run(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    first, second = make_frame(40, seed=3), make_frame(25, seed=4)
    a = write_with_library(first, tmp_path / "a.parquet", "parquet")
    b = write_with_library(second.assign(id=second["id"] + 100), tmp_path / "b.csv", "csv")
    out = tmp_path / "scores"
    delta = ("--output_dir", str(out), "--output_format", "delta", *KEEP)
    # Two inputs of different formats, one table, one version, chunks smaller than inputs.
    result = predict(run_main, mlp_model, "--input_file", str(a), "--input_file", str(b),
                     "--chunk_size", "16", *delta)  # fmt: skip
    assert result.returncode == 0, result.stderr
    both = pd.concat([first, second.assign(id=second["id"] + 100)], ignore_index=True)
    assert deltalake.DeltaTable(str(out)).version() == 0
    assert_scored(rows_of(out), both, mlp_model)
    assert (out / "_SUCCESS").exists()
    assert list(rows_of(out).columns) == ["id", "segment", "prediction"]

    result = predict(run_main, mlp_model, "--input_file", str(a), *delta,
                     "--output_mode", "append")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = deltalake.DeltaTable(str(out))
    assert table.version() == 1
    assert len(table.to_pandas()) == len(both) + len(first)

    result = predict(run_main, mlp_model, "--input_file", str(a), *delta)  # overwrite
    assert result.returncode == 0, result.stderr
    table = deltalake.DeltaTable(str(out))
    assert table.version() == 2
    assert_scored(rows_of(out), first, mlp_model)
    modes = [entry["operationParameters"]["mode"] for entry in table.history()]
    assert modes == ["Overwrite", "Append", "Overwrite"]  # newest first

    # verify: the manifest's record is the log entry of the version this run committed.
    verified = run_main("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    assert f"{len(first)} rows" in verified.stdout
    deltalake.write_deltalake(str(out), table.to_pyarrow_table().slice(0, 1), mode="append")
    verified = run_main("verify", str(out))
    assert verified.returncode == 65, verified.stderr
    assert "altered" in verified.stdout


def test_a_failed_run_commits_nothing(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_with_library(make_frame(50, seed=5), tmp_path / "good.parquet", "parquet")
    out = tmp_path / "scores"
    delta = ("--output_dir", str(out), "--output_format", "delta", *KEEP,
             "--chunk_size", "8", "--batch_size", "8")  # fmt: skip
    assert predict(run_main, mlp_model, "--input_file", str(good), *delta).returncode == 0
    before = deltalake.DeltaTable(str(out)).get_add_actions(flatten=True).column("path").to_pylist()

    # The bad row (a null feature) comes after several chunks were handed to delta-rs: a
    # table is streamed in chunks (however small its folder looks).
    frame = make_frame(60, seed=6)
    frame.loc[44, "f1"] = None
    bad = tmp_path / "bad"
    write_table(str(bad), frame)
    handed: list[int] = []
    write = DeltaWriter.write
    monkeypatch.setattr(DeltaWriter, "write", lambda w, b: (handed.append(b.num_rows), write(w, b)))
    result = predict(run_main, mlp_model, "--input_file", str(bad), *delta)
    assert result.returncode == 65, result.stderr
    assert 0 < sum(handed) < 44  # delta-rs had rows of this run when it failed
    assert "row 45" in result.stderr
    table = deltalake.DeltaTable(str(out))
    assert table.version() == 0
    assert table.get_add_actions(flatten=True).column("path").to_pylist() == before
    assert sorted(p.name for p in (out / "_delta_log").glob("*.json")) == [f"{0:020d}.json"]


def test_an_interrupted_run_commits_nothing(
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchpredict import local_engine

    out = tmp_path / "scores"
    write_table(str(out), pd.DataFrame({"id": [0], "segment": ["z"], "prediction": [0.5]}))
    score, calls = local_engine._score, []

    def interrupted(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C while the third chunk is scored
            raise KeyboardInterrupt
        score(*args, **kwargs)

    monkeypatch.setattr(local_engine, "_score", interrupted)
    handed: list[int] = []
    write = DeltaWriter.write
    monkeypatch.setattr(DeltaWriter, "write", lambda w, b: (handed.append(b.num_rows), write(w, b)))
    result = predict(run_main, mlp_model, "--input_file", str(overwritten[0]), *KEEP,
                     "--output_dir", str(out), "--output_format", "delta",
                     "--chunk_size", "8", "--batch_size", "8")  # fmt: skip
    assert result.returncode == 130, result.stderr
    assert sum(handed) > 0
    table = deltalake.DeltaTable(str(out))
    assert table.version() == 0
    assert table.to_pandas()["id"].tolist() == [0]


def test_appending_predictions_that_do_not_fit_the_table_is_refused(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    out = tmp_path / "scores"
    write_table(str(out), pd.DataFrame({"customer": ["x"], "score": [0.5]}))
    data = write_with_library(make_frame(10), tmp_path / "a.parquet", "parquet")
    result = predict(run_main, mlp_model, "--input_file", str(data), *KEEP,
                     "--output_dir", str(out), "--output_format", "delta",
                     "--output_mode", "append")  # fmt: skip
    assert result.returncode == 73, result.stderr
    assert "do not fit the Delta table's schema" in result.stderr
    assert deltalake.DeltaTable(str(out)).version() == 0
    # An overwrite replaces the columns with the predictions'.
    result = predict(run_main, mlp_model, "--input_file", str(data), *KEEP,
                     "--output_dir", str(out), "--output_format", "delta")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert list(rows_of(out).columns) == ["id", "segment", "prediction"]


def test_a_folder_of_other_files_is_not_made_a_table(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    (out / "old.predictions.csv").write_text("id\n1\n")
    data = write_with_library(make_frame(10), tmp_path / "a.parquet", "parquet")
    result = predict(run_main, mlp_model, "--input_file", str(data), *KEEP,
                     "--output_dir", str(out), "--output_format", "delta")  # fmt: skip
    assert result.returncode == 73, result.stderr
    assert "is no Delta table" in result.stderr
    assert not (out / "_delta_log").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--output_file", "t.parquet", "--output_format", "delta"), "give it as --output_dir"),
        (
            ("--output_dir", "out", "--output_mode", "append"),
            "--output_mode is for --output_format",
        ),
        (("--output_dir", "out", "--output_format", "delta", "--engine", "ray"), "--engine ray"),
    ],
)
def test_delta_option_contradictions(
    args: tuple[str, ...], message: str, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    data = write_with_library(make_frame(5), tmp_path / "a.parquet", "parquet")
    result = predict(run_main, mlp_model, "--input_file", str(data), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("side", ["input", "output"])
def test_without_the_extra_the_run_says_how_to_install_it(
    side: str,
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "deltalake", None)  # as if not installed
    data = write_with_library(make_frame(5), tmp_path / "a.parquet", "parquet")
    if side == "input":
        args = ("--input_file", str(overwritten[0]), "--output_file", str(tmp_path / "o.csv"))
    else:
        args = ("--input_file", str(data), "--output_dir", str(tmp_path / "t"),
                "--output_format", "delta")  # fmt: skip
    result = predict(run_main, mlp_model, *args, *KEEP)
    assert result.returncode == 78, result.stderr
    assert "pip install 'batchpredict[delta]'" in result.stderr
    assert not any(line.get("event") == "run started" for line in result.log_lines())


def test_tables_in_a_bucket_are_read_and_written(
    bucket: Any, s3_env: dict[str, str], mlp_model: Path, run_main: RunMain
) -> None:
    """delta-rs' own S3 client: batchpredict passes it the endpoint and allows plain HTTP
    for it; delta-rs 1.x commits with S3's conditional writes, so no locking provider."""
    _, name = bucket
    options = {
        "storage_options": {
            **s3_env,
            "AWS_REGION": s3_env["AWS_DEFAULT_REGION"],
            "AWS_ALLOW_HTTP": "true",
        }
    }
    source, target = f"s3://{name}/exports/customers", f"s3://{name}/scores"
    old, new = make_frame(60, seed=7), make_frame(20, seed=8)
    write_table(source, old, **options)
    write_table(source, new, mode="overwrite", **options)
    result = predict(run_main, mlp_model, "--input_file", source, *KEEP,
                     "--output_dir", target, "--output_format", "delta", env=s3_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_scored(rows_of(target, **options), new, mlp_model)
    result = predict(run_main, mlp_model, "--input_file", source, "--input_version", "0", *KEEP,
                     "--output_dir", target, "--output_format", "delta",
                     "--output_mode", "append", env=s3_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = deltalake.DeltaTable(target, **options)
    assert table.version() == 1
    assert len(table.to_pandas()) == len(new) + len(old)


def test_a_table_s_predictions_default_to_parquet_beside_it_or_in_the_output_dir(
    overwritten: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    table, _, new = overwritten
    result = predict(run_main, mlp_model, "--input_file", str(table), *KEEP)
    assert result.returncode == 0, result.stderr
    assert_scored(pd.read_parquet(f"{table}.predictions.parquet"), new, mlp_model)
    result = predict(run_main, mlp_model, "--input_file", str(table), *KEEP,
                     "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_scored(pd.read_parquet(tmp_path / "out" / "customers.parquet"), new, mlp_model)
