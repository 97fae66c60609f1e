"""Models named by URI (`s3://`, `gs://`, `hdfs://`), downloaded once into a local cache.

Only what the model needs is downloaded: one Keras file, one SavedModel, or the chosen
version of a TensorFlow-Serving base (versions are listed remotely and chosen by the same
rules as local ones). A cache entry is keyed by the URI and by every downloaded object's
key, size and ETag, so an unchanged model costs only listing and HEAD requests while a
replaced object is fetched again, into a new entry.

Layout under the cache root (`$BATCHPREDICT_CACHE_DIR`, else
`$XDG_CACHE_HOME/batchpredict/models`, else `~/.cache/batchpredict/models`):

    <entry>/<last URI component>/...   the model, keys as below the URI
    <entry>/.entry.json                the URI, the objects the key covers, and each
                                       file's size and SHA-256
    <entry>/.last-used                 touched on every use, for pruning

where <entry> is `<end of the URI>[-v<version>]-<sha256, 32 hex digits>`. The ETag comes
from the metadata of a stream opened on the object (pyarrow's S3 filesystem makes a HEAD
request on opening and reports `ETag`; GCS reports `etag`); where a store has none
(HDFS), the listing's modification time stands in.

An entry is downloaded into a temporary folder in the root and renamed into place, so a
complete entry is the only kind there is; of two processes downloading the same entry
(Ray actors on one node) the second to finish drops its copy and uses the first's.

The cache is trusted only when nobody else can write it: the root and every folder of an
entry must be owned by this user (or root) and not writable by group or others (else
ModelError, 78), and a new root is made 0700. `.entry.json` records each file's size and
SHA-256 at download; a hit is hashed and compared before the model is loaded, and an
entry that differs is moved away and downloaded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from batchpredict import storage
from batchpredict.errors import InputMissingError, ModelError, ReadWriteError
from batchpredict.model_files import locate_model, resolve_local
from batchpredict.observe import get_logger
from batchpredict.tensors import ResolvedModelPath

CACHE_DIR_VARIABLE = "BATCHPREDICT_CACHE_DIR"
#: Entries of the same URI other than the current one, unused this long, are removed.
PRUNE_AFTER_SECONDS = 7 * 24 * 3600

_ENTRY_FILE = ".entry.json"
_USED_MARKER = ".last-used"
_TEMPORARY_PREFIX = ".download-"
_CHUNK_BYTES = 8 << 20
#: How much of the URI the readable part of an entry's name keeps (its end, the telling part).
_STEM_CHARS = 60


@dataclass(frozen=True)
class _RemoteObject:
    """One object to download: where it is, where it goes below the entry, and its identity."""

    path: str
    #: Below the entry folder: the URI's last component, then the object's key below the URI.
    relative: str
    size: int
    #: The store's ETag; None where it has none (the modification time stands in).
    etag: str | None
    mtime: float | None


def cache_root() -> Path:
    """The folder holding cache entries, from the environment (it need not exist yet)."""
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "batchpredict" / "models"


def fetch(uri: str, version: int | None = None) -> ResolvedModelPath:
    """The model at `uri`: a local one (a path or `file://`) where it is, a store's from
    the local cache, downloaded first unless an entry for the same objects (same keys,
    sizes and ETags) is already there; messages name `uri`.

    A model that is missing or cannot be read is a `ModelError` (78) like any other model
    that cannot be used: a broken job, not an input that has not arrived yet (66)."""
    try:
        location = storage.locate(uri)
    except InputMissingError as exc:
        raise ModelError(str(exc)) from exc
    if location.local:
        # A local path or file:// needs no copy: the local resolver reads it where it is.
        return resolve_local(location.path, version)
    filesystem, path = location.filesystem, location.path
    uri, path = uri.rstrip("/"), path.rstrip("/")
    objects, kind, chosen, model_relative = _plan(filesystem, path, uri, version)
    root = cache_root()
    _prepare_root(root)
    entry = root / _entry_name(uri, chosen, objects)
    log = get_logger()
    if _usable_entry(root, entry, uri):
        log.info("model cache hit", model=uri, version=chosen, cache=str(entry))
    else:
        _download(filesystem, uri, chosen, objects, root, entry)
        log.info(
            "model downloaded",
            model=uri,
            version=chosen,
            cache=str(entry),
            objects=len(objects),
            bytes=sum(item.size for item in objects),
        )
    with contextlib.suppress(OSError):  # a read-only shared cache still serves
        (entry / _USED_MARKER).touch()
    _prune(root, uri, keep=entry)
    return ResolvedModelPath(str(entry / model_relative), kind, chosen)


# --------------------------------------------------------------------------- trust


def _prepare_root(root: Path) -> None:
    """Create the cache root (mode 0700) if missing; refuse one others could write into."""
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise _cache_error(root, exc) from exc
    _refuse_unless_private(root)


def _refuse_unless_private(folder: Path) -> None:
    """A `ModelError` (78) unless `folder` is owned by this user (or root) and cannot be
    written by group or others: anyone who can write there can plant a model this
    process would then load and run."""
    info = folder.stat()
    if info.st_uid not in (os.geteuid(), 0):
        why = f"owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
        fix = "use a folder of your own"
    elif info.st_mode & 0o022:
        why = "writable by group or others"
        fix = f"run chmod go-w {folder}, or use a private folder"
    else:
        return
    raise ModelError(
        f"refusing the model cache folder {folder}: it is {why}, so another user could plant "
        f"a model there; {fix} (set {CACHE_DIR_VARIABLE}, created with mode 0700)"
    )


def _usable_entry(root: Path, entry: Path, uri: str) -> bool:
    """Whether `entry` holds exactly what was downloaded (sizes and SHA-256 checksums as
    `.entry.json` records them). An entry that does not is removed, to be fetched again;
    one whose folders are not private is refused (`ModelError`)."""
    if not (entry / _ENTRY_FILE).is_file():
        return False
    problem = _entry_problem(entry)
    if problem is None:
        return True
    get_logger().warning(
        "model cache entry does not match its download; fetching it again",
        model=uri,
        cache=str(entry),
        problem=problem,
    )
    discarded = root / f"{_TEMPORARY_PREFIX}discarded-{os.getpid()}-{entry.name}"
    try:
        os.rename(entry, discarded)
    except FileNotFoundError:
        return False  # another run found the same and moved it away first
    except OSError as exc:
        raise _cache_error(entry, exc) from exc
    shutil.rmtree(discarded, ignore_errors=True)
    return False


def _entry_problem(entry: Path) -> str | None:
    """What is wrong with `entry` (None: nothing): a file missing, added, changed, or
    not a regular file. Raises `ModelError` for a folder others could write."""
    try:
        record = json.loads((entry / _ENTRY_FILE).read_text())
        expected = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in record["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{_ENTRY_FILE} records no checksums"
    found: set[str] = set()
    for folder, folders, files in os.walk(entry):
        _refuse_unless_private(Path(folder))
        for name in [*folders, *files]:
            path = Path(folder, name)
            relative = path.relative_to(entry).as_posix()
            if path.is_symlink():
                return f"{relative} is a symbolic link"
            if name in folders or relative in (_ENTRY_FILE, _USED_MARKER):
                continue
            if relative not in expected:
                return f"{relative} was not downloaded"
            if _file_identity(path) != expected[relative]:
                return f"{relative} differs from the download (size or SHA-256)"
            found.add(relative)
    missing = sorted(set(expected) - found)
    return f"{missing[0]} is missing" if missing else None


def _file_identity(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a regular file (-1 and "" for anything else)."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        return -1, ""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return info.st_size, digest.hexdigest()


# --------------------------------------------------------------------------- planning


def _plan(
    filesystem: pafs.FileSystem, path: str, uri: str, version: int | None
) -> tuple[list[_RemoteObject], str, int | None, str]:
    """What to download for `uri`: the objects, the model kind, the version chosen and the
    model's path below the entry; only listing and HEAD requests."""
    name = path.rsplit("/", 1)[-1]
    found = locate_model(
        filesystem,
        path,
        version,
        where=uri,
        missing=lambda: _missing(filesystem, path, uri),
        unreadable=lambda _path, exc: _read_error(uri, exc),
    )
    if found.file is not None:
        return [_remote_object(filesystem, found.file, name, uri)], found.kind, None, name
    relative = f"{name}/{found.version_folder}" if found.version_folder else name
    objects = _objects_below(filesystem, found.path, relative, uri)
    return objects, "saved_model", found.version, relative


