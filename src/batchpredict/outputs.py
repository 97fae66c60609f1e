"""Where outputs go, and the rejects file written beside them.

Output planning happens before anything is read: every input gets its target, two inputs
never share one by accident, and no output may be an input. (What an output's columns are
is `predictions.py`.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict import storage
from batchpredict.atomic import StagedFile, write_whole
from batchpredict.config import STDIO, RunConfig
from batchpredict.errors import (
    OutputError,
    ReadWriteError,
)
from batchpredict.formats.base import BadRecord, compression_of, strip_compression
from batchpredict.formats.registry import WRITERS, default_extension, format_for_path, writer_format
from batchpredict.sources import InputFile

SUCCESS_MARKER = "_SUCCESS"
#: `--output_format delta`: the whole `--output_dir` is one table.
DELTA = "delta"
MANIFEST = "_manifest.json"
REJECTS = "_rejects.jsonl"


@dataclass(frozen=True)
class OutputTarget:
    """One output file and the inputs whose predictions it holds, in order."""

    path: str
    format: str
    inputs: tuple[InputFile, ...]


def plan_outputs(inputs: Sequence[InputFile], config: RunConfig) -> list[OutputTarget]:
    """Decide every output path and format; refuse collisions and outputs that are inputs."""
    output_format = writer_format(config.output_format) if config.output_format else None
    if output_format == DELTA and config.output_dir is not None:
        # One table for the whole run, committed in one transaction (README "Delta Lake
        # tables"); RunConfig refuses delta without --output_dir.
        targets = [OutputTarget(config.output_dir, DELTA, tuple(inputs))]
    elif config.output_file is not None:
        fmt = (
            output_format
            or (None if config.output_file == STDIO else format_for_path(config.output_file))
            or _written_as(inputs[0])
        )
        targets = [OutputTarget(config.output_file, fmt, tuple(inputs))]
    else:
        targets = []
        for item in inputs:
            fmt = output_format or _written_as(item)
            if config.output_dir is not None:
                name = _renamed(item.relative_path, item.format, fmt)
                path = storage.join(config.output_dir, name)
            else:
                path = _beside(item.path, fmt)
            targets.append(OutputTarget(path, fmt, (item,)))
    _refuse_collisions(targets)
    _refuse_overwriting_inputs(targets, inputs)
    if config.on_error == "skip":
        _refuse_overwriting_inputs(
            [OutputTarget(rejects_path(t, config), "jsonl", t.inputs) for t in targets], inputs
        )
    return targets


def _written_as(item: InputFile) -> str:
    """An input's output format when `--output_format` is not given: its own, except that a
    Delta table's predictions are a Parquet file (a table is written only when asked)."""
    return "parquet" if item.format == DELTA else item.format


def rejects_path(target: OutputTarget, config: RunConfig) -> str:
    """Where a target's bad rows go: `--rejects_file`, `DIR/_rejects.jsonl`, or beside it."""
    if config.rejects_file is not None:
        return config.rejects_file
    if config.output_dir is not None and config.shard_index is not None:
        # Shards run at once: each keeps its own bad rows.
        shard = f"shard-{config.shard_index}-of-{config.shard_count}"
        return storage.join(config.output_dir, f"_rejects.{shard}.jsonl")
    if config.output_dir is not None:
        return storage.join(config.output_dir, REJECTS)
    return f"{target.path}.rejects.jsonl"


def _renamed(relative: str, input_format: str, output_format: str) -> str:
    """Keep the input's relative name; swap the extension only when the format changes."""
    if input_format == output_format:
        return relative
    return f"{_stem(relative)}{default_extension(output_format)}"


def _beside(path: str, output_format: str) -> str:
    """`data.csv.gz` -> `data.predictions.csv.gz` (compression kept when the writer takes it)."""
    suffix = Path(path).suffix if compression_of(path) else ""
    if suffix and not WRITERS[output_format].accepts_compression_suffix:
        suffix = ""
    return f"{_stem(path)}.predictions{default_extension(output_format)}{suffix}"


def _stem(path: str) -> str:
    bare = strip_compression(path)
    suffix = Path(bare).suffix
    return bare[: -len(suffix)] if suffix else bare


def _refuse_collisions(targets: Sequence[OutputTarget]) -> None:
    seen: dict[str, OutputTarget] = {}
    for target in targets:
        key = _identity(target.path)
        if key in seen:
            first = seen[key].inputs[0].path
            raise OutputError(
                f"{first} and {target.inputs[0].path} would both be written to {target.path}; "
                "use --output_dir with inputs under distinct relative paths"
            )
        seen[key] = target


def _refuse_overwriting_inputs(
    targets: Sequence[OutputTarget], inputs: Sequence[InputFile]
) -> None:
    input_paths = {_identity(i.path) for i in inputs if i.path != STDIO}
    for target in targets:
        if target.path != STDIO and _identity(target.path) in input_paths:
            raise OutputError(f"{target.path}: output would overwrite the input file")


def _identity(path: str) -> str:
    return path if path == STDIO else storage.identity(path)


class RejectsWriter:
    """The rejects file: one JSON line per bad row, written to a temporary file and renamed.

    Each line has the source file, the 1-based data row, the column, the reason and the
    row's values as read, so that nothing is lost and the rows can be fixed and re-fed.
    """

    def __init__(self, path: str, max_bytes: int | None = None) -> None:
        self.path = path
        self.count = 0
        #: `--max_output_bytes`: a bad file's rejects are bounded like its predictions.
        self._max_bytes = max_bytes
        self._staged: StagedFile | None = None

    def add(self, source: str, rows: np.ndarray, table: pa.Table, problems: Sequence[Any]) -> None:
        """Record the bad rows of one chunk; `rows` maps chunk positions to file rows."""
        values = table.take(pa.array([p.index for p in problems])).to_pylist()
        lines = []
        for problem, raw in zip(problems, values, strict=True):
            record = {
                "source": source,
                "row": int(rows[problem.index]),
                "column": problem.column,
                "reason": problem.reason,
                "values": _json_safe(raw),
            }
            lines.append(json.dumps(record, default=_json_default, allow_nan=False) + "\n")
        self._write_lines(lines)
        self.count += len(problems)

    def _write_lines(self, lines: list[str]) -> None:
        if self._staged is None:
            self._staged = StagedFile(self.path, max_bytes=self._max_bytes)
        try:
            self._staged.sink.write("".join(lines).encode("utf-8"))
        except OSError as exc:
            raise ReadWriteError(f"{self.path}: cannot write: {exc}") from exc

    def add_record(self, source: str, record: BadRecord) -> None:
        """Record a record the reader could not parse: its number, reason, the value at
        fault (null when the whole record is) and raw text."""
        line = {
            "source": source,
            "row": record.row,
            "column": record.column,
            "reason": record.reason,
            "value": record.value,
        }
        self._write_lines([json.dumps({**line, "text": record.text}) + "\n"])
        self.count += 1

    def commit(self) -> None:
        """Move the rejects into place (an empty file when there were none)."""
        if self._staged is None:
            write_whole(self.path, "")
            return
        staged, self._staged = self._staged, None
        staged.commit()

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._staged is not None:
            self._staged.abort()
            self._staged = None


def _json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity" (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """Rejected values JSON cannot hold natively: bytes as text, dates as ISO strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
