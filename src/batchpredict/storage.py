"""Every location batchpredict reads or writes, local or remote, as a `Location`: the name
as given, the pyarrow filesystem that holds it and the path inside that filesystem.

A local path is pyarrow's `LocalFileSystem`; a URI (`s3://`, `gs://`, `abfs://`,
`hdfs://`, `file://`) goes through pyarrow's filesystems, and through fsspec for schemes
pyarrow has none for (`memory://`, `az://`, ...). Standard input and output (`-`,
`STDIO`) are the one name that is not a location: callers test for it first.

Credentials come only from where the cloud SDKs look (environment, their config files,
instance roles), never from options; `AWS_ENDPOINT_URL`, or `store_settings` for one run
(`--s3_endpoint_url`), points S3 at a compatible store, `STORAGE_EMULATOR_HOST` GCS at an
emulator (store_options); Azure's account, key and endpoint come from its connection
string or account variables (store_azure). Error messages name the location as given
and the store's reason, never a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from batchpredict import store_azure
from batchpredict.config import STDIO as STDIO  # re-exported: the one name for stdin/stdout
from batchpredict.config import is_uri as is_uri  # re-exported for the callers of storage
from batchpredict.config import refuse_credentials
from batchpredict.errors import (
    InputMissingError,
    OutputError,
    ReadWriteError,
    StoreUnreachableError,
    UsageError,
    error_text,
)
from batchpredict.store_options import (
    DEFAULT_STORAGE_TIMEOUT,
    gcs_filesystem,
    s3_filesystem,
    unreachable,
)

#: The characters that make an `--input_file` value a glob pattern.
GLOB_CHARS = frozenset("*?[")
#: Compression suffixes recognised on inputs and outputs, mapped to Arrow codec names.
COMPRESSION_SUFFIXES: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
#: Age after which a temporary beside an output is taken for a killed run's leftover.
STALE_TEMPORARY_SECONDS = 24 * 3600
#: Bytes fetched per request from an object store when reading a stream.
_READ_BUFFER = 8 << 20
#: Bytes read at a time while hashing a file.
_HASH_BLOCK = 1 << 20
#: What stores say when the credentials may not do what was asked (S3, GCS, Azure, HDFS).
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|"
    r"EXPIRED_TOKEN|Forbidden|PermissionDenied|Permission denied|AuthorizationFailure|\b403\b"
)
#: What the stores' clients say when no answer came: refused or timed-out connections,
#: unknown hosts, the retries given up (`--storage_timeout`). An I/O failure (74), not
#: a refusal of the output (73).
_UNREACHABLE = re.compile(
    r"NETWORK_CONNECTION|UNAVAILABLE|DEADLINE_EXCEEDED|Could not connect|Could not resolve|"
    r"Connection refused|Timeout was reached|timed out",
    re.IGNORECASE,
)
_NO_BUCKET = re.compile(
    r"NO_SUCH_BUCKET|NoSuchBucket|bucket does not exist|ContainerNotFound", re.IGNORECASE
)
#: Arrow's preamble ("When reading information for key 'a' in bucket 'b': "), which the
#: URI we print already says, and the request ids that follow AWS messages.
_PREAMBLE = re.compile(r"^When [^:]*: ")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
#: A URL's query string with a SAS signature (Azure puts the request's URL in errors).
_SIGNED_QUERY = re.compile(r"\?[^\s'\"]*\bsig=[^\s'\"]*")
#: Google's client status (`[Errno 2] google::cloud::Status(NOT_FOUND: Permanent error,
#: with a last message of Not Found error_info={...})`): its code and last message.
_GOOGLE_STATUS = re.compile(
    r"^(?:\[Errno \d+\] )?google::cloud::Status\((\w+): [^,]*, with a last message of "
    r"(.*?)(?: error_info=\{.*)?\)?(?:\. Detail: .*)?$"
)


@dataclass(frozen=True)
class Location:
    """A file or folder: `name` as the user gave it (for messages and for naming what is
    beside it), the filesystem holding it, and its `path` in that filesystem."""

    name: str
    filesystem: pafs.FileSystem
    path: str

    @property
    def local(self) -> bool:
        """On this machine's disk (a path or `file://`): where batchpredict's own files get
        the protections only a local filesystem offers (see atomic and sources)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def noun(self) -> str:
        """What one is called in messages: a file, or an object in a store."""
        return "file" if self.local else "object"


