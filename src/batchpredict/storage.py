"""URIs (`s3://`, `gs://`, `hdfs://`, `file://`) through pyarrow's filesystems.

Credentials come only from where the cloud SDKs look (environment, their config files,
instance roles), never from options; `AWS_ENDPOINT_URL` points S3 at a compatible store.
Paths without a scheme never come here: local files keep their own code paths.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from batchpredict.errors import InputMissingError, OutputError, ReadWriteError

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_CHARS = frozenset("*?[")
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def is_uri(value: str) -> bool:
    """Whether `value` names a location by URI rather than a local path."""
    return bool(_URI.match(value))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `uri` and the path inside it (`bucket/key` for object stores)."""
    scheme = uri.partition("://")[0].lower()
    try:
        return pafs.FileSystem.from_uri(_without_glob(uri))[0], _path_of(uri)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputMissingError(f"{uri}: cannot open {scheme}:// storage: {_clean(exc)}") from exc


def _without_glob(uri: str) -> str:
    """`uri` up to its first wildcard's folder (from_uri cannot parse wildcards)."""
    if not _GLOB_CHARS & set(uri):
        return uri
    head = re.split(r"[*?\[]", uri, maxsplit=1)[0]
    return head.rsplit("/", 1)[0] or head


def _path_of(uri: str) -> str:
    return uri.partition("://")[2] if not uri.startswith("file://") else uri[len("file://") :]


def expand(value: str) -> list[tuple[str, str]]:
    """Files named by `value` as (uri, root uri) pairs, sorted: one object, every object
    under a prefix (a "directory"), or those matching a glob (`**` crosses folders)."""
    filesystem, path = resolve(value)
    scheme = value.partition("://")[0]
    prefix = f"{scheme}://"
    if _GLOB_CHARS & set(path):
        root = re.split(r"[*?\[]", path, maxsplit=1)[0].rsplit("/", 1)[0]
        found = _listing(filesystem, root, value)
        pattern = path.replace("**/", "*").replace("**", "*")
        matches = [p for p in found if fnmatch.fnmatchcase(p, pattern)]
        return [(prefix + p, prefix + root) for p in sorted(matches)]
    info = _info(filesystem, path, value)
    if info.type == pafs.FileType.File:
        return [(value, prefix + path.rsplit("/", 1)[0])]
    if info.type == pafs.FileType.Directory:
        return [(prefix + p, value.rstrip("/")) for p in sorted(_listing(filesystem, path, value))]
    raise InputMissingError(f"{value}: no such object")


def _info(filesystem: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputMissingError(f"{uri}: cannot read: {_clean(exc)}") from exc


def _listing(filesystem: pafs.FileSystem, root: str, uri: str) -> list[str]:
    """Every file below `root`, skipping hidden and `_`-prefixed names."""
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError as exc:
        raise InputMissingError(f"{uri}: no such bucket or prefix") from exc
    except (pa.ArrowException, OSError) as exc:
        raise InputMissingError(f"{uri}: cannot list: {_clean(exc)}") from exc
    return [
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and not any(part.startswith((".", "_")) for part in info.path[len(root) :].split("/"))
    ]


def open_stream(uri: str) -> pa.NativeFile:
    """`uri` as a sequential stream, decompressed by its suffix (.gz, .bz2, .zst)."""
    filesystem, path = resolve(uri)
    suffix = "." + uri.rsplit(".", 1)[-1] if "." in uri else ""
    try:
        stream = filesystem.open_input_stream(path)
    except FileNotFoundError as exc:
        raise InputMissingError(f"{uri}: no such object") from exc
    except (pa.ArrowException, OSError) as exc:
        raise ReadWriteError(f"{uri}: cannot open: {_clean(exc)}") from exc
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
        raise ReadWriteError(f"{uri}: cannot open: {_clean(exc)}") from exc


def fingerprint(uri: str) -> tuple[int | None, float | None]:
    """The object's size and modification time (seconds since the epoch), as the store says."""
    filesystem, path = resolve(uri)
    info = _info(filesystem, path, uri)
    return info.size, (info.mtime.timestamp() if info.mtime is not None else None)


def size(uri: str) -> int | None:
    """The object's size in bytes, if the store says."""
    filesystem, path = resolve(uri)
    info = _info(filesystem, path, uri)
    return info.size if info.type == pafs.FileType.File else None


def temporary_uri(uri: str) -> str:
    """Where an output is written before it is complete: beside it under a `_`-prefixed
    unique name (hidden from batchpredict's globs, and from Spark's and Hive's). Beside it
    rather than in a subfolder, because pyarrow leaves a marker object for a "folder"
    emptied by a delete."""
    folder, _, name = uri.rpartition("/")
    return f"{folder}/_{name}.{uuid.uuid4().hex}.tmp"


def open_output(uri: str) -> pa.NativeFile:
    """A new object at `uri` to write to (uploaded as it is written)."""
    filesystem, path = resolve(uri)
    try:
        return filesystem.open_output_stream(path)
    except (pa.ArrowException, OSError) as exc:
        raise OutputError(f"{uri}: cannot create output: {_clean(exc)}") from exc


def publish(temporary: str, final: str) -> None:
    """Move a complete output into place: a rename where the store has one (HDFS, local),
    a server-side copy and delete on object stores, where the final object appears whole
    or not at all."""
    filesystem, source = resolve(temporary)
    try:
        filesystem.move(source, resolve(final)[1])
    except (pa.ArrowException, OSError) as exc:
        raise ReadWriteError(f"{final}: cannot write: {_clean(exc)}") from exc


def remove(uri: str) -> None:
    """Delete an object if it is there (best effort: used while already failing)."""
    with contextlib.suppress(Exception):
        filesystem, path = resolve(uri)
        filesystem.delete_file(path)


def _clean(exc: BaseException) -> str:
    """An error's first line, with no credentials (pyarrow does not print them)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
