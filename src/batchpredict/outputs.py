"""Where outputs go, what their columns are, and the files written after them.

Output planning happens before anything is read: every input gets its target, two inputs
never share one by accident, and no output may be an input. Prediction arrays become Arrow
columns here, split into `name_0..name_{n-1}` for formats without list columns (CSV, TSV).
"""

from __future__ import annotations

import json
import math
import os
import time
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
    DataError,
    InputMissingError,
    ModelError,
    OutputError,
    ReadWriteError,
)
from batchpredict.formats.base import BadRecord, compression_of, strip_compression
from batchpredict.formats.registry import WRITERS, default_extension, format_for_path, writer_format
from batchpredict.model import LoadedModel
from batchpredict.sources import InputFile
from batchpredict.storage import is_uri

SUCCESS_MARKER = "_SUCCESS"
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
    if config.output_file is not None:
        fmt = (
            output_format
            or (None if config.output_file == STDIO else format_for_path(config.output_file))
            or inputs[0].format
        )
        targets = [OutputTarget(config.output_file, fmt, tuple(inputs))]
    else:
        targets = []
        for item in inputs:
            fmt = output_format or item.format
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


def rejects_path(target: OutputTarget, config: RunConfig) -> str:
    """Where a target's bad rows go: `--rejects_file`, `DIR/_rejects.jsonl`, or beside it."""
    if config.rejects_file is not None:
        return config.rejects_file
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


@dataclass(frozen=True)
class PredictionColumns:
    """How model outputs become output columns, and the optional `label` and `score`."""

    #: Output tensor name -> column name, in the model's output order.
    names: dict[str, str]
    class_names: tuple[str, ...] | None = None
    #: Cut-off for a single sigmoid output; set (0.5 by default) whenever labels are made
    #: from a width-1 output.
    threshold: float | None = None
    labelled: bool = False

    @classmethod
    def for_model(
        cls,
        model: LoadedModel,
        prediction_column: str = "prediction",
        class_names: tuple[str, ...] | None = None,
        threshold: float | None = None,
    ) -> PredictionColumns:
        """Name the columns (`prediction`, `output_0..` or dict keys) and check label options.

        `--class_names`/`--threshold` need exactly one output: of width 1 (sigmoid: two
        names, negative then positive) or of width k with k names (softmax).
        """
        if len(model.outputs) == 1:
            names = {model.outputs[0].name: prediction_column}
        elif model.output_structure == "list":
            names = {t.name: f"output_{i}" for i, t in enumerate(model.outputs)}
        else:
            names = {t.name: t.name for t in model.outputs}
        if class_names is None and threshold is None:
            return cls(names)
        if len(model.outputs) != 1:
            raise ModelError(
                "--class_names and --threshold need a model with one output; this one has "
                f"{len(model.outputs)}: {', '.join(t.name for t in model.outputs)}"
            )
        width = _width(model.outputs[0].shape)
        if width == 1:
            if class_names is not None and len(class_names) != 2:
                raise ModelError(
                    f"the model has one sigmoid-style output of width 1, so --class_names "
                    f"needs 2 names (negative, positive), got {len(class_names)}"
                )
            threshold = 0.5 if threshold is None else threshold
        else:
            if threshold is not None:
                raise ModelError(
                    f"--threshold is for a single output of width 1; output "
                    f"{model.outputs[0].name!r} has width {width or 'unknown'} (use --class_names)"
                )
            if width is not None and class_names is not None and len(class_names) != width:
                raise ModelError(
                    f"--class_names has {len(class_names)} names but output "
                    f"{model.outputs[0].name!r} has width {width}"
                )
        return cls(names, class_names, threshold, labelled=True)

    def build(self, predictions: dict[str, np.ndarray], nested: bool) -> list[tuple[str, pa.Array]]:
        """Arrow columns: scalars for width 1, lists (or `name_i` when not `nested`) otherwise."""
        columns: list[tuple[str, pa.Array]] = []
        for tensor_name, column in self.names.items():
            values = predictions[tensor_name]
            rows = len(values)
            per_row = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
            if per_row == 1:
                columns.append((column, _scalar_array(values.reshape(rows))))
            elif nested:
                columns.append((column, _nested_list_array(values)))
            else:
                flat = values.reshape(rows, per_row)
                columns.extend(
                    (f"{column}_{i}", _scalar_array(np.ascontiguousarray(flat[:, i])))
                    for i in range(per_row)
                )
        if self.labelled:
            (values,) = (predictions[name] for name in self.names)
            columns.extend(self._labels(values))
        return columns

    def _labels(self, values: np.ndarray) -> list[tuple[str, pa.Array]]:
        """`label` (argmax, or the threshold for one sigmoid) and `score`, its probability."""
        flat = values.reshape(len(values), -1)
        if flat.shape[1] == 1:
            probability = flat[:, 0]
            assert self.threshold is not None
            index = (probability >= self.threshold).astype(np.int64)
            score = np.where(index == 1, probability, 1 - probability)
        else:
            if self.class_names is not None and flat.shape[1] != len(self.class_names):
                raise DataError(
                    f"the model output has width {flat.shape[1]} but --class_names has "
                    f"{len(self.class_names)} names"
                )
            index = np.argmax(flat, axis=1)
            score = flat[np.arange(len(flat)), index]
        label = (
            pa.array(self.class_names).take(pa.array(index))
            if self.class_names is not None
            else pa.array(index)
        )
        return [("label", label), ("score", pa.array(score))]


