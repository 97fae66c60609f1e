"""Shared fixtures: real Keras models saved to disk, data files written by the real libraries,
and the installed `batchpredict` command run in a subprocess."""

from __future__ import annotations

import os

# Before TensorFlow is imported anywhere in the test session.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

#: The object stores on the loopback interface and the `store` fixture (tests/stores.py).
pytest_plugins = ["stores"]

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
FORMATS = ("csv", "tsv", "jsonl", "avro", "parquet")
EXTENSIONS = {
    "csv": ".csv",
    "tsv": ".tsv",
    "jsonl": ".jsonl",
    "avro": ".avro",
    "parquet": ".parquet",
}
N_FEATURES = 4


def corpora_path(*parts: str) -> Path:
    """A path inside ../shared/corpora, skipping the test when the folder is absent."""
    path = CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"third-party corpus not present: {path}")
    return path


def batchpredict_command() -> list[str]:
    """The installed console script next to the running interpreter (as a user runs it)."""
    script = Path(sys.executable).with_name("batchpredict")
    if script.exists():
        return [str(script)]
    found = shutil.which("batchpredict")
    assert found, "the batchpredict command is not installed; pip install -e '.[test]'"
    return [found]


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def log_lines(self) -> list[dict[str, object]]:
        """stderr parsed as JSON log lines (the format used off a terminal)."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., Completed]:
    """Run `batchpredict ARGS...` in a subprocess; return code, stdout and stderr."""

    def run(
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 300,
    ) -> Completed:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
        full_env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tool must silence TensorFlow itself
        full_env.update(env or {})
        proc = subprocess.run(
            [*batchpredict_command(), *args],
            cwd=cwd,
            env=full_env,
            input=input,
            capture_output=True,
            timeout=timeout,
        )
        return Completed(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    return run


@pytest.fixture
def run_main() -> Callable[..., Completed]:
    """Run `batchpredict ARGS...` in this process through `cli.main(argv)`: the same exit
    codes, stdout and stderr as the command, without a new interpreter importing
    TensorFlow each time. Environment, working directory and standard streams are the
    call's own and restored afterwards."""
    import io
    import signal

    from batchpredict import cli, observe

    def run(
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
    ) -> Completed:
        saved_env = dict(os.environ)
        saved_cwd = os.getcwd()
        saved_streams = (sys.stdin, sys.stdout, sys.stderr)
        saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGXFSZ)}
        out, err = io.BytesIO(), io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
        # Logging set up by a library call in an earlier test (its stream a stale one)
        # must not catch this run's lines: the command configures its own.
        observe.reset_logging()
        try:
            for key in [k for k in os.environ if k.startswith("BATCHPREDICT_")]:
                del os.environ[key]
            os.environ.update(env or {})
            if cwd is not None:
                os.chdir(cwd)
            sys.stdin = io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8")
            sys.stdout, sys.stderr = stdout, stderr
            code = cli.main(list(args))
            stdout.flush()
            stderr.flush()
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            for signum, handler in saved_handlers.items():
                signal.signal(signum, handler)
            observe.unbind_run_id()
            # The command's logging wrote to this call's stderr, closed with it: a library
            # call later in the session must find logging unconfigured, as in a new process.
            observe.reset_logging()
        return Completed(code, out.getvalue().decode(), err.getvalue().decode())

    return run


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """An id column, N_FEATURES float features and a string column, as an export would have."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(1, rows + 1, dtype=np.int64)})
    for j in range(N_FEATURES):
        frame[f"f{j}"] = rng.normal(size=rows).astype(np.float64)
    frame["segment"] = rng.choice(["a", "b", "c"], size=rows)
    return frame


def write_with_library(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    """Write `frame` with the format's reference library (not batchpredict's writers)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "tsv":
        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(delimiter="\t"))
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "avro":
        import fastavro

        fields = []
        for name, dtype in frame.dtypes.items():
            avro_type = {"int64": "long", "float64": "double", "float32": "float"}.get(
                str(dtype), "string"
            )
            fields.append({"name": name, "type": avro_type})
        schema = {"type": "record", "name": "Row", "fields": fields}
        with path.open("wb") as handle:
            fastavro.writer(handle, schema, frame.to_dict("records"), codec="deflate")
    else:
        raise ValueError(fmt)
    return path


def read_with_library(path: Path, fmt: str) -> pd.DataFrame:
    """Read an output with the format's reference library."""
    if fmt == "csv":
        return pacsv.read_csv(path).to_pandas()
    if fmt == "tsv":
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t")).to_pandas()
    if fmt == "jsonl":
        return pd.read_json(path, lines=True)
    if fmt == "parquet":
        return pq.read_table(path).to_pandas()
    if fmt == "avro":
        import fastavro

        with path.open("rb") as handle:
            return pd.DataFrame.from_records(list(fastavro.reader(handle)))
    raise ValueError(fmt)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_model(models_dir: Path) -> Path:
    """A Keras MLP with one [None, N_FEATURES] input and one width-1 output, saved as .keras."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=(N_FEATURES,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    output = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    model = keras.Model(inputs, output)
    path = models_dir / "mlp.keras"
    model.save(path)
    return path


def reference_predictions(model_path: Path, features: np.ndarray) -> np.ndarray:
    """The model called directly (loaded back from disk), the ground truth for comparisons."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    return keras.ops.convert_to_numpy(model(features.astype(np.float32), training=False))


@pytest.fixture(scope="session")
def two_in_two_out_model(models_dir: Path) -> Path:
    """Named scalar inputs `a`, `b`; dict outputs `score` (width 1) and `embedding` (width 3)."""
    import keras

    keras.utils.set_random_seed(2)
    a = keras.Input(shape=(1,), name="a")
    b = keras.Input(shape=(1,), name="b")
    hidden = keras.layers.Dense(6, activation="tanh")(keras.layers.Concatenate()([a, b]))
    outputs = {
        "score": keras.layers.Dense(1, name="score")(hidden),
        "embedding": keras.layers.Dense(3, name="embedding")(hidden),
    }
    model = keras.Model({"a": a, "b": b}, outputs)
    path = models_dir / "two_in_two_out.keras"
    model.save(path)
    return path


# -- an S3 server on the loopback interface ------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto_server(server_env: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    """Start moto's S3 server on a free port of 127.0.0.1; the process and the environment
    that points the SDKs at it (fake credentials)."""
    pytest.importorskip("moto")
    # The server of the moto this interpreter runs, not whichever is first on PATH (another
    # Python's moto may answer pyarrow's multipart uploads in a way it rejects).
    beside = Path(sys.executable).with_name("moto_server")
    server = str(beside) if beside.exists() else shutil.which("moto_server") or "moto_server"
    port = _free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(server_env or {})},
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
            return proc, env
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 and the environment that points the SDKs at it
    (passed to the commands under test; the test process's own environment is left alone)."""
    proc, env = start_moto_server()
    yield env
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> Any:
    """A fresh bucket, as a boto3 client and its name."""
    boto3 = pytest.importorskip("boto3")
    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )
    name = f"exports-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return client, name


def s3_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Object keys under `prefix`, without the empty `folder/` markers pyarrow's S3
    filesystem creates for the folders it writes into."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed if not item["Key"].endswith("/"))
