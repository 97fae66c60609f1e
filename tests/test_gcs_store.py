"""gs:// inputs, outputs and models against a GCS emulator on the loopback interface
(fake-gcs-server, reached through STORAGE_EMULATOR_HOST as Google's libraries reach one).
Written against the store interface (`GcsStore`: put, get, keys, uri), so that other
stores can run the same tests."""

from __future__ import annotations

import json
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
from gcs_emulator import GcsStore, gcs_store

__all__ = ["gcs_store"]  # the fixture, used by name below

RunCli = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def put_file(store: GcsStore, bucket: str, key: str, local: Path) -> None:
    store.put(bucket, key, local.read_bytes())


def assert_predicted(model: Path, frame: pd.DataFrame, out: pd.DataFrame) -> None:
    """`out` holds `frame`'s ids and the model's predictions for its features."""
    expected = reference_predictions(model, frame[FEATURES].to_numpy()).reshape(-1)
    assert out["id"].tolist() == frame["id"].tolist()
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("listing", ["glob", "prefix"])
def test_every_format_is_read_from_a_bucket_through_a_glob_and_a_prefix(
    listing: str, gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    bucket = gcs_store.new_bucket()
    frames = {}
    for day, fmt in enumerate(FORMATS, start=1):
        frames[fmt] = make_frame(250, seed=day)
        local = write_with_library(frames[fmt], tmp_path / f"d{EXTENSIONS[fmt]}", fmt)
        put_file(gcs_store, bucket, f"nightly/2026-11-0{day}{EXTENSIONS[fmt]}", local)
    gcs_store.put(bucket, "nightly/_SUCCESS", b"")  # hidden from listings, like local ones
    pattern = "nightly/2026-11-*" if listing == "glob" else "nightly/"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", gcs_store.uri(bucket, pattern),
        "--output_dir", str(tmp_path / "out"), "--keep_columns", "id,segment",
        env=gcs_store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for day, fmt in enumerate(FORMATS, start=1):
        out = read_with_library(tmp_path / "out" / f"2026-11-0{day}{EXTENSIONS[fmt]}", fmt)
        assert_predicted(mlp_model, frames[fmt], out)


def test_an_output_folder_in_a_bucket_mirrors_the_inputs_with_manifest_and_success(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    bucket = gcs_store.new_bucket()
    frame = make_frame(3000, seed=4)
    put_file(gcs_store, bucket, "in/day=1/part-0.parquet",
             write_with_library(frame, tmp_path / "d.parquet", "parquet"))  # fmt: skip
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", gcs_store.uri(bucket, "in/"),
        "--output_dir", gcs_store.uri(bucket, "scored"), "--keep_columns", "id,segment",
        "--output_format", "csv", "--chunk_size", "500", env=gcs_store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert gcs_store.keys(bucket, "scored/") == [
        "scored/_SUCCESS",
        "scored/_manifest.json",
        "scored/day=1/part-0.csv",
    ]
    (tmp_path / "out.csv").write_bytes(gcs_store.get(bucket, "scored/day=1/part-0.csv"))
    assert_predicted(mlp_model, frame, read_with_library(tmp_path / "out.csv", "csv"))
    [record] = json.loads(gcs_store.get(bucket, "scored/_manifest.json"))["outputs"]
    written = gcs_store.get(bucket, "scored/day=1/part-0.csv")
    assert (record["output"], record["rows"], record["bytes"]) == (
        "day=1/part-0.csv", 3000, len(written),
    )  # fmt: skip
    assert record["output_etag"]  # GCS's ETag, which tells one version from another


def test_a_failed_rerun_leaves_the_previous_object_and_no_temporary(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    bucket = gcs_store.new_bucket()
    frame = make_frame(3000, seed=5)
    frame.loc[2500, "f1"] = None  # a bad row after five chunks were written
    put_file(gcs_store, bucket, "in/d.parquet",
             write_with_library(frame, tmp_path / "d.parquet", "parquet"))  # fmt: skip
    gcs_store.put(bucket, "out/d.parquet", b"previous")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", gcs_store.uri(bucket, "in/d.parquet"),
        "--output_file", gcs_store.uri(bucket, "out/d.parquet"), "--keep_columns", "id,segment",
        "--chunk_size", "500", env=gcs_store.env,
    )  # fmt: skip
    assert result.returncode == 65, result.stderr
    assert "row 2501, column 'f1'" in result.stderr
    assert gcs_store.keys(bucket, "out/") == ["out/d.parquet"]
    assert gcs_store.get(bucket, "out/d.parquet") == b"previous"


def test_rejects_and_the_summary_are_written_to_the_bucket(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    bucket = gcs_store.new_bucket()
    local = write_with_library(make_frame(400, seed=6), tmp_path / "d.csv", "csv")
    lines = local.read_text().splitlines()
    fields = lines[10].split(",")
    lines[10] = ",".join([*fields[:2], "", *fields[3:]])  # data row 10 without f1
    gcs_store.put(bucket, "in/d.csv", ("\n".join(lines) + "\n").encode())
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", gcs_store.uri(bucket, "in/"),
        "--output_dir", gcs_store.uri(bucket, "scored"), "--keep_columns", "id,segment",
        "--on_error", "skip",
        "--max_error_rate", "0.01", "--summary_file", gcs_store.uri(bucket, "runs/s.json"),
        env=gcs_store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "scored/_rejects.jsonl" in gcs_store.keys(bucket, "scored/")
    [record] = [
        json.loads(line) for line in gcs_store.get(bucket, "scored/_rejects.jsonl").splitlines()
    ]
    assert (record["source"], record["row"], record["column"]) == (
        gcs_store.uri(bucket, "in/d.csv"), 10, "f1",
    )  # fmt: skip
    summary = json.loads(gcs_store.get(bucket, "runs/s.json"))
    assert (summary["rows_out"], summary["outputs"]) == (
        399, [gcs_store.uri(bucket, "scored/d.csv")],
    )  # fmt: skip
    assert gcs_store.keys(bucket, "runs/") == ["runs/s.json"]  # no temporary left


def test_a_keras_model_in_a_bucket_is_served_from_the_cache_until_it_is_replaced(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    """The cache entry is keyed by the objects' ETags, which GCS gives as `etag`."""
    import keras

    bucket = gcs_store.new_bucket()
    put_file(gcs_store, bucket, "models/mlp.keras", mlp_model)
    frame = make_frame(60, seed=8)
    data = write_with_library(frame, tmp_path / "d.csv", "csv")
    env = {**gcs_store.env, "BATCHPREDICT_CACHE_DIR": str(tmp_path / "cache")}

    def run(output: str) -> list[str]:
        result = run_main(
            "predict", "--model", gcs_store.uri(bucket, "models/mlp.keras"),
            "--input_file", str(data), "--output_file", str(tmp_path / output),
            "--keep_columns", "id,segment", env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [line["event"] for line in result.log_lines()]

    first, second = run("a.csv"), run("b.csv")
    assert "model downloaded" in first and "model cache hit" not in first
    assert "model cache hit" in second and "model downloaded" not in second
    assert_predicted(mlp_model, frame, read_with_library(tmp_path / "b.csv", "csv"))

    doubled = keras.saving.load_model(mlp_model, compile=False)
    doubled.set_weights([weight * 2 for weight in doubled.get_weights()])
    doubled.save(tmp_path / "doubled.keras")
    put_file(gcs_store, bucket, "models/mlp.keras", tmp_path / "doubled.keras")
    third = run("c.csv")
    assert "model downloaded" in third and "model cache hit" not in third
    assert_predicted(
        tmp_path / "doubled.keras", frame, read_with_library(tmp_path / "c.csv", "csv")
    )


def test_a_missing_bucket_as_input_exits_66_naming_the_uri(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    uri = gcs_store.uri("no-such-bucket-xyz", "a.csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", uri,
        "--output_dir", str(tmp_path / "out"), env=gcs_store.env,
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert uri in result.stderr and "Traceback" not in result.stderr


def test_an_output_the_store_refuses_exits_73_naming_the_uri(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    """The emulator has no permissions to refuse with; it refuses an object in a bucket
    that does not exist."""
    data = write_with_library(make_frame(20, seed=9), tmp_path / "d.csv", "csv")
    uri = gcs_store.uri("no-such-bucket-xyz", "out/d.csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data),
        "--output_file", uri, "--keep_columns", "id,segment", env=gcs_store.env,
    )  # fmt: skip
    assert result.returncode == 73, result.stderr
    assert uri in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_ray_engine_reads_and_writes_a_bucket(
    gcs_store: GcsStore, tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    """Ray's workers reach the emulator too (STORAGE_EMULATOR_HOST in their runtime
    environment) and write the parts to the bucket's staging folder."""
    pytest.importorskip("ray")
    bucket = gcs_store.new_bucket()
    frame = make_frame(900, seed=10)
    for part, rows in enumerate((frame.iloc[:500], frame.iloc[500:])):
        local = write_with_library(rows, tmp_path / f"p{part}.parquet", "parquet")
        put_file(gcs_store, bucket, f"in/p{part}.parquet", local)
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", gcs_store.uri(bucket, "in/*.parquet"),
        "--output_dir", gcs_store.uri(bucket, "scored"), "--keep_columns", "id,segment",
        "--engine", "ray", "--preserve_order", "--chunk_size", "300", env=gcs_store.env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    keys = gcs_store.keys(bucket, "scored/")
    parts = [key for key in keys if key.startswith("scored/part-")]
    assert parts and keys == sorted([*parts, "scored/_SUCCESS", "scored/_manifest.json"])
    scored = []
    for key in parts:
        (tmp_path / "part.parquet").write_bytes(gcs_store.get(bucket, key))
        scored.append(read_with_library(tmp_path / "part.parquet", "parquet"))
    assert_predicted(mlp_model, frame, pd.concat(scored, ignore_index=True))
    assert gcs_store.keys(bucket, "scored/_temporary/") == []