_LOCAL = pafs.LocalFileSystem()


def locate(name: str) -> Location:
    """Resolve `name` (a local path or a URI, not `-`) once to its filesystem and path:
    `bucket/key` on S3 and GCS, `container/key` on Azure, `/key` on HDFS, the path itself
    on the local disk."""
    if name == STDIO:
        raise ValueError("standard input/output is not a location")  # callers test first
    if not is_uri(name):
        return Location(name, _LOCAL, name)
    refuse_credentials(name)
    store = _store(name)
    return Location(name, store.filesystem, store.path_of(name))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `uri` and the path inside it (see `locate`)."""
    location = locate(uri)
    return location.filesystem, location.path


@dataclass(frozen=True)
class _Store:
    """One filesystem for a scheme and authority (bucket, container@account, namenode),
    and how its URIs map onto the filesystem's paths: `<prefix><rest of the URI>`."""

    filesystem: pafs.FileSystem
    #: `scheme://authority/`, which every URI of this store starts with.
    base: str
    #: What the filesystem's paths start with instead (`bucket/`, `container/`, `/`).
    prefix: str

    def path_of(self, uri: str) -> str:
        rest = uri[len(self.base) :] if uri.startswith(self.base) else ""
        return (self.prefix + rest).rstrip("/") or self.prefix

    def uri_of(self, path: str) -> str:
        if path.startswith(self.prefix):
            return self.base + path[len(self.prefix) :]
        if path == self.prefix.rstrip("/"):  # the bucket (container, root) itself
            return self.base.rstrip("/")
        return path


#: One filesystem per store (scheme and authority), S3 endpoint, timeout and SDK
#: environment (`_environment_key`), reused while they stay the same: creating an S3 one
#: looks up the bucket's region, an HDFS one connects.
_STORES: dict[tuple[str, str | None, float, str], _Store] = {}


@dataclass(frozen=True)
class StoreSettings:
    """What a run says about its stores: where `s3://` goes (None: the AWS SDK's own
    settings) and how long a store may keep failing (`--storage_timeout`)."""

    s3_endpoint: str | None = None
    timeout: float = DEFAULT_STORAGE_TIMEOUT


_settings = StoreSettings()


@contextlib.contextmanager
def store_settings(
    s3_endpoint: str | None, timeout: float = DEFAULT_STORAGE_TIMEOUT
) -> Iterator[None]:
    """Send `s3://` URIs to the S3-compatible store at `s3_endpoint` (`http://host:port`)
    and give up on any store after `timeout` seconds of failures while in the block. Taken
    from the run's configuration rather than the process environment, so that nothing
    outlives the run."""
    global _settings
    saved, _settings = _settings, StoreSettings(s3_endpoint, timeout)
    try:
        yield
    finally:
        _settings = saved


def current_s3_endpoint() -> str | None:
    """Where `s3://` goes in this run (`--s3_endpoint_url`), else `AWS_ENDPOINT_URL`, else
    None (the SDK's own settings): for libraries with their own S3 client (delta-rs)."""
    return _settings.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None


#: What the stores' SDKs read from the environment: a filesystem made under other values
#: (another endpoint, other credentials) is not the one to reuse.
_SDK_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
)


def _environment_key() -> str:
    """A digest of the SDKs' environment (secrets hashed, never kept as they are)."""
    values = "\0".join(os.environ.get(name, "\1") for name in _SDK_VARIABLES)
    return hashlib.sha256(values.encode()).hexdigest()


