"""Turn `--input_file` values (files, globs, directories, `-`) into an ordered list of inputs.

Each input remembers the root it was found under (the directory given, or a glob's fixed
prefix) so that `--output_dir` can mirror its relative path and two `part-0.parquet` files
from different partitions never collide.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from batchpredict import storage
from batchpredict.errors import InputMissingError, UsageError
from batchpredict.formats.registry import READERS, format_for_path, reader_format
from batchpredict.storage import is_uri

STDIO = "-"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input to read, with the format to read it as and the root its name is relative to."""

    path: str
    format: str
    root: str

    @property
    def relative_path(self) -> str:
        """The path below its root (`date=1/part-0.parquet`), used to name `--output_dir` files."""
        if self.path == STDIO:
            return "stdin"
        if is_uri(self.path):
            return self.path[len(self.root) :].lstrip("/")
        return os.path.relpath(self.path, self.root)


def expand_inputs(values: tuple[str, ...], input_format: str | None) -> list[InputFile]:
    """Expand every value in order; globs and directories are sorted by name, duplicates dropped.

    Directories and globs skip hidden and `_`-prefixed files (`_SUCCESS`, temporary files)
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
        return [InputFile(STDIO, input_format, "")]
    if is_uri(value):
        found = [
            (uri, root) for uri, root in storage.expand(value) if _is_data_file(uri, input_format)
        ]
        if not found:
            raise InputMissingError(f"{value}: matched no input file of a known format")
        return [_input_file(uri, input_format, root) for uri, root in found]
    if _GLOB_CHARS & set(value):
        root = _glob_root(value)
        matches = sorted(
            path
            for path in glob.glob(value, recursive=True)
            if Path(path).is_file()
            and not _below_a_symlinked_folder(path, root)
            and _is_data_file(path, input_format)
        )
        if not matches:
            raise InputMissingError(f"{value}: pattern matched no input file")
        return [_input_file(path, input_format, root) for path in matches]
    path = Path(value)
    if path.is_dir():
        matches = sorted(
            str(p)
            for p in path.rglob("*")
            if p.is_file()
            and not _is_hidden(p.relative_to(path))
            and _is_data_file(str(p), input_format)
        )
        if not matches:
            raise InputMissingError(f"{value}: directory holds no input file of a known format")
        return [_input_file(p, input_format, value) for p in matches]
    if not path.exists():
        raise InputMissingError(f"{value}: no such file")
    if not os.access(value, os.R_OK):
        raise InputMissingError(f"{value}: not readable (permission denied)")
    return [_input_file(value, input_format, str(path.parent))]


def _input_file(path: str, input_format: str | None, root: str) -> InputFile:
    fmt = input_format or format_for_path(path)
    if fmt is None:
        raise UsageError(
            f"{path}: cannot tell the format from the file name; pass --input_format "
            f"({', '.join(sorted(READERS))})"
        )
    if storage.size(path) == 0:
        raise InputMissingError(f"{path}: file is empty")
    return InputFile(path, fmt, root)


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard (`exports/*/a.pq` -> `exports`)."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _below_a_symlinked_folder(path: str, root: str) -> bool:
    """Whether a wildcard took `path` through a symlinked folder below `root`. Globs do
    not follow them, as directories do not (`rglob`): on a shared machine a link can lead
    anywhere, and a link to a parent would list files again. A symlinked file, and
    links in the part of the pattern before its first wildcard, are followed."""
    folder = Path(root)
    for part in Path(os.path.relpath(path, root)).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            return True
    return False


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _is_data_file(path: str, input_format: str | None) -> bool:
    name = Path(path).name
    if name.startswith((".", "_")) or ".predictions." in name or name.endswith(".rejects.jsonl"):
        return False
    return input_format is not None or format_for_path(path) is not None