def _objects_below(
    filesystem: pafs.FileSystem, path: str, relative: str, uri: str
) -> list[_RemoteObject]:
    """Every object below `path` (all of a SavedModel: variables/, assets/, ...)."""
    try:
        found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(uri, exc) from exc
    # Folder markers (empty `name/` objects) come back as directories and are not needed.
    files = sorted(
        (info for info in found if info.type == pafs.FileType.File), key=lambda info: info.path
    )
    return [
        _remote_object(filesystem, info, f"{relative}/{info.path[len(path) + 1 :]}", uri)
        for info in files
    ]


def _remote_object(
    filesystem: pafs.FileSystem, info: pafs.FileInfo, relative: str, uri: str
) -> _RemoteObject:
    """Describe one object, asking the store for its ETag (a HEAD request on S3)."""
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise ModelError(f"{uri}: object {info.path!r} cannot be stored as a local file")
    try:
        with filesystem.open_input_stream(info.path) as stream:
            etag = _etag(stream)
    except FileNotFoundError as exc:
        raise ModelError(f"model path does not exist: {uri} ({info.path})") from exc
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(uri, exc) from exc
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return _RemoteObject(info.path, relative, int(info.size or 0), etag, mtime)


def _etag(stream: pa.NativeFile) -> str | None:
    """The object's ETag as its stream's metadata gives it: `ETag` on S3 (from the HEAD
    request pyarrow makes on opening), `etag` on GCS; HDFS and local files have none, and
    the caller's size and modification time from the listing stand in."""
    metadata = stream.metadata() or {}
    value = metadata.get("ETag") or metadata.get("etag")
    if value is None:
        return None
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _missing(filesystem: pafs.FileSystem, path: str, uri: str) -> ModelError:
    """ "Does not exist", saying so when it is the bucket (Azure's container) that is
    missing."""
    bucket = path.split("/", 1)[0]
    if bucket != path and filesystem.type_name in ("s3", "gcs", "abfs"):
        noun = "container" if filesystem.type_name == "abfs" else "bucket"
        with contextlib.suppress(pa.ArrowException, OSError):
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                return ModelError(f"model path does not exist: {uri} (no {noun} {bucket!r})")
    return ModelError(f"model path does not exist: {uri}")


