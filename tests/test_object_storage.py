"""Inputs and outputs in object storage, against real servers on the loopback interface:
every test over `store` runs once per store (tests/stores.py: S3 through moto's server,
GCS through fake-gcs-server, Azure through Azurite); S3's own options and its refusals
through moto, and a scheme pyarrow lacks through fsspec."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

import batchpredict
from batchpredict import storage
from batchpredict.atomic import write_whole
from conftest import (
    EXTENSIONS,
    FORMATS,
    N_FEATURES,
    Completed,
    make_frame,
    read_with_library,
    reference_predictions,
    start_moto_server,
    write_with_library,
)
from stores import Store

RunCli = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def read_object(store: Store, bucket: str, key: str, fmt: str, tmp_path: Path) -> pd.DataFrame:
    """An object in the store read back by the format's own library."""
    local = tmp_path / f"read-back{EXTENSIONS[fmt]}"
    local.write_bytes(store.get(bucket, key))
    return read_with_library(local, fmt)


def assert_no_secret(store: Store, result: Completed) -> None:
    for secret in store.secrets:
        assert secret not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def nightly(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, pd.DataFrame]]:
    """A bucket with one file of every format under `nightly/` (and a `_SUCCESS` marker):
    its name and the frames written."""
    name = store.new_bucket()
    folder = tmp_path_factory.mktemp("nightly")
    frames = {}
    for day, fmt in enumerate(FORMATS, start=1):
        frames[fmt] = make_frame(250, seed=day)
        local = write_with_library(frames[fmt], folder / f"d{EXTENSIONS[fmt]}", fmt)
        store.upload(name, f"nightly/2026-11-0{day}{EXTENSIONS[fmt]}", local)
    store.put(name, "nightly/_SUCCESS", b"")
    return name, frames


@pytest.mark.parametrize("given", ["nightly/2026-11-*", "nightly/"], ids=["glob", "prefix"])
def test_every_format_through_a_glob_and_a_prefix(
    given: str, store: Store, nightly: tuple[str, dict[str, pd.DataFrame]], tmp_path: Path,
    mlp_model: Path, run_main: RunCli,
) -> None:  # fmt: skip
    name, frames = nightly
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", store.uri(name, given),
        "--output_dir", str(tmp_path / "out"), "--keep_columns", "id,segment", env=store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for day, fmt in enumerate(FORMATS, start=1):
        out = read_with_library(tmp_path / "out" / f"2026-11-0{day}{EXTENSIONS[fmt]}", fmt)
        frame = frames[fmt]
        assert out["id"].tolist() == frame["id"].tolist()
        expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
        np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize("where", ["missing-key", "missing-bucket"])
