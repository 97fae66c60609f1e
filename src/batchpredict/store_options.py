"""The settings each store's pyarrow filesystem is made with: where it is (an S3-compatible
endpoint, a GCS emulator) and how long a request may keep failing (`--storage_timeout`).

pyarrow's own defaults retry for long: its GCS client for up to 15 minutes, so that a
`gs://` input with no route to the store would hang a cron job; every filesystem made
here gives up after about the run's timeout instead. GCS's client also waits 2 minutes
for a connection whatever its retry limit, and Azure's has no timeout settings, so a GCS
or Azure store that takes none within the timeout is told before the filesystem is made
(`no_connection`, `Unreachable`; Azure's in store_azure).
"""

from __future__ import annotations

import datetime
import os
import socket
import urllib.parse
from typing import Any, NoReturn

import pyarrow.fs as pafs

from batchpredict.config import DEFAULT_STORAGE_TIMEOUT as DEFAULT_STORAGE_TIMEOUT

#: Attempts at one S3 request; each may take a third of the timeout to connect or answer.
S3_ATTEMPTS = 3
#: The share of the timeout GCS's client may spend retrying: its backoff sleeps past the
#: limit before it checks it (measured: 60 s of retries against a closed port gave up
#: after 78 s for one object, 111 s for a listing).
GCS_RETRY_SHARE = 0.5
#: Google's endpoint, when no emulator is named.
GOOGLE_STORAGE = ("https", "storage.googleapis.com")
#: Behind a proxy the clients connect to it, not to the store: nothing to check then.
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy")
#: The variable Google's client libraries honour to reach a Storage emulator
#: (`http://host:port`); pyarrow's GCS client ignores it, so batchpredict reads it here.
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def s3_filesystem(
    sample_uri: str, endpoint: str | None, timeout: float
) -> tuple[pafs.FileSystem, str]:
    """An S3 filesystem for the bucket of `sample_uri` at `endpoint` (else
    `AWS_ENDPOINT_URL`, else AWS), and the sample's path in it: the bucket's region is
    looked up by `from_uri` as before, then the filesystem is made again with timeouts."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    query = f"?{urllib.parse.urlencode({'endpoint_override': endpoint})}" if endpoint else ""
    located, path = pafs.FileSystem.from_uri(sample_uri + query)
    per_attempt = timeout / S3_ATTEMPTS
    filesystem = pafs.S3FileSystem(
        region=located.region,
        endpoint_override=endpoint,
        connect_timeout=per_attempt,
        request_timeout=per_attempt,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
    )
    return filesystem, path


def gcs_filesystem(sample_uri: str, timeout: float) -> tuple[pafs.FileSystem, str]:
    """A GCS filesystem that gives up within about `timeout` seconds, and the sample's path
    in it (`bucket/key`). With `STORAGE_EMULATOR_HOST` set it goes there, with anonymous
    credentials, as Google's libraries do under an emulator; else to Google with the
    application-default credentials."""
    path = sample_uri.partition("://")[2]
    limit = datetime.timedelta(seconds=timeout * GCS_RETRY_SHARE)
    emulator = os.environ.get(EMULATOR_VARIABLE)
    scheme, authority = emulator_address(emulator) if emulator else GOOGLE_STORAGE
    # Its client waits 2 minutes for a connection whatever its retry limit (a stall
    # timeout pyarrow does not let us set): a store with no route to it is told here.
    why = no_connection(scheme, authority, timeout)
    if why is not None:
        return pafs.PyFileSystem(Unreachable(why)), path
    if not emulator:
        return pafs.GcsFileSystem(retry_time_limit=limit), path
    filesystem = pafs.GcsFileSystem(
        anonymous=True, scheme=scheme, endpoint_override=authority, retry_time_limit=limit
    )
    return filesystem, path


def no_connection(scheme: str, authority: str, timeout: float) -> str | None:
    """Why the store at `authority` is unreachable: a TCP connection that did not open
    within `timeout`. None when it opened, and when it was refused or the host is unknown
    (the client says so itself at once), or a proxy is in the way."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    address = urllib.parse.urlsplit(f"{scheme}://{authority}")
    port = address.port or (443 if scheme == "https" else 80)
    try:
        socket.create_connection((address.hostname, port), timeout=timeout).close()
    except TimeoutError:
        return f"UNAVAILABLE: no connection to {authority} within {timeout:g} s"
    except OSError:
        pass
    return None


def _fail(self: Unreachable, *args: Any, **kwargs: Any) -> NoReturn:
    raise ConnectionError(self.why)


class Unreachable(pafs.FileSystemHandler):  # type: ignore[misc]  # pyarrow is untyped
    """A store that took no connection: every operation fails at once with `why` (instead
    of each waiting for its client's own timeout)."""

    def __init__(self, why: str) -> None:
        self.why = why

    def get_type_name(self) -> str:
        return "unreachable"

    def equals(self, other: Any) -> bool:
        return other is self

    def normalize_path(self, path: str) -> str:
        return path

    get_file_info = get_file_info_selector = create_dir = delete_dir = _fail
    delete_dir_contents = delete_root_dir_contents = delete_file = move = copy_file = _fail
    open_input_stream = open_input_file = open_output_stream = open_append_stream = _fail


def unreachable(filesystem: pafs.FileSystem) -> bool:
    """Whether `filesystem` stands for a store that took no connection (not to be kept
    for later runs, for which it may be back)."""
    handler = getattr(filesystem, "handler", None)
    return isinstance(handler, Unreachable)


def emulator_address(value: str) -> tuple[str, str]:
    """`STORAGE_EMULATOR_HOST` as (scheme, host:port): `http://127.0.0.1:4443`, or without
    a scheme (`localhost:4443`) plain HTTP, as Google's Python library takes it."""
    parsed = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/"):
        raise ValueError(f"{EMULATOR_VARIABLE}: expected http://host:port, got {value!r}")
    if "@" in parsed.netloc:
        raise ValueError(f"{EMULATOR_VARIABLE}: a credential in the address is not taken")
    return parsed.scheme, parsed.netloc