def _read_error(uri: str, exc: BaseException) -> ModelError:
    """A store's refusal or failure, naming the URI, in the store's words (its first line,
    "access denied: ..." when the credentials were refused; no secrets)."""
    reason = storage.clean(exc)
    if "NO_SUCH_BUCKET" in str(exc):
        return ModelError(f"model path does not exist: {uri} (no such bucket)")
    return ModelError(f"model path is unreadable: {uri}: {reason}")


def _entry_name(uri: str, version: int | None, objects: list[_RemoteObject]) -> str:
    """`<stem>[-v<version>]-<sha256 of the URI and each object's key, size and ETag>`
    (its modification time where there is no ETag)."""
    identity = [
        uri,
        [[item.relative, item.size, item.etag or f"mtime:{item.mtime}"] for item in objects],
    ]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    version_part = f"-v{version}" if version is not None else ""
    # 32 hex digits (128 bits) keep paths short; collisions stay out of reach.
    return f"{_stem(uri)}{version_part}-{digest[:32]}"


def _stem(uri: str) -> str:
    """A readable, filename-safe end of the URI (`bucket_models_mlp.keras`)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.partition("://")[2])[-_STEM_CHARS:]
    return stem.lstrip("._-") or "model"


# --------------------------------------------------------------------------- downloading


def _download(
    filesystem: pafs.FileSystem,
    uri: str,
    version: int | None,
    objects: list[_RemoteObject],
    root: Path,
    entry: Path,
) -> None:
    """Download `objects` into a temporary folder in `root` and rename it to `entry`."""
    try:
        temporary = Path(tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX, dir=root))
    except OSError as exc:
        raise _cache_error(root, exc) from exc
    try:
        files = {
            item.relative: {
                "size": item.size,
                "sha256": _download_object(filesystem, uri, item, temporary / item.relative),
            }
            for item in objects
        }
        record = {
            "uri": uri,
            "version": version,
            "downloaded_at": time.time(),
            "objects": [[item.relative, item.size, item.etag, item.mtime] for item in objects],
            # What a cache hit checks before the model is loaded.
            "files": files,
        }
        try:
            _make_private(temporary)
            (temporary / _ENTRY_FILE).write_text(json.dumps(record, indent=1) + "\n")
            os.rename(temporary, entry)
        except OSError as exc:
            if not (entry / _ENTRY_FILE).is_file():
                raise _cache_error(entry, exc) from exc
            # Another process renamed the same entry into place first: use theirs.
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _make_private(folder: Path) -> None:
    """Give `folder` and every folder below it mode 0700 (the umask may have left them
    group-writable, which a cache hit refuses)."""
    for parent, _folders, _files in os.walk(folder):
        os.chmod(parent, 0o700)


def _download_object(
    filesystem: pafs.FileSystem, uri: str, item: _RemoteObject, target: Path
) -> str:
    """Copy one object to `target`, refusing one that changed since it was listed; its
    SHA-256, hex."""
    try:
        stream = filesystem.open_input_stream(item.path)
    except FileNotFoundError as exc:
        raise ModelError(f"model path does not exist: {uri} ({item.path})") from exc
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(uri, exc) from exc
    with stream:
        if item.etag is not None and _etag(stream) != item.etag:
            raise _changed(uri)
        digest = hashlib.sha256()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                for chunk in _chunks(stream, uri):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise _cache_error(target, exc) from exc
    if target.stat().st_size != item.size:
        raise _changed(uri)
    return digest.hexdigest()


def _chunks(stream: pa.NativeFile, uri: str) -> Iterator[bytes]:
    """The stream's bytes; a read failure is the store's (ReadWriteError naming `uri`), kept
    apart from the cache's write failures, which are OSErrors too."""
    while True:
        try:
            chunk = stream.read(_CHUNK_BYTES)
        except (pa.ArrowException, OSError) as exc:
            raise ReadWriteError(f"{uri}: cannot read model: {storage.clean(exc)}") from exc
        if not chunk:
            return
        yield chunk