def test_missing_objects_and_buckets_exit_66_naming_the_uri(
    where: str, store: Store, nightly: tuple[str, Any], tmp_path: Path, mlp_model: Path,
    run_main: RunCli,
) -> None:  # fmt: skip
    if where == "missing-key":
        uri = store.uri(nightly[0], "nightly/missing.csv")
    else:
        uri = store.uri("no-such-bucket-xyz", "a.csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", uri,
        "--output_dir", str(tmp_path / "out"), env=store.env,
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert uri in result.stderr and "Traceback" not in result.stderr
    assert_no_secret(store, result)


def test_an_output_in_a_bucket_that_does_not_exist_exits_73_naming_the_uri(
    store: Store, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    data = write_with_library(make_frame(20, seed=9), tmp_path / "d.csv", "csv")
    uri = store.uri("no-such-bucket-xyz", "out/d.csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data),
        "--output_file", uri, "--keep_columns", "id,segment", env=store.env,
    )  # fmt: skip
    assert result.returncode == 73, result.stderr
    assert uri in result.stderr and "Traceback" not in result.stderr
    assert_no_secret(store, result)


def test_outputs_written_to_a_bucket_appear_whole_and_last_the_markers(
    store: Store, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    name = store.new_bucket()
    frame = make_frame(3000, seed=4)
    store.upload(
        name,
        "in/day=1/part-0.parquet",
        write_with_library(frame, tmp_path / "d.parquet", "parquet"),
    )
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", store.uri(name, "in/"),
        "--output_dir", store.uri(name, "scored"), "--keep_columns", "id,segment",
        "--output_format", "csv", "--chunk_size", "500",
        "--summary_file", store.uri(name, "runs/summary.json"), env=store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert store.keys(name, "scored/") == [
        "scored/_SUCCESS",
        "scored/_manifest.json",
        "scored/day=1/part-0.csv",
    ]
    out = read_object(store, name, "scored/day=1/part-0.csv", "csv", tmp_path)
    assert out["id"].tolist() == frame["id"].tolist()
    output_uri = store.uri(name, "scored/day=1/part-0.csv")
    summary = json.loads(store.get(name, "runs/summary.json"))
    assert (summary["rows_out"], summary["outputs"]) == (3000, [output_uri])
    manifest = json.loads(store.get(name, "scored/_manifest.json"))
    [entry] = manifest["outputs"]
    assert (entry["output"], entry["rows"], entry["bytes"]) == (
        "day=1/part-0.csv",
        3000,
        len(store.get(name, "scored/day=1/part-0.csv")),
    )
    assert entry["output_etag"] == store.etag(name, "scored/day=1/part-0.csv")
    assert store.get(name, "scored/_SUCCESS") == b""
    assert store.keys(name, "runs/") == ["runs/summary.json"]  # no temporary left beside it


def test_a_failure_mid_run_leaves_the_previous_object_and_no_temporary(
    store: Store, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    name = store.new_bucket()
    frame = make_frame(3000, seed=5)
    frame.loc[2500, "f1"] = None  # a bad row after five chunks were written
    store.upload(name, "in/d.parquet", write_with_library(frame, tmp_path / "d.parquet", "parquet"))
    store.put(name, "out/d.parquet", b"previous")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", store.uri(name, "in/d.parquet"),
        "--output_file", store.uri(name, "out/d.parquet"), "--keep_columns", "id,segment",
        "--chunk_size", "500", env=store.env,
    )  # fmt: skip
    assert result.returncode == 65, result.stderr
    assert "row 2501, column 'f1'" in result.stderr
    assert store.keys(name, "out/") == ["out/d.parquet"]
    assert store.get(name, "out/d.parquet") == b"previous"


def test_rejects_and_skip_existing_with_the_output_folder_in_a_bucket(
    store: Store, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    name = store.new_bucket()
    frame = make_frame(400, seed=6)
    local = write_with_library(frame, tmp_path / "d.csv", "csv")
    lines = local.read_text().splitlines()
    fields = lines[10].split(",")
    lines[10] = ",".join([*fields[:2], "", *fields[3:]])  # row 10 without f1: a bad row
    local.write_text("\n".join(lines) + "\n")
    store.upload(name, "in/d.csv", local)
    args = (
        "predict", "--model", str(mlp_model), "--input_file", store.uri(name, "in/"),
        "--output_dir", store.uri(name, "scored"), "--keep_columns", "id,segment",
        "--on_error", "skip", "--max_error_rate", "0.01",
        "--summary_file", store.uri(name, "runs/summary.json"),
    )  # fmt: skip
    first = run_main(*args, env=store.env)
    assert first.returncode == 0, first.stderr
    assert store.keys(name, "scored/") == [
        "scored/_SUCCESS", "scored/_manifest.json", "scored/_rejects.jsonl", "scored/d.csv",
    ]  # fmt: skip
    rejects = store.get(name, "scored/_rejects.jsonl")
    [record] = [json.loads(line) for line in rejects.decode().splitlines()]
    assert (record["source"], record["row"], record["column"]) == (
        store.uri(name, "in/d.csv"),
        10,
        "f1",
    )
    summary = json.loads(store.get(name, "runs/summary.json"))
    assert (summary["rows_out"], summary["rows_rejected"]) == (399, 1)
    before = store.etag(name, "scored/d.csv")

    again = run_main(*args, "--skip_existing", env=store.env)
    assert again.returncode == 0, again.stderr
    skipped = [line for line in again.log_lines() if line["event"].endswith("skipped")]
    assert [line["output"] for line in skipped] == [store.uri(name, "scored/d.csv")]
    assert store.etag(name, "scored/d.csv") == before


@pytest.mark.parametrize("side", ["input", "output"])
def test_credentials_the_store_refuses_exit_66_reading_and_73_writing(
    side: str, store: Store, nightly: tuple[str, Any], tmp_path: Path, mlp_model: Path,
    run_main: RunCli,
) -> None:  # fmt: skip
    refused_env = store.refusing_env()
    name = nightly[0]
    local = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    if side == "input":
        where = ["--input_file", store.uri(name, "nightly/2026-11-01.csv"),
                 "--output_file", str(tmp_path / "o.csv")]  # fmt: skip
    else:
        where = ["--input_file", str(local), "--output_file", store.uri(name, "scores/d.csv")]
    result = run_main(
        "predict", "--model", str(mlp_model), *where, "--keep_columns", "id,segment",
        env=refused_env,
    )  # fmt: skip
    assert result.returncode == (66 if side == "input" else 73), result.stderr
    error = str(result.log_lines()[-1]["error"])
    assert f"{store.scheme}://" in error and "access denied" in error, error
    assert "Traceback" not in result.stderr
    assert_no_secret(store, result)
    assert not (tmp_path / "o.csv").exists()
    assert store.keys(name, "scores/") == []


def test_s3_endpoint_url_option_and_compressed_objects(
    bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    client, name = bucket
    frame = make_frame(50, seed=7)
    local = write_with_library(frame, tmp_path / "d.csv", "csv")
    client.put_object(Bucket=name, Key="in/d.csv.gz", Body=gzip.compress(local.read_bytes()))
    env = {k: v for k, v in s3_env.items() if k != "AWS_ENDPOINT_URL"}
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/in/d.csv.gz",
        "--output_file", f"s3://{name}/out/d.csv.gz", "--keep_columns", "id,segment",
        "--s3_endpoint_url", s3_env["AWS_ENDPOINT_URL"], env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = client.get_object(Bucket=name, Key="out/d.csv.gz")["Body"].read()
    (tmp_path / "out.csv").write_bytes(gzip.decompress(written))  # compressed exactly once
    assert read_with_library(tmp_path / "out.csv", "csv")["id"].tolist() == frame["id"].tolist()
    bad = run_main(
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/in/d.csv.gz",
        "--output_file", str(tmp_path / "out2.csv"), "--s3_endpoint_url", "127.0.0.1:1",
    )  # fmt: skip
    assert bad.returncode == 2 and "--s3_endpoint_url" in bad.stderr


@pytest.fixture(scope="module")
def s3_refusing_env() -> Iterator[dict[str, str]]:
    """An S3 server that checks credentials (moto with authentication on from the first
    request), and an environment whose key it does not know."""
    proc, env = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield {**env, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("side", ["input", "output"])
def test_refused_credentials_exit_66_reading_and_73_writing(
    side: str, s3_refusing_env: dict[str, str], tmp_path: Path, mlp_model: Path,
    run_main: RunCli,
) -> None:  # fmt: skip
    local = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    if side == "input":
        where = ["--input_file", "s3://exports/d.csv", "--output_file", str(tmp_path / "o.csv")]
    else:
        where = ["--input_file", str(local), "--output_file", "s3://scores/d.csv"]
    result = run_main(
        "predict", "--model", str(mlp_model), *where, "--keep_columns", "id,segment",
        env=s3_refusing_env,
    )  # fmt: skip
    assert result.returncode == (66 if side == "input" else 73), result.stderr
    error = str(result.log_lines()[-1]["error"])
    assert "s3://" in error and "access denied" in error, error
    assert "s3cr3t" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_stores_pyarrow_cannot_reach_exit_66_naming_the_uri(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "hdfs://namenode:8020/d.csv",
        "--output_file", str(tmp_path / "o.csv"),
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert "hdfs://namenode:8020/d.csv: cannot open hdfs:// storage" in result.stderr


@pytest.mark.slow
def test_the_ray_engine_reads_and_writes_a_bucket(
    store: Store, tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    pytest.importorskip("ray")
    name = store.new_bucket()
    frame = make_frame(900, seed=8)
    for part, rows in enumerate((frame.iloc[:500], frame.iloc[500:])):
        local = write_with_library(rows, tmp_path / f"p{part}.parquet", "parquet")
        store.upload(name, f"in/p{part}.parquet", local)
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", store.uri(name, "in/*.parquet"),
        "--output_dir", store.uri(name, "scored"), "--keep_columns", "id,segment",
        "--engine", "ray", "--preserve_order", "--chunk_size", "300", env=store.env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    keys = store.keys(name, "scored/")
    parts = [key for key in keys if key.startswith("scored/part-")]
    assert parts and keys == sorted([*parts, "scored/_SUCCESS", "scored/_manifest.json"])
    scored = [read_object(store, name, key, "parquet", tmp_path) for key in parts]
    out = pd.concat(scored, ignore_index=True)
    assert out["id"].tolist() == frame["id"].tolist()
    expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    manifest = json.loads(store.get(name, "scored/_manifest.json"))
    assert manifest["engine"] == "ray" and manifest["model"]["sha256"]
    assert sum(output["rows"] for output in manifest["outputs"]) == 900
    assert all(len(output["sha256"]) == 64 for output in manifest["outputs"])
    assert store.keys(name, "_temporary/") == []  # the staging folder is gone


def test_fsspec_fills_in_for_schemes_pyarrow_lacks(tmp_path: Path, mlp_model: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    frame = make_frame(120, seed=9)
    local = write_with_library(frame, tmp_path / "d.jsonl", "jsonl")
    memory.pipe("/exports/day=1/d.jsonl", local.read_bytes())
    memory.pipe("/exports/day=1/_SUCCESS", b"")
    summary = batchpredict.predict(
        model=str(mlp_model),
        input_file="memory://exports/",
        output_dir="memory://scored",
        keep_columns=["id", "segment"],
    )
    assert summary.rows_out == 120
    assert sorted(memory.find("/scored")) == [
        "/scored/_SUCCESS", "/scored/_manifest.json", "/scored/day=1/d.jsonl",
    ]  # fmt: skip
    (tmp_path / "out.jsonl").write_bytes(memory.cat("/scored/day=1/d.jsonl"))
    out = read_with_library(tmp_path / "out.jsonl", "jsonl")
    assert out["id"].tolist() == frame["id"].tolist()


def test_stores_without_a_move_get_a_copy_then_a_delete() -> None:
    fsspec = pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFileSystem

    class WithoutMove(MemoryFileSystem):  # like Azure blobs without a hierarchical namespace
        protocol = "nomove"
        store: ClassVar[dict[str, Any]] = {}  # its own, not memory://'s
        pseudo_dirs: ClassVar[list[str]] = [""]

        @classmethod
        def _strip_protocol(cls, path: str) -> str:
            return "/" + path.removeprefix("nomove://").lstrip("/")

        def mv(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("this store cannot move")

    fsspec.register_implementation("nomove", WithoutMove, clobber=True)
    write_whole("nomove://bucket/out/_manifest.json", "{}\n")
    assert sorted(WithoutMove.store) == ["/bucket/out/_manifest.json"]
    assert WithoutMove.store["/bucket/out/_manifest.json"].getvalue() == b"{}\n"


@pytest.mark.parametrize("command", ["predict", "inspect"])
def test_credentials_in_a_uri_are_refused_and_not_echoed(
    command: str, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    uri = "s3://AKIAEXAMPLE:s3cr3t@models/mlp.keras"
    args = ["--input_file", "s3://exports/d.csv", "--output_dir", str(tmp_path)]
    result = run_main(command, "--model", uri, *(args if command == "predict" else []))
    assert result.returncode == 2, result.stderr
    assert "credentials in a URI are refused" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout


def test_a_killed_runs_temporaries_are_removed_once_stale(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = store.new_bucket()
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    leftover = f"out/_d.csv.{'a' * 32}.tmp"
    others = ["out/d.csv", f"out/_e.csv.{'b' * 32}.tmp", "out/_d.csv.notours.tmp"]
    for key in [leftover, *others]:
        store.put(name, key, b"x")

    write_whole(store.uri(name, "out/d.csv"), "fresh\n")  # the leftover is younger than a day
    assert store.keys(name, "out/") == sorted([leftover, *others])

    monkeypatch.setattr(storage, "STALE_TEMPORARY_SECONDS", 0)
    write_whole(store.uri(name, "out/d.csv"), "fresh\n")
    assert store.keys(name, "out/") == sorted(others)
    assert store.get(name, "out/d.csv") == b"fresh\n"


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("abfs://scores@account.dfs.core.windows.net/day=1/d.csv", "scores/day=1/d.csv"),
        ("file:///srv/exports/d.csv", "/srv/exports/d.csv"),
        ("memory://exports/d.csv", "/exports/d.csv"),
    ],
)
def test_uris_map_onto_their_filesystems_paths_and_back(uri: str, path: str) -> None:
    """Each store's paths differ from its URIs (Azure's container comes from the user part,
    local and HDFS paths start at `/`); listings are turned back into URIs. (S3's mapping
    is exercised against the S3 server above: creating its filesystem asks for the
    bucket's region.)"""
    if uri.startswith("memory://"):
        pytest.importorskip("fsspec")
    found = storage.resolve(uri)[1]
    assert found == path
    assert storage._store(uri).uri_of(found) == uri
