"""URIs (`s3://`, `gs://`, `abfs://`, `hdfs://`, `file://`) through pyarrow's filesystems,
and through fsspec for schemes pyarrow has none for (`memory://`, `az://`, ...).

Credentials come only from where the cloud SDKs look (environment, their config files,
instance roles), never from options; `AWS_ENDPOINT_URL`, or `s3_endpoint` for one run
(`--s3_endpoint_url`), points S3 at a compatible store. Error messages name the URI and
the store's reason, never a secret.

Reading and planning code paths call `is_uri` and keep their own local-file code; the
helpers at the end (`join`, `size`, `read_bytes`, `list_files`, `move`, `delete`,
`delete_tree`, `make_dirs`) take either, for code that treats both alike (the Ray
engine's staging folder).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import structlog

from batchpredict.config import is_uri as is_uri  # re-exported for the callers of storage
from batchpredict.config import refuse_credentials
from batchpredict.errors import InputMissingError, OutputError, ReadWriteError, UsageError

_GLOB_CHARS = frozenset("*?[")
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
#: Age after which a temporary beside an output is taken for a killed run's leftover.
STALE_TEMPORARY_SECONDS = 24 * 3600
#: Bytes fetched per request from an object store when reading a stream.
_READ_BUFFER = 8 << 20
#: What stores say when the credentials may not do what was asked (S3, GCS, Azure, HDFS).
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|"
    r"EXPIRED_TOKEN|Forbidden|PermissionDenied|Permission denied|AuthorizationFailure|\b403\b"
)
_NO_BUCKET = re.compile(r"NO_SUCH_BUCKET|NoSuchBucket|bucket does not exist", re.IGNORECASE)
#: Arrow's preamble ("When reading information for key 'a' in bucket 'b': "), which the
#: URI we print already says, and the request ids that follow AWS messages.
_PREAMBLE = re.compile(r"^When [^:]*: ")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `uri` and the path inside it (`bucket/key` on S3 and GCS,
    `container/key` on Azure, `/key` on HDFS)."""
    refuse_credentials(uri)
    store = _store(uri)
    return store.filesystem, store.path_of(uri)


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


#: One filesystem per scheme, authority and S3 endpoint for the whole run: creating an S3
#: one looks up the bucket's region, an HDFS one connects.
_STORES: dict[tuple[str, str | None], _Store] = {}
#: Where `s3://` goes while `s3_endpoint` is in force (None: the AWS SDK's own settings).
_s3_endpoint: str | None = None


@contextlib.contextmanager
def s3_endpoint(url: str | None) -> Iterator[None]:
    """Send `s3://` URIs to the S3-compatible store at `url` (`http://host:port`) while in
    the block; None leaves them to the SDK's settings. Taken from the run's configuration
    rather than the process environment, so that nothing outlives the run."""
    global _s3_endpoint
    saved, _s3_endpoint = _s3_endpoint, url
    try:
        yield
    finally:
        _s3_endpoint = saved


def _store(uri: str) -> _Store:
    scheme, _, rest = uri.partition("://")
    authority = rest.split("/", 1)[0]
    base = f"{scheme}://{authority}/"
    endpoint = _s3_endpoint if scheme.lower() == "s3" else None
    if (base, endpoint) not in _STORES:
        sample = _without_glob(uri)
        filesystem, sample_path = _filesystem(scheme.lower(), sample, endpoint)
        # The sample's path is `prefix + what follows the authority`; learn the prefix.
        tail = sample.partition("://")[2][len(authority) :].strip("/")
        sample_path = sample_path.rstrip("/")
        if tail and sample_path.endswith(tail):
            prefix = sample_path[: len(sample_path) - len(tail)]
        else:
            prefix = sample_path + "/"
        _STORES[base, endpoint] = _Store(filesystem, base, prefix)
    return _STORES[base, endpoint]