def _store(uri: str) -> _Store:
    scheme, _, rest = uri.partition("://")
    authority = rest.split("/", 1)[0]
    endpoint = _settings.s3_endpoint if scheme.lower() == "s3" else None
    base = f"{scheme}://{authority}/"
    key = (base, endpoint, _settings.timeout, _environment_key())
    if key not in _STORES:
        sample = _without_glob(uri)
        filesystem, sample_path = _filesystem(scheme.lower(), sample, endpoint, _settings.timeout)
        # The sample's path is `prefix + what follows the authority`; learn the prefix.
        tail = sample.partition("://")[2][len(authority) :].strip("/")
        sample_path = sample_path.rstrip("/")
        if tail and sample_path.endswith(tail):
            prefix = sample_path[: len(sample_path) - len(tail)]
        else:
            prefix = sample_path + "/"
        store = _Store(filesystem, base, prefix)
        if unreachable(filesystem):
            return store  # asked again next time: it may be back
        _STORES[key] = store
    return _STORES[key]


def _filesystem(
    scheme: str,
    sample_uri: str,
    endpoint: str | None = None,
    timeout: float = DEFAULT_STORAGE_TIMEOUT,
) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `scheme` (at `endpoint`, for S3; giving up after `timeout`
    seconds on S3 and GCS, and on Azure when no connection opens) and the sample's path
    in it, or fsspec's wrapped for pyarrow where pyarrow has none."""
    try:
        azure = _azure_filesystem(sample_uri, timeout) if scheme in ("abfs", "abfss") else None
        if azure is not None:
            return azure
        if scheme == "s3":
            return s3_filesystem(sample_uri, endpoint, timeout)
        if scheme in ("gs", "gcs"):
            return gcs_filesystem(sample_uri, timeout)
        filesystem, path = pafs.FileSystem.from_uri(sample_uri)
        return filesystem, path
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise InputMissingError(f"{sample_uri}: {clean(exc)}") from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputMissingError(
            f"{sample_uri}: cannot open {scheme}:// storage: {clean(exc)}"
        ) from exc
    return _fsspec_filesystem(scheme, sample_uri)


def _azure_filesystem(sample_uri: str, timeout: float) -> tuple[pafs.FileSystem, str] | None:
    """Azure's filesystem from the environment's account settings (`store_azure`), or None
    for the URI forms pyarrow's `from_uri` reads itself."""
    try:
        return store_azure.azure_filesystem(sample_uri, timeout)
    except store_azure.AzureSettingsError as exc:
        raise InputMissingError(f"{sample_uri}: {exc}") from exc


#: The schemes pyarrow has filesystems for; any other goes through fsspec, if installed.
PYARROW_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


def check_scheme(uri: str) -> None:
    """Refuse (exit 2) a URI whose scheme neither pyarrow nor fsspec knows (`foo://`), or,
    without fsspec, any scheme pyarrow lacks (`ftp://`): it names no store to reach."""
    scheme = uri.partition("://")[0].lower()
    if scheme in PYARROW_SCHEMES:
        return
    supported = ", ".join(f"{name}://" for name in PYARROW_SCHEMES)
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"{scheme}:// is not a supported storage scheme (supported: {supported}; others "
            "through fsspec: pip install 'batchpredict[fsspec]' and the package implementing it)"
        ) from None
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise UsageError(
            f"{scheme}:// is not a supported storage scheme (supported: {supported}, and the "
            "schemes fsspec implements)"
        ) from None
    except ImportError:
        pass  # known to fsspec, its package missing: said when the store is opened


def _fsspec_filesystem(scheme: str, uri: str) -> tuple[pafs.FileSystem, str]:
    check_scheme(uri)
    import fsspec.core

    try:
        # The URI's host, port and user become the implementation's arguments (ftp://host).
        implementation, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise InputMissingError(f"{uri}: no filesystem for {scheme}://: {clean(exc)}") from exc
    except Exception as exc:  # each implementation fails in its own way
        raise InputMissingError(f"{uri}: cannot open {scheme}:// storage: {clean(exc)}") from exc
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(implementation))
    return filesystem, str(path)


def split_glob(value: str) -> tuple[str, str]:
    """A glob's fixed folder, up to the `/` before its first wildcard ("" for none), and
    the pattern below it: `exports/*/a.pq` -> (`exports/`, `*/a.pq`)."""
    first = min((value.find(char) for char in GLOB_CHARS if char in value), default=len(value))
    cut = value.rfind("/", 0, first) + 1
    return value[:cut], value[cut:]


