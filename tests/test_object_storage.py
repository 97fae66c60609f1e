"""Inputs from s3:// through pyarrow's S3 filesystem, against an S3 server on the loopback
interface (moto's `moto_server`), started by the fixture."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
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

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
pytestmark = pytest.mark.slow
RunCli = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 and the environment that points the SDKs at it."""
    server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = _free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> Any:
    """A fresh bucket, as a boto3 client and its name."""
    client = boto3.client("s3")
    name = f"exports-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return client, name


def test_every_format_and_a_glob_from_a_bucket(
    bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    client, name = bucket
    frames = {}
    for day, fmt in enumerate(FORMATS, start=1):
        frames[fmt] = make_frame(250, seed=day)
        local = write_with_library(frames[fmt], tmp_path / f"d{EXTENSIONS[fmt]}", fmt)
        client.upload_file(str(local), name, f"nightly/2026-11-0{day}{EXTENSIONS[fmt]}")
    client.put_object(Bucket=name, Key="nightly/_SUCCESS", Body=b"")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/nightly/2026-11-*",
        "--output_dir", str(tmp_path / "out"), "--keep_columns", "id", env=s3_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for day, fmt in enumerate(FORMATS, start=1):
        out = read_with_library(tmp_path / "out" / f"2026-11-0{day}{EXTENSIONS[fmt]}", fmt)
        frame = frames[fmt]
        assert out["id"].tolist() == frame["id"].tolist()
        expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
        np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    "uri", ["s3://{bucket}/nightly/missing.csv", "s3://no-such-bucket-xyz/a.csv"]
)
def test_missing_objects_and_buckets_exit_66_naming_the_uri(
    uri: str, bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path,
    run_cli: RunCli,
) -> None:  # fmt: skip
    _, name = bucket
    uri = uri.format(bucket=name)
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", uri,
        "--output_dir", str(tmp_path / "out"), env=s3_env,
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert uri in result.stderr and "testing" not in result.stderr  # no credentials
    assert "Traceback" not in result.stderr


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Object keys under `prefix`, without the empty `folder/` markers pyarrow's S3
    filesystem creates for the folders it writes into."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed if not item["Key"].endswith("/"))


def test_outputs_written_to_a_bucket_appear_whole_and_last_the_markers(
    bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    client, name = bucket
    frame = make_frame(3000, seed=4)
    local = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    client.upload_file(str(local), name, "in/day=1/part-0.parquet")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/in/",
        "--output_dir", f"s3://{name}/scored", "--keep_columns", "id",
        "--output_format", "csv", "--chunk_size", "500", env=s3_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _keys(client, name, "scored/") == [
        "scored/_SUCCESS",
        "scored/_manifest.json",
        "scored/day=1/part-0.csv",
    ]
    client.download_file(name, "scored/day=1/part-0.csv", str(tmp_path / "out.csv"))
    out = read_with_library(tmp_path / "out.csv", "csv")
    assert out["id"].tolist() == frame["id"].tolist()


def test_a_failure_mid_run_leaves_no_object_under_the_final_key(
    bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    client, name = bucket
    frame = make_frame(3000, seed=5)
    frame.loc[2500, "f1"] = None  # a bad row after five chunks were written
    local = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    client.upload_file(str(local), name, "in/d.parquet")
    client.put_object(Bucket=name, Key="out/d.parquet", Body=b"previous")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/in/d.parquet",
        "--output_file", f"s3://{name}/out/d.parquet", "--keep_columns", "id",
        "--chunk_size", "500", env=s3_env,
    )  # fmt: skip
    assert result.returncode == 65, result.stderr
    assert "row 2501, column 'f1'" in result.stderr
    assert _keys(client, name, "out/") == ["out/d.parquet"]
    body = client.get_object(Bucket=name, Key="out/d.parquet")["Body"].read()
    assert body == b"previous"