def _filesystem(
    scheme: str, sample_uri: str, endpoint: str | None = None
) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `scheme` (at `endpoint`, for S3) and the sample's path in
    it, or fsspec's wrapped for pyarrow where pyarrow has none."""
    # Users' URIs carry no query string (config refuses one), so this one is the only one.
    query = f"?{urllib.parse.urlencode({'endpoint_override': endpoint})}" if endpoint else ""
    try:
        filesystem, path = pafs.FileSystem.from_uri(sample_uri + query)
        return filesystem, path
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise InputMissingError(f"{sample_uri}: {clean(exc)}") from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputMissingError(
            f"{sample_uri}: cannot open {scheme}:// storage: {clean(exc)}"
        ) from exc
    return _fsspec_filesystem(scheme, sample_uri)


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


def _without_glob(uri: str) -> str:
    """`uri` up to its first wildcard's folder (from_uri cannot parse wildcards)."""
    if not _GLOB_CHARS & set(uri):
        return uri
    head = re.split(r"[*?\[]", uri, maxsplit=1)[0]
    return head.rsplit("/", 1)[0] or head


def _as_uri(template: str, path: str) -> str:
    """The URI of a filesystem path found while listing under `template`."""
    return _store(template).uri_of(path)


def expand(value: str) -> list[tuple[str, str]]:
    """Files named by `value` as (uri, root uri) pairs, sorted: one object, every object
    under a prefix (a "directory"), or those matching a glob (`**` crosses folders)."""
    filesystem, path = resolve(value)
    if _GLOB_CHARS & set(path):
        root = re.split(r"[*?\[]", path, maxsplit=1)[0].rsplit("/", 1)[0]
        found = _listing(filesystem, root, value)
        pattern = path.replace("**/", "*").replace("**", "*")
        matches = [p for p in found if fnmatch.fnmatchcase(p, pattern)]
        return [(_as_uri(value, p), _as_uri(value, root)) for p in sorted(matches)]
    info = _info(filesystem, path, value)
    if info.type == pafs.FileType.File:
        return [(value, _as_uri(value, path.rsplit("/", 1)[0]))]
    if info.type == pafs.FileType.Directory:
        return [
            (_as_uri(value, p), _as_uri(value, path.rstrip("/")))
            for p in sorted(_listing(filesystem, path, value))
        ]
    raise InputMissingError(f"{value}: no such object")


def _info(filesystem: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputMissingError(f"{uri}: cannot read: {clean(exc)}") from exc


def _listing(filesystem: pafs.FileSystem, root: str, uri: str) -> list[str]:
    """Every file below `root`, skipping hidden and `_`-prefixed names."""
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError as exc:
        raise InputMissingError(f"{uri}: no such bucket or prefix") from exc
    except (pa.ArrowException, OSError) as exc:
        raise InputMissingError(f"{uri}: cannot list: {clean(exc)}") from exc
    found = []
    for info in infos:
        parts = info.path[len(root) :].removeprefix("/").split("/")
        if info.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in parts):
            continue
        if "" in parts:
            # `in//x.csv`: a key S3 allows but pyarrow cannot open; one bad object must
            # not fail every listing of its prefix.
            # structlog directly: observe writes through storage.
            structlog.get_logger("batchpredict").warning(
                "object skipped: its key has an empty path segment ('//'), which pyarrow "
                "cannot read; rename it",
                object=_as_uri(uri, info.path),
            )
            continue
        found.append(info.path)
    return found


def open_stream(uri: str) -> pa.NativeFile:
    """`uri` as a sequential stream, decompressed by its suffix (.gz, .bz2, .zst)."""
    filesystem, path = resolve(uri)
    suffix = "." + uri.rsplit(".", 1)[-1] if "." in uri else ""
    try:
        # Buffered: on object stores every unbuffered read is a request, and the readers
        # also read a byte or a line at a time. Decompressed below, by our suffix table
        # (pyarrow would detect it too, and decompress twice).
        stream = filesystem.open_input_stream(path, compression=None, buffer_size=_READ_BUFFER)
    except FileNotFoundError as exc:
        raise InputMissingError(f"{uri}: no such object") from exc
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(uri, exc) from exc
    codec = _COMPRESSION.get(suffix)
    return pa.CompressedInputStream(stream, codec) if codec else stream