def _without_glob(uri: str) -> str:
    """`uri` up to its first wildcard's folder (from_uri cannot parse wildcards)."""
    fixed, pattern = split_glob(uri)
    return fixed.rstrip("/") if GLOB_CHARS & set(pattern) else uri


def _info(location: Location) -> pafs.FileInfo:
    try:
        return location.filesystem.get_file_info(location.path)
    except (pa.ArrowException, OSError) as exc:
        if not location.local and _UNREACHABLE.search(str(exc)):
            raise StoreUnreachableError(location.name, clean(exc)) from exc
        raise InputMissingError(f"{location.name}: cannot read: {clean(exc)}") from exc


def kind(location: Location) -> pafs.FileType:
    """What is at `location`: a file, a folder (a prefix holding objects), or nothing
    (`NotFound`); `Unknown` for a local special file (a named pipe, a device)."""
    return _info(location).type


def compression_of(name: str) -> str | None:
    """The Arrow codec named by the last suffix of `name` (`.gz`: gzip), or None."""
    suffix = os.path.splitext(name.rsplit("/", 1)[-1])[1]
    return COMPRESSION_SUFFIXES.get(suffix.lower())


def open_stream(name: str) -> pa.NativeFile:
    """`name` as a sequential stream, decompressed by its suffix (.gz, .bz2, .zst)."""
    location = locate(name)
    # Buffered on stores, where every unbuffered read is a request, and the readers also
    # read a byte or a line at a time. Decompressed below, by our suffix table (pyarrow
    # would detect it too, and decompress twice).
    buffer = None if location.local else _READ_BUFFER
    try:
        stream = location.filesystem.open_input_stream(
            location.path, compression=None, buffer_size=buffer
        )
    except (pa.ArrowException, OSError) as exc:
        raise _open_error(location, exc) from exc
    codec = compression_of(name)
    return pa.CompressedInputStream(stream, codec) if codec else stream


def open_file(name: str) -> Any:
    """`name` for random access (Parquet reads its footer first)."""
    location = locate(name)
    try:
        return location.filesystem.open_input_file(location.path)
    except (pa.ArrowException, OSError) as exc:
        raise _open_error(location, exc) from exc


def _open_error(location: Location, exc: BaseException) -> Exception:
    """Missing or refused -> the input is unreadable (66); anything else is I/O (74)."""
    if isinstance(exc, FileNotFoundError):
        return InputMissingError(f"{location.name}: no such {location.noun}")
    if location.local:
        if isinstance(exc, (IsADirectoryError, PermissionError)):
            return InputMissingError(f"{location.name}: cannot read: {error_text(exc)}")
        return ReadWriteError(f"{location.name}: cannot open: {error_text(exc)}")
    why = clean(exc)
    if _DENIED.search(str(exc)) or _NO_BUCKET.search(str(exc)):
        return InputMissingError(f"{location.name}: cannot read: {why}")
    return ReadWriteError(f"{location.name}: cannot read: {why}")


def fingerprint(name: str) -> dict[str, Any]:
    """What tells one version of a file from another: `size`, `mtime` (seconds since the
    epoch) and `etag`, as the store says (None for what it does not say, all None when
    the file is not there). The ETag comes from the metadata of a stream opened on the
    object (a HEAD request on S3; GCS says `etag`), and tells apart two writes of the same
    size within the second that S3's modification times resolve. A local file has no
    ETag (the key is left out) and its modification time has the disk's resolution."""
    location = locate(name)
    if location.local:
        try:
            stat = os.stat(location.path)
        except FileNotFoundError:
            return {"size": None, "mtime": None}
        return {"size": stat.st_size, "mtime": stat.st_mtime}
    info = _info(location)
    if info.type != pafs.FileType.File:
        return {"size": None, "mtime": None, "etag": None}
    try:
        with location.filesystem.open_input_stream(location.path) as stream:
            metadata = stream.metadata() or {}
    except FileNotFoundError:
        return {"size": None, "mtime": None, "etag": None}  # removed since it was listed
    except (pa.ArrowException, OSError) as exc:
        raise _open_error(location, exc) from exc
    raw = metadata.get("ETag") or metadata.get("etag")
    etag = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return {"size": info.size, "mtime": mtime, "etag": etag}