def _changed(uri: str) -> ReadWriteError:
    return ReadWriteError(f"{uri}: the model changed while it was being downloaded; run again")


def _cache_error(path: Path, exc: OSError) -> ReadWriteError:
    reason = exc.strerror or storage.clean(exc)
    return ReadWriteError(
        f"cannot write the model cache at {path}: {reason} (set {CACHE_DIR_VARIABLE} to a "
        "writable folder)"
    )


# --------------------------------------------------------------------------- pruning


def _prune(root: Path, uri: str, *, keep: Path) -> None:
    """Remove this URI's other entries unused for PRUNE_AFTER_SECONDS (best effort).

    An entry is first renamed to a temporary name, atomically, so a run choosing it at
    that moment either finds it whole or downloads it afresh."""
    cutoff = time.time() - PRUNE_AFTER_SECONDS
    try:
        candidates = [
            path
            for path in root.iterdir()
            if path.name.startswith(f"{_stem(uri)}-") and path.name != keep.name
        ]
    except OSError:
        return
    for path in candidates:
        # OSError: gone or in use elsewhere; ValueError, KeyError, TypeError: not an entry.
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads((path / _ENTRY_FILE).read_text())["uri"] != uri:
                continue
            if (path / _USED_MARKER).stat().st_mtime > cutoff:
                continue
            doomed = root / f"{_TEMPORARY_PREFIX}pruned-{path.name}"
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