def open_file(uri: str) -> Any:
    """`uri` for random access (Parquet reads its footer first)."""
    filesystem, path = resolve(uri)
    try:
        return filesystem.open_input_file(path)
    except FileNotFoundError as exc:
        raise InputMissingError(f"{uri}: no such object") from exc
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(uri, exc) from exc


def _read_error(uri: str, exc: BaseException) -> Exception:
    """Refused or missing → the input is unreadable (66); anything else is I/O (74)."""
    reason = clean(exc)
    if _DENIED.search(str(exc)) or _NO_BUCKET.search(str(exc)):
        return InputMissingError(f"{uri}: cannot read: {reason}")
    return ReadWriteError(f"{uri}: cannot read: {reason}")


def fingerprint(uri: str) -> dict[str, Any]:
    """What tells one version of an object from another: `size`, `mtime` (seconds since the
    epoch) and `etag`, as the store says (None for what it does not say, all None when
    the object is not there). The ETag comes from the metadata of a stream opened on the
    object (a HEAD request on S3; GCS says `etag`), and tells apart two writes of the same
    size within the second that S3's modification times resolve."""
    filesystem, path = resolve(uri)
    info = _info(filesystem, path, uri)
    if info.type != pafs.FileType.File:
        return {"size": None, "mtime": None, "etag": None}
    try:
        with filesystem.open_input_stream(path) as stream:
            metadata = stream.metadata() or {}
    except FileNotFoundError:
        return {"size": None, "mtime": None, "etag": None}  # removed since it was listed
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(uri, exc) from exc
    raw = metadata.get("ETag") or metadata.get("etag")
    etag = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return {"size": info.size, "mtime": mtime, "etag": etag}


def temporary_uri(uri: str) -> str:
    """Where an output is written before it is complete: beside it under a `_`-prefixed
    unique name (hidden from batchpredict's globs, and from Spark's and Hive's). Beside it
    rather than in a subfolder, because pyarrow leaves a marker object for a "folder"
    emptied by a delete."""
    folder, _, name = uri.rpartition("/")
    return f"{folder}/_{name}.{uuid.uuid4().hex}.tmp"