@dataclass(frozen=True)
class Content:
    """A file's SHA-256 (hex) and size in bytes, as the manifest records them."""

    sha256: str
    bytes: int


def content(name: str) -> Content:
    """The SHA-256 and size of the file `name`, read in blocks as stored (a `.gz` file's
    compressed bytes)."""
    location = locate(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with location.filesystem.open_input_stream(location.path, compression=None) as stream:
            while block := stream.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except (pa.ArrowException, OSError) as exc:
        raise _open_error(location, exc) from exc
    return Content(digest.hexdigest(), size)


def temporary_name(name: str) -> str:
    """Where an output in a store is written before it is complete: beside it under a
    `_`-prefixed unique name (hidden from batchpredict's globs, and from Spark's and
    Hive's). Beside it rather than in a subfolder, because pyarrow leaves a marker object
    for a "folder" emptied by a delete."""
    folder, _, base = name.rpartition("/")
    return f"{folder}/_{base}.{uuid.uuid4().hex}.tmp"


def remove_stale_temporaries(name: str) -> None:
    """Delete store temporaries of `name` older than STALE_TEMPORARY_SECONDS: left by runs
    that were killed (SIGKILL, a lost node), since on a store no process id tells a dead
    writer from one on another machine. Best effort (one listing of the target's folder),
    except that a store giving no answer fails here (74), not again at each next step."""
    folder, _, base = name.rpartition("/")
    stale = re.compile(rf"_{re.escape(base)}\.[0-9a-f]{{32}}\.tmp")
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    try:
        location = locate(folder)
        selector = pafs.FileSelector(location.path.rstrip("/"), allow_not_found=True)
        listed = location.filesystem.get_file_info(selector)
    except Exception as exc:
        if _UNREACHABLE.search(str(exc)):
            raise ReadWriteError(f"{name}: cannot write: {clean(exc)}") from exc
        return
    with contextlib.suppress(Exception):
        for info in listed:
            if (
                info.type == pafs.FileType.File
                and stale.fullmatch(info.base_name)
                and info.mtime is not None
                and info.mtime.timestamp() < cutoff
            ):
                location.filesystem.delete_file(info.path)


def open_output(name: str, shown: str | None = None) -> pa.NativeFile:
    """A new object at `name` to write to (uploaded in parts as it is written); `shown`
    is the name errors give (the output's, when `name` is its temporary)."""
    location = locate(name)
    try:
        # Compressed by the writer, which knows the target's suffix, not the temporary's.
        return location.filesystem.open_output_stream(location.path, compression=None)
    except (pa.ArrowException, OSError) as exc:
        failure = ReadWriteError if _UNREACHABLE.search(str(exc)) else OutputError
        raise failure(f"{shown or name}: cannot create output: {clean(exc)}") from exc


def publish(source: str, target: str, what: str = "") -> None:
    """Move a complete file into place: a rename where the filesystem has one (local,
    HDFS), a server-side copy and delete on object stores, where the final object appears
    whole or not at all. `what` the file is (" manifest") goes into the error message."""
    moved, final = locate(source), locate(target)
    filesystem = moved.filesystem
    try:
        try:
            filesystem.move(moved.path, final.path)
        except NotImplementedError:  # pyarrow's ArrowNotImplementedError is one too
            # Stores without a move (Azure blobs without a hierarchical namespace): a
            # server-side copy, also whole or nothing, then the temporary goes.
            filesystem.copy_file(moved.path, final.path)
            filesystem.delete_file(moved.path)
    except (pa.ArrowException, OSError) as exc:
        raise ReadWriteError(f"{target}: cannot write{what}: {reason(final, exc)}") from exc


def clean(exc: BaseException) -> str:
    """A store's error as one short line: its first line, without Arrow's preamble and
    AWS request ids; "access denied: ..." when the credentials were refused. pyarrow and
    the cloud SDKs do not put secrets in their messages."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = _REQUEST_ID.sub("", _PREAMBLE.sub("", text.splitlines()[0])).strip()
    line = _SIGNED_QUERY.sub("?***", line)
    line = _GOOGLE_STATUS.sub(r"\1: \2", line)
    return f"access denied: {line}" if _DENIED.search(text) else line


def reason(location: Location, exc: BaseException) -> str:
    """Why an operation on `location` failed, for a one-line message: the local error's
    text, or the store's error cleaned (`clean`)."""
    return error_text(exc) if location.local else clean(exc)


def identity(name: str) -> str:
    """What two names of the same file share: a local file's real path, a URI itself.
    (By name alone: telling them apart must not reach a store.)"""
    return name if is_uri(name) else os.path.realpath(name)


def join(base: str, *names: str) -> str:
    """`base/name/...`: `/` separates the parts of local paths and of URIs alike."""
    return "/".join([base.rstrip("/"), *names])


def size(name: str) -> int | None:
    """A file's size in bytes; None when the store does not say, it is not a file or it
    cannot be looked at."""
    location = locate(name)
    try:
        info = _info(location)
    except InputMissingError:
        if location.local:  # as before: a local file that cannot be looked at has no size
            return None
        raise
    return info.size if info.type == pafs.FileType.File else None


def read_bytes(name: str) -> bytes:
    """A whole (small) file: the staging folder's rejects parts, a manifest."""
    location = locate(name)
    try:
        with location.filesystem.open_input_stream(location.path, compression=None) as stream:
            return bytes(stream.read())
    except (pa.ArrowException, OSError) as exc:
        raise _open_error(location, exc) from exc


def list_files(folder: str) -> list[str]:
    """The files directly in `folder`, sorted (none when it does not exist)."""
    location = locate(folder)
    selector = pafs.FileSelector(location.path.rstrip("/") or "/", allow_not_found=True)
    try:
        infos = location.filesystem.get_file_info(selector)
    except (pa.ArrowException, OSError) as exc:
        raise ReadWriteError(f"{folder}: cannot list: {clean(exc)}") from exc
    return sorted(join(folder, info.base_name) for info in infos if info.type == pafs.FileType.File)


def delete(name: str) -> None:
    """Delete a file if it is there; a refusal is an output that cannot be created (73):
        the files deleted are outputs (`_SUCCESS`, a folder's old parts) and temporaries. A store
    that gives no answer is an I/O failure (74)."""
    location = locate(name)
    try:
        location.filesystem.delete_file(location.path)
    except FileNotFoundError:
        pass
    except (pa.ArrowException, OSError) as exc:
        unreachable = not location.local and _UNREACHABLE.search(str(exc))
        failure = ReadWriteError if unreachable else OutputError
        raise failure(f"{name}: cannot delete: {reason(location, exc)}") from exc


def delete_tree(folder: str) -> None:
    """Delete a folder and everything in it, if it is there (best effort)."""
    with contextlib.suppress(Exception):
        location = locate(folder)
        location.filesystem.delete_dir(location.path.rstrip("/"))


def delete_if_empty(folder: str) -> None:
    """Delete a folder that holds nothing (another run may still be using it otherwise)."""
    with contextlib.suppress(Exception):
        location = locate(folder)
        if location.local:
            # rmdir checks and deletes in one step, so a file another run adds meanwhile
            # cannot be lost; stores have no such call (and no folders to leave behind).
            os.rmdir(location.path)
            return
        selector = pafs.FileSelector(
            location.path.rstrip("/"), allow_not_found=True, recursive=True
        )
        if not location.filesystem.get_file_info(selector):
            location.filesystem.delete_dir(location.path.rstrip("/"))


def make_dirs(folder: str) -> None:
    """Create a folder (and its parents); object stores have none to create (pyarrow would
    leave a marker object)."""
    location = locate(folder)
    if location.local:
        location.filesystem.create_dir(location.path, recursive=True)