def _width(shape: tuple[int | None, ...]) -> int | None:
    """Values per row of an output shape (None when a dimension is open)."""
    known = [d for d in shape[1:] if d is not None]
    return math.prod(known) if len(known) == len(shape) - 1 else None


def _scalar_array(values: np.ndarray) -> pa.Array:
    if values.dtype == object:  # tf.string outputs arrive as bytes
        return pa.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        )
    return pa.array(values)


def _nested_list_array(values: np.ndarray) -> pa.Array:
    """A `[rows, a, b, ...]` array as nested Arrow lists (no per-row Python)."""
    array: pa.Array = _scalar_array(values.reshape(-1))
    for width in reversed(values.shape[1:]):
        count = len(array) // width
        offsets = pa.array(np.arange(0, count * width + 1, width, dtype=np.int32))
        array = pa.ListArray.from_arrays(offsets, array)
    return array


def output_batch(
    kept: pa.Table, predictions: list[tuple[str, pa.Array]], nested: bool, source: str
) -> pa.RecordBatch:
    """Kept columns followed by prediction columns as one record batch."""
    names = [*kept.column_names, *(name for name, _ in predictions)]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DataError(
            f"{source}: output column(s) {', '.join(clash)} would appear twice; rename the "
            "prediction with --prediction_column or leave the input column out with --keep_columns"
        )
    if not nested:
        for field in kept.schema:
            if pa.types.is_nested(field.type):
                raise DataError(
                    f"{source}: kept column {field.name!r} is a {field.type} and this output "
                    "format cannot hold lists; leave it out with --keep_columns or choose "
                    "--output_format parquet, jsonl or avro"
                )
    arrays = [c.combine_chunks() for c in kept.columns] + [a for _, a in predictions]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def input_fingerprint(item: InputFile) -> dict[str, Any]:
    """What identifies an input's content for `--skip_existing`: path, size and mtime."""
    if is_uri(item.path):
        size, mtime = storage.fingerprint(item.path)
        return {"path": item.path, "size": size, "mtime": mtime}
    stat = os.stat(item.path)
    return {"path": item.path, "size": stat.st_size, "mtime": stat.st_mtime}


class Manifest:
    """`_manifest.json` of an `--output_dir`: rewritten atomically after every commit.

    Because it is current after each output, a run that was killed leaves a manifest of
    what it finished, and `--skip_existing` resumes from there. `_SUCCESS` is written
    only by `finish`, after the last output.
    """

    def __init__(self, output_dir: str, resume: bool) -> None:
        self.output_dir = output_dir
        self.path = storage.join(output_dir, MANIFEST)
        self.entries: dict[str, dict[str, Any]] = {}
        self._previous: dict[str, dict[str, Any]] = self._load() if resume else {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(storage.read_bytes(self.path))
            return {entry["output"]: entry for entry in data["outputs"]}
        except (FileNotFoundError, InputMissingError):
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReadWriteError(f"{self.path}: cannot read the manifest: {exc}") from exc

    def _key(self, target: OutputTarget) -> str:
        if is_uri(target.path):
            return target.path[len(self.output_dir) :].lstrip("/")
        return os.path.relpath(target.path, self.output_dir)

    def already_done(self, target: OutputTarget, inputs: list[dict[str, Any]]) -> bool:
        """Whether a previous run committed this output from inputs of the same size and mtime.

        A match is carried into this run's manifest.
        """
        entry = self._previous.get(self._key(target))
        if entry is None or entry.get("inputs") != inputs:
            return False
        if storage.size(target.path) != entry.get("output_size"):
            return False  # gone, or changed since
        self.entries[entry["output"]] = entry
        self._write()
        return True

    def record(
        self, target: OutputTarget, inputs: list[dict[str, Any]], rows: int, rejected: int
    ) -> None:
        """Add a committed output and rewrite the manifest."""
        key = self._key(target)
        self.entries[key] = {
            "inputs": inputs,
            "output": key,
            "output_size": storage.size(target.path),
            "format": target.format,
            "rows": rows,
            "rejected_rows": rejected,
        }
        self._write()

    def _write(self) -> None:
        manifest = {"written_at": time.time(), "outputs": list(self.entries.values())}
        write_whole(self.path, json.dumps(manifest, indent=2) + "\n")

    def finish(self) -> None:
        """Mark the folder complete: `_SUCCESS`, last of all."""
        self._write()
        write_whole(storage.join(self.output_dir, SUCCESS_MARKER), "")


class RejectsWriter:
    """The rejects file: one JSON line per bad row, written to a temporary file and renamed.

    Each line has the source file, the 1-based data row, the column, the reason and the
    row's values as read, so that nothing is lost and the rows can be fixed and re-fed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
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
            self._staged = StagedFile(self.path)
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
