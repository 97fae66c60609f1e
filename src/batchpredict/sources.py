"""Turn `--input_file` values (files, globs, directories, `-`) into an ordered list of inputs.

Local paths and URIs are expanded alike, through `storage`: a value names one file, a
folder (every file below it), or a glob whose fixed prefix is the folder listed. Each
input remembers its path below that folder so that `--output_dir` can mirror it and two
`part-0.parquet` files from different partitions never collide.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import structlog

from batchpredict import storage
from batchpredict.errors import InputMissingError, StoreUnreachableError, UsageError
from batchpredict.formats.base import RowGroups
from batchpredict.formats.delta_io import DELTA_LOG, DeltaReader, is_delta_table, table_above
from batchpredict.formats.registry import READERS, format_for_path, reader_format
from batchpredict.storage import GLOB_CHARS, STDIO


@dataclass(frozen=True)
class InputFile:
    """One input to read, with the format to read it as and its path below the folder
    (or glob prefix) it was found under."""

    path: str
    format: str
    #: The path below its folder (`date=1/part-0.parquet`), used to name `--output_dir`
    #: files; "stdin" for `-`.
    relative_path: str
    #: Only these row groups of a Parquet file (a shard's part of it); None: all of it.
    row_groups: RowGroups | None = None


def expand_inputs(values: tuple[str, ...], input_format: str | None) -> list[InputFile]:
    """Expand every value in order; globs and directories are sorted by name, duplicates dropped.

    Directories and globs skip hidden and `_`-prefixed names (`_SUCCESS`, temporary files)
    and batchpredict's own outputs (`*.predictions.*`, `*.rejects.jsonl`), so that a second
    run over the same folder does not score the first run's results.
    """
    if input_format is not None:
        input_format = reader_format(input_format)
    found: list[InputFile] = []
    seen: set[str] = set()
    for value in values:
        for item in _expand_one(value, input_format):
            key = item.path if item.path == STDIO else storage.identity(item.path)
            if key not in seen:
                seen.add(key)
                found.append(item)
    return found


def _expand_one(value: str, input_format: str | None) -> list[InputFile]:
    if value == STDIO:
        assert input_format is not None  # RunConfig refuses stdin without --input_format
        return [InputFile(STDIO, input_format, "stdin")]
    try:
        table = table_above(storage.split_glob(value)[0] if GLOB_CHARS & set(value) else value)
    except StoreUnreachableError as exc:  # said of a folder above, the user gave `value`
        raise StoreUnreachableError(value, exc.reason) from exc
    if table is not None:
        raise _table_inside(table)
    if GLOB_CHARS & set(value):
        prefix, pattern = storage.split_glob(value)
        folder = storage.locate(prefix or ".")
        wanted = pattern.split("/")
        depth = None if "**" in wanted or wanted[-1] == "" else len(wanted)
        relatives = [r for r in _walk(folder, depth) if _matches(r.split("/"), wanted)]
        return _found_below(value, prefix, relatives, input_format)
    location = storage.locate(value)
    kind = storage.kind(location)
    if kind == pafs.FileType.Directory:
        if input_format == DeltaReader.name or is_delta_table(value):
            return [_delta_table(value, input_format)]
        prefix = value.rstrip("/") + "/"
        return _found_below(value, prefix, _walk(location), input_format)
    if kind == pafs.FileType.NotFound:
        raise InputMissingError(f"{value}: no such {location.noun}")
    # Stores say so when the object is opened; locally it is cheap to tell now.
    if location.local and not os.access(value, os.R_OK):
        raise InputMissingError(f"{value}: not readable (permission denied)")
    return [_input_file(value, input_format, value.rsplit("/", 1)[-1])]


def _delta_table(value: str, input_format: str | None) -> InputFile:
    """A folder holding `_delta_log/` is one input, a Delta table, read at one version:
    never its Parquet files, which include those that overwrites replaced."""
    if input_format not in (None, DeltaReader.name):
        raise UsageError(
            f"{value}: is a Delta table, not {input_format}; drop --input_format (or pass "
            "--input_format delta)"
        )
    if not is_delta_table(value):
        raise InputMissingError(f"{value}: no Delta table here (no {DELTA_LOG}/ folder)")
    return InputFile(value, DeltaReader.name, value.rstrip("/").rsplit("/", 1)[-1])


def _table_inside(table: str) -> UsageError:
    """A folder or glob reaching into a Delta table: its files may be stale, never scored."""
    return UsageError(
        f"{table}: is a Delta table, whose Parquet files include stale ones; name its folder "
        "as an --input_file of its own, not a folder or glob above or inside it"
    )


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Whether a path below the glob's folder, split at `/`, matches the pattern's parts:
    a wildcard matches within one name, `**` any number of folders, and a pattern ending
    in `/` names folders, matching every file below them."""
    if not pattern:
        return not parts
    first, rest = pattern[0], pattern[1:]
    if first == "**":
        return any(_matches(parts[start:], rest) for start in range(len(parts) + 1))
    if first == "" and not rest:
        return bool(parts)
    return bool(parts) and fnmatch.fnmatchcase(parts[0], first) and _matches(parts[1:], rest)


