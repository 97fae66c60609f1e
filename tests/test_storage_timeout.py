"""`--storage_timeout`: a store that cannot be reached fails the run with its documented
exit code and a message naming the URI, instead of retrying for minutes (pyarrow's GCS
client retries for 15 by default). Stores are pointed at a closed port of 127.0.0.1, as
users point them at theirs (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST,
AZURE_STORAGE_CONNECTION_STRING). No test here measures time; the README gives the times
measured."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchpredict import storage
from batchpredict.store_options import emulator_address
from conftest import Completed, make_frame, write_with_library
from stores import AZURITE_KEY, connection_string

RunCli = Callable[..., Completed]
#: Where each store is pointed, and the fake credentials S3's client wants before it
#: sends anything.
STORE_ENV = {
    "s3": lambda port: {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    },
    "gs": lambda port: {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"},
    "abfs": lambda port: {"AZURE_STORAGE_CONNECTION_STRING": connection_string(port)},
}

#: The option each location under test is given to.
OPTION_OF_ROLE = {
    "input": "--input_file",
    "glob": "--input_file",
    "output_file": "--output_file",
    "output_dir": "--output_dir",
    "model": "--model",
}


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def predict_against(
    uri: str, role: str, store_env: dict[str, str], timeout: str, tmp_path: Path,
    model: Path, run_main: RunCli,
) -> tuple[Completed, str]:  # fmt: skip
    """A run with `uri` in `role` (the other locations local) against the store that
    `store_env` points at; its result and the error of its `run failed` line."""
    data = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    locations = {"--model": str(model), "--input_file": str(data),
                 "--output_file": str(tmp_path / "o.csv")}  # fmt: skip
    if role == "output_dir":
        del locations["--output_file"]
    locations[OPTION_OF_ROLE[role]] = uri
    env = {**store_env, "BATCHPREDICT_CACHE_DIR": str(tmp_path / "c")}
    result = run_main(
        "predict", *(item for pair in locations.items() for item in pair),
        "--keep_columns", "id,segment", "--storage_timeout", timeout, env=env,
    )  # fmt: skip
    failed = [line["error"] for line in result.log_lines() if line["event"] == "run failed"]
    return result, failed[0] if failed else ""


@pytest.mark.parametrize("scheme", ["s3", "gs", "abfs"])
@pytest.mark.parametrize(
    ("role", "code"),
    [("input", 66), ("glob", 66), ("output_file", 74), ("output_dir", 74), ("model", 78)],
)
def test_an_unreachable_store_fails_with_its_exit_code_naming_the_uri(
    scheme: str, role: str, code: int, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    uri = {
        "input": f"{scheme}://bkt/in/d.csv",
        "glob": f"{scheme}://bkt/in/*.csv",
        "output_file": f"{scheme}://bkt/out/d.csv",
        "output_dir": f"{scheme}://bkt/out",
        "model": f"{scheme}://bkt/models/mlp.keras",
    }[role]
    result, error = predict_against(
        uri, role, STORE_ENV[scheme](closed_port()), "2", tmp_path, mlp_model, run_main
    )
    assert result.returncode == code, result.stderr
    assert uri in error and "Could not connect" in error, error
    assert "testing" not in result.stderr and "Traceback" not in result.stderr
    assert AZURITE_KEY not in result.stderr


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port of 127.0.0.1 whose connections never open, as a store with no route to it:
    a listening socket whose queue is full, so that the kernel drops further SYNs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port: int = server.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        pytest.skip("this kernel opens connections beyond a full listen queue")
    except TimeoutError:
        pass
    yield port
    for sock in [*fillers, server]:
        sock.close()


@pytest.mark.parametrize("scheme", ["gs", "abfs"])
@pytest.mark.parametrize(("role", "code"), [("input", 66), ("output_file", 74), ("model", 78)])
def test_a_store_with_no_route_fails_without_waiting_for_its_client(
    scheme: str, role: str, code: int, silent_port: int, tmp_path: Path, mlp_model: Path,
    run_main: RunCli,
) -> None:  # fmt: skip
    """GCS's client would wait 2 minutes for the connection whatever its retry limit,
    Azure's had not given up after 500 s; batchpredict tells the store took none within
    --storage_timeout."""
    where = "models/mlp.keras" if role == "model" else f"{role}/d.csv"
    uri = f"{scheme}://bkt/{where}"
    result, error = predict_against(
        uri, role, STORE_ENV[scheme](silent_port), "1", tmp_path, mlp_model, run_main
    )
    assert result.returncode == code, result.stderr
    assert uri in error, error
    assert f"no connection to 127.0.0.1:{silent_port} within 1 s" in error


def test_the_timeout_reaches_the_stores_filesystems(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each store's filesystem is made with the run's timeout, and a new one for another
    timeout (S3: connect and request timeouts of a third each, three attempts; GCS: half
    of it to retry in)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    with storage.store_settings(None, 9):
        gcs = storage.locate("gs://bkt/a.csv").filesystem.__reduce__()[1][0]
        s3 = storage.locate("s3://bkt/a.csv").filesystem.__reduce__()[1][0]
    assert gcs["retry_time_limit"] == datetime.timedelta(seconds=4.5)  # its backoff overshoots
    assert (gcs["anonymous"], gcs["scheme"]) == (True, "http")
    assert (s3["connect_timeout"], s3["request_timeout"]) == (3, 3)
    with storage.store_settings(None, 4):
        again = storage.locate("gs://bkt/a.csv").filesystem.__reduce__()[1][0]
    assert again["retry_time_limit"] == datetime.timedelta(seconds=2)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("http://127.0.0.1:4443", ("http", "127.0.0.1:4443")),
        ("https://gcs.test", ("https", "gcs.test")),
        ("localhost:9023", ("http", "localhost:9023")),  # as Google's Python library takes it
    ],
)
def test_the_emulator_variable_is_read_as_googles_libraries_read_it(
    value: str, address: tuple[str, str]
) -> None:
    assert emulator_address(value) == address


@pytest.mark.parametrize("value", ["ftp://h:1", "http://", "http://u:p@h:1", "http://h:1/x"])
def test_an_emulator_address_that_is_no_address_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="STORAGE_EMULATOR_HOST"):
        emulator_address(value)


def test_a_bad_emulator_address_exits_66_naming_the_uri(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "gs://bkt/d.csv",
        "--output_file", str(tmp_path / "o.csv"), env={"STORAGE_EMULATOR_HOST": "ftp://h:1"},
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert "gs://bkt/d.csv" in result.stderr and "STORAGE_EMULATOR_HOST" in result.stderr


def test_ray_workers_get_the_gcs_emulator_and_the_timeout_in_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchpredict import ray_engine
    from batchpredict.config import RunConfig

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    config = RunConfig(model="m", input_files=("a",), storage_timeout=5)
    assert ray_engine._runtime_env(config) == {
        "env_vars": {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}
    }


def test_a_timeout_of_zero_is_a_usage_error(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "d.csv"),
        "--storage_timeout", "0",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--storage_timeout" in result.stderr
