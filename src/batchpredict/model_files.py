"""What a model is on a filesystem, local or remote, without TensorFlow.

A Keras file (`.keras`, `.h5`, `.hdf5`), a SavedModel folder (`saved_model.pb` or
`saved_model.pbtxt` in it), or a TensorFlow-Serving base folder whose numeric
sub-folders are versions (the highest number wins unless one is asked for). The same
rules serve local paths (`resolve_local`) and models in object stores (`model_cache`),
over pyarrow filesystems.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from batchpredict.errors import ModelError
from batchpredict.tensors import ResolvedModelPath

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_KERAS_KINDS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}
#: How many folder entries a "not a model" error lists before it stops.
_LISTED_ENTRIES = 8

#: Turns a failure to read `path` into the error to raise.
Unreadable = Callable[[str, BaseException], ModelError]


@dataclass(frozen=True)
class ModelAt:
    """Where a model is on its filesystem, what kind it is, and its version."""

    #: "keras", "h5" or "saved_model".
    kind: str
    #: The model file or SavedModel folder on the filesystem.
    path: str
    #: The TensorFlow-Serving version chosen when a base folder was given, else None.
    version: int | None = None
    #: That version's folder name below the given path ("" when the path is the model).
    version_folder: str = ""
    #: The listing's entry of a model file (its size and time), None for a folder.
    file: pafs.FileInfo | None = None


def resolve_local(path: str, version: int | None = None) -> ResolvedModelPath:
    """The model at the local `path`: its kind and, for a TF-Serving base folder, the
    version folder chosen."""
    where = str(Path(path))

    def missing() -> ModelError:
        return ModelError(f"model path does not exist: {path}")

    def unreadable(folder: str, exc: BaseException) -> ModelError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ModelError(f"cannot read model directory {folder}: {reason}")

    found = locate_model(
        pafs.LocalFileSystem(), where, version, where=where, missing=missing, unreadable=unreadable
    )
    model_path = path if found.path == where else found.path
    return ResolvedModelPath(model_path, found.kind, found.version)


def locate_model(
    filesystem: pafs.FileSystem,
    path: str,
    version: int | None,
    *,
    where: str,
    missing: Callable[[], ModelError],
    unreadable: Unreadable,
) -> ModelAt:
    """Find which kind of model `path` holds and, for a TF-Serving base folder, which
    version; messages name `where` (the path or URI as given)."""
    info = _info(filesystem, path, unreadable)
    if info.type == pafs.FileType.File:
        kind = keras_kind(where)
        refuse_version(where, version)
        return ModelAt(kind, path, file=info)
    if info.type != pafs.FileType.Directory:
        raise missing()
    children = _children(filesystem, path, where, unreadable)
    if holds_saved_model(children):
        refuse_version(where, version)
        return ModelAt("saved_model", path)
    versions = {
        int(child.base_name): child
        for child in children
        if child.type == pafs.FileType.Directory
        and child.base_name.isascii()
        and child.base_name.isdigit()
    }
    if not versions:
        # Object stores have no empty folders: a prefix with nothing under it is missing.
        if not children and not isinstance(filesystem, pafs.LocalFileSystem):
            raise ModelError(f"model path does not exist: {where} (nothing under it)")
        raise ModelError(not_a_model_message(where, folder_names(children)))
    chosen = choose_version(where, versions, version)
    folder = versions[chosen]
    inside = _children(filesystem, folder.path, where, unreadable)
    if not holds_saved_model(inside):
        message = not_a_model_message(f"{where}/{folder.base_name}", folder_names(inside))
        raise ModelError(f"version {chosen} of {message}")
    return ModelAt("saved_model", folder.path, chosen, folder.base_name)


def _info(filesystem: pafs.FileSystem, path: str, unreadable: Unreadable) -> pafs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(path, exc) from exc


def _children(
    filesystem: pafs.FileSystem, path: str, where: str, unreadable: Unreadable
) -> list[pafs.FileInfo]:
    """What is directly under the folder `path`, sorted by name. In an object store the
    listing is recursive and folded into the first level: pyarrow's GCS filesystem leaves
    out of a flat listing the folders that are only prefixes of objects (`1/` of
    `1/saved_model.pb`, as uploaded by gsutil), which are a TF-Serving base's versions."""
    local = isinstance(filesystem, pafs.LocalFileSystem)
    try:
        found = filesystem.get_file_info(pafs.FileSelector(path, recursive=not local))
    except FileNotFoundError as exc:
        raise ModelError(f"model path does not exist: {where}") from exc
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(path, exc) from exc
    if not local:
        found = _first_level(path, found)
    return sorted(found, key=lambda info: info.base_name)


def _first_level(path: str, found: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
    """The entries directly under `path` of a recursive listing of it: its files, and one
    folder for each name that deeper entries are under."""
    base = path.rstrip("/") + "/"
    entries: dict[str, pafs.FileInfo] = {}
    for info in found:
        name, slash, _ = info.path[len(base) :].partition("/")
        if slash:
            entries[name] = pafs.FileInfo(base + name, pafs.FileType.Directory)
        elif name:
            entries.setdefault(name, info)
    return list(entries.values())


def holds_saved_model(children: list[pafs.FileInfo]) -> bool:
    """Whether a folder with these entries is a SavedModel."""
    return any(
        child.type == pafs.FileType.File and child.base_name in SAVED_MODEL_FILES
        for child in children
    )


def folder_names(children: list[pafs.FileInfo]) -> list[str]:
    """Entries by name, sub-folders with a trailing `/` (as `not_a_model_message` lists)."""
    return [
        child.base_name + ("/" if child.type == pafs.FileType.Directory else "")
        for child in children
    ]


def choose_version(path: str, versions: Mapping[int, object], wanted: int | None) -> int:
    """Pick the asked-for version, or the numerically highest one."""
    if wanted is None:
        return max(versions)
    if wanted not in versions:
        available = ", ".join(str(number) for number in sorted(versions))
        raise ModelError(f"{path} has no version {wanted}; available versions: {available}")
    return wanted


def refuse_version(path: str, version: int | None) -> None:
    """Reject a version number for a model that is not a TF-Serving base directory."""
    if version is not None:
        raise ModelError(
            f"model version {version} was asked for, but {path} is a single model, not a "
            "TensorFlow Serving base directory with numeric version sub-directories"
        )


def keras_kind(path: str) -> str:
    """The kind of a model file by its suffix ("keras" or "h5"); ModelError for others."""
    kind = _KERAS_KINDS.get(Path(path).suffix.lower())
    if kind is None:
        raise ModelError(
            f"{path} is not a supported model file: expected a Keras .keras or .h5/.hdf5 "
            "file, or a SavedModel directory"
        )
    return kind


def not_a_model_message(where: str, names: list[str]) -> str:
    """Say what was looked for in the folder `where` (a path or URI) and what was found
    instead: `names`, its entries, sub-folders with a trailing `/`."""
    found = ", ".join(names[:_LISTED_ENTRIES]) if names else "nothing (it is empty)"
    if len(names) > _LISTED_ENTRIES:
        found += f", ... ({len(names)} entries)"
    return (
        f"{where} is not a SavedModel or Keras model: looked for saved_model.pb or "
        "saved_model.pbtxt, or numeric version sub-directories holding one (TensorFlow "
        f"Serving layout); found {found}"
    )