def _found_below(
    value: str, prefix: str, relatives: list[str], input_format: str | None
) -> list[InputFile]:
    """The inputs among the files `relatives` below the folder `prefix` names."""
    found = [
        _input_file(prefix + relative, input_format, relative)
        for relative in relatives
        if _is_data_file(relative, input_format)
    ]
    if not found:
        raise InputMissingError(f"{value}: matched no input file of a known format")
    return found


def _walk(folder: storage.Location, depth: int | None = None) -> list[str]:
    """The files below `folder` as paths relative to it (`/`-separated), sorted, at most
    `depth` folders deep; hidden and `_`-prefixed names (`_SUCCESS`, temporaries, Spark's
    `_temporary/`) and everything below them are skipped. A local folder that is not there
    holds nothing; a store's missing bucket or prefix is an InputMissingError."""
    found = _walk_local(folder.path, "", depth) if folder.local else _walk_store(folder)
    return sorted(found)


def _walk_local(folder: str, relative: str, depth: int | None) -> Iterator[str]:
    """Local folders are walked here rather than listed by pyarrow, which follows
    symlinked folders: on a shared machine a link can lead anywhere, and a link to a
    parent would list files again. Links to files are followed, and so is `folder` itself
    (a link named by the user). Unreadable sub-folders are skipped, as `glob` does."""
    try:
        with os.scandir(folder or ".") as entries:
            listed = [
                (entry.name, entry.is_dir(follow_symlinks=False), entry.is_file())
                for entry in entries
            ]
    except OSError:
        return
    for name, is_folder, is_file in listed:
        if name == DELTA_LOG and is_folder:
            raise _table_inside(folder.rstrip("/") or folder)
        if name.startswith((".", "_")):
            continue
        if is_file:
            yield relative + name
        elif is_folder and (depth is None or depth > 1):
            inner = None if depth is None else depth - 1
            yield from _walk_local(os.path.join(folder, name), f"{relative}{name}/", inner)


def _walk_store(folder: storage.Location) -> list[str]:
    root = folder.path.rstrip("/")
    try:
        infos = folder.filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError as exc:
        raise InputMissingError(f"{folder.name}: no such bucket or prefix") from exc
    except (pa.ArrowException, OSError) as exc:
        raise InputMissingError(f"{folder.name}: cannot list: {storage.clean(exc)}") from exc
    found = []
    for info in infos:
        relative = info.path[len(root) :].removeprefix("/")
        parts = relative.split("/")
        if DELTA_LOG in parts[:-1]:
            raise _table_inside(storage.join(folder.name, *parts[: parts.index(DELTA_LOG)]))
        if info.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in parts):
            continue
        if "" in parts:
            # `in//x.csv`: a key S3 allows but pyarrow cannot open; one bad object must
            # not fail every listing of its prefix.
            # structlog directly: observe writes through storage.
            structlog.get_logger("batchpredict").warning(
                "object skipped: its key has an empty path segment ('//'), which pyarrow "
                "cannot read; rename it",
                object=storage.join(folder.name, relative),
            )
            continue
        found.append(relative)
    return found


def _input_file(path: str, input_format: str | None, relative: str) -> InputFile:
    fmt = input_format or format_for_path(path)
    if fmt is None:
        raise UsageError(
            f"{path}: cannot tell the format from the file name; pass --input_format "
            f"({', '.join(sorted(READERS))})"
        )
    if storage.size(path) == 0:
        raise InputMissingError(f"{path}: file is empty")
    return InputFile(path, fmt, relative)


def _is_data_file(path: str, input_format: str | None) -> bool:
    name = path.rsplit("/", 1)[-1]
    if name.startswith((".", "_")) or ".predictions." in name or name.endswith(".rejects.jsonl"):
        return False
    return input_format is not None or format_for_path(path) is not None