def remove_stale_temporaries(uri: str) -> None:
    """Delete temporaries of `uri` older than STALE_TEMPORARY_SECONDS: left by runs that
    were killed (SIGKILL, a lost node), since on a store no process id tells a dead writer
    from one on another machine. Best effort: one listing of the target's folder."""
    folder, _, name = uri.rpartition("/")
    stale = re.compile(rf"_{re.escape(name)}\.[0-9a-f]{{32}}\.tmp")
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    with contextlib.suppress(Exception):
        filesystem, inner = resolve(folder)
        selector = pafs.FileSelector(inner.rstrip("/"), allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if (
                info.type == pafs.FileType.File
                and stale.fullmatch(info.base_name)
                and info.mtime is not None
                and info.mtime.timestamp() < cutoff
            ):
                filesystem.delete_file(info.path)


def open_output(uri: str) -> pa.NativeFile:
    """A new object at `uri` to write to (uploaded in parts as it is written)."""
    filesystem, path = resolve(uri)
    try:
        # Compressed by the writer, which knows the target's suffix, not the temporary's.
        return filesystem.open_output_stream(path, compression=None)
    except (pa.ArrowException, OSError) as exc:
        raise OutputError(f"{uri}: cannot create output: {clean(exc)}") from exc


def publish(temporary: str, final: str) -> None:
    """Move a complete output into place: a rename where the store has one (HDFS, local),
    a server-side copy and delete on object stores, where the final object appears whole
    or not at all."""
    filesystem, source = resolve(temporary)
    target = resolve(final)[1]
    try:
        try:
            filesystem.move(source, target)
        except NotImplementedError:  # pyarrow's ArrowNotImplementedError is one too
            # Stores without a move (Azure blobs without a hierarchical namespace): a
            # server-side copy, also whole or nothing, then the temporary goes.
            filesystem.copy_file(source, target)
            filesystem.delete_file(source)
    except (pa.ArrowException, OSError) as exc:
        raise ReadWriteError(f"{final}: cannot write: {clean(exc)}") from exc


def remove(uri: str) -> None:
    """Delete an object if it is there (best effort: used while already failing)."""
    with contextlib.suppress(Exception):
        filesystem, path = resolve(uri)
        filesystem.delete_file(path)


def clean(exc: BaseException) -> str:
    """A store's error as one short line: its first line, without Arrow's preamble and
    AWS request ids; "access denied: ..." when the credentials were refused. pyarrow and
    the cloud SDKs do not put secrets in their messages."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = _REQUEST_ID.sub("", _PREAMBLE.sub("", text.splitlines()[0])).strip()
    return f"access denied: {line}" if _DENIED.search(text) else line


# -- local paths and URIs alike ------------------------------------------------------------


def identity(path: str) -> str:
    """What two names of the same file share: a local file's real path, a URI itself."""
    return path if is_uri(path) else os.path.realpath(path)


def join(base: str, *names: str) -> str:
    """`base/name/...`, with `/` on URIs and the OS's separator on local paths."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def size(path: str) -> int | None:
    """A file's size in bytes; None when the store does not say or it is not a file."""
    if not is_uri(path):
        try:
            return os.path.getsize(path)
        except OSError:
            return None
    filesystem, inner = resolve(path)
    info = _info(filesystem, inner, path)
    return info.size if info.type == pafs.FileType.File else None


def read_bytes(path: str) -> bytes:
    """A whole (small) file: the staging folder's rejects parts, a manifest."""
    if not is_uri(path):
        with open(path, "rb") as handle:
            return handle.read()
    with open_stream(path) as stream:
        return bytes(stream.read())


def list_files(folder: str) -> list[str]:
    """The files directly in `folder`, sorted (none when it does not exist)."""
    if not is_uri(folder):
        with contextlib.suppress(FileNotFoundError):
            return sorted(entry.path for entry in os.scandir(folder) if entry.is_file())
        return []
    filesystem, inner = resolve(folder)
    selector = pafs.FileSelector(inner.rstrip("/"), allow_not_found=True)
    try:
        infos = filesystem.get_file_info(selector)
    except (pa.ArrowException, OSError) as exc:
        raise ReadWriteError(f"{folder}: cannot list: {clean(exc)}") from exc
    return sorted(join(folder, info.base_name) for info in infos if info.type == pafs.FileType.File)


def move(source: str, target: str) -> None:
    """Rename a finished file into place (local: `os.replace`; stores: `publish`)."""
    if is_uri(source):
        publish(source, target)
    else:
        os.replace(source, target)


def delete(path: str) -> None:
    """Delete a file if it is there; a store refusing it is an output that cannot be
    created (73): the files deleted are outputs (`_SUCCESS`, a folder's old parts)."""
    if is_uri(path):
        filesystem, inner = resolve(path)
        try:
            filesystem.delete_file(inner)
        except FileNotFoundError:
            pass
        except (pa.ArrowException, OSError) as exc:
            raise OutputError(f"{path}: cannot delete: {clean(exc)}") from exc
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def delete_tree(folder: str) -> None:
    """Delete a folder and everything in it, if it is there (best effort)."""
    if not is_uri(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    with contextlib.suppress(Exception):
        filesystem, inner = resolve(folder)
        filesystem.delete_dir(inner.rstrip("/"))


def delete_if_empty(folder: str) -> None:
    """Delete a folder that holds nothing (another run may still be using it otherwise)."""
    if not is_uri(folder):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
        return
    with contextlib.suppress(Exception):
        filesystem, inner = resolve(folder)
        selector = pafs.FileSelector(inner.rstrip("/"), allow_not_found=True, recursive=True)
        if not filesystem.get_file_info(selector):
            filesystem.delete_dir(inner.rstrip("/"))


def make_dirs(folder: str) -> None:
    """Create a local folder; object stores have none to create."""
    if not is_uri(folder):
        os.makedirs(folder, exist_ok=True)
