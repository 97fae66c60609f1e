"""`batchpredict verify`: are an output folder's files still those its manifest recorded?

For each output the manifest records, the file is looked at (missing?), its size compared
(truncated or grown?), its bytes hashed (altered?), and, when those match, its rows
counted again (the record's row count). A folder without `_SUCCESS` is reported
incomplete: the run that wrote it did not finish, so its manifest does not vouch for the
folder. Given one output file, only that output is verified, against the manifest of the
output folder holding it; the folder's `_SUCCESS` is not needed for that.

Nothing here imports TensorFlow: verifying needs the outputs' readers only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from batchpredict import storage
from batchpredict.errors import DataError, InputMissingError, ReadWriteError, error_text
from batchpredict.formats.base import ReadOptions
from batchpredict.formats.delta_io import committed_rows, current_commit
from batchpredict.formats.registry import reader_for
from batchpredict.outputs import MANIFEST, SUCCESS_MARKER

#: Bytes read at a time while counting the lines of a JSON lines output.
_BLOCK = 1 << 20
#: Parent folders looked in for the manifest of an output file given alone (an output of
#: a folder of inputs sits in subfolders mirroring them).
_MAX_LEVELS_UP = 32
#: Problems named in the one-line error; all are printed, one a line.
_NAMED_PROBLEMS = 10


@dataclass(frozen=True)
class OutputCheck:
    """One recorded output: its name in the manifest, where it is, and what differs from
    its record (None when nothing does)."""

    output: str
    path: str
    rows: int | None
    bytes: int | None
    problem: str | None


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found: the manifest read, whether the folder is complete (has
    `_SUCCESS`), and every output checked."""

    path: str
    manifest: str
    complete: bool
    #: True when one output file was verified (the folder's `_SUCCESS` not required).
    single: bool
    outputs: tuple[OutputCheck, ...]

    @property
    def problems(self) -> list[str]:
        """One line per thing that does not match, naming the output (or the folder)."""
        found = [f"{c.output}: {c.problem}" for c in self.outputs if c.problem is not None]
        if not self.complete and not self.single:
            folder = self.manifest.rsplit("/", 1)[0]
            found.insert(
                0,
                f"{folder}: incomplete: no {SUCCESS_MARKER} (the run that wrote it did not "
                "finish, so its manifest does not vouch for the folder)",
            )
        return found

    @property
    def ok(self) -> bool:
        """Every output as recorded (and, for a folder, the folder complete)."""
        return not self.problems

    def summary(self) -> str:
        """One line: what was verified, or how many outputs differ."""
        checked = len(self.outputs)
        if self.ok:
            rows = sum(c.rows or 0 for c in self.outputs)
            size = sum(c.bytes or 0 for c in self.outputs)
            return (
                f"verified {checked} output(s) in {self.path} against {self.manifest}: "
                f"{rows} rows, {size} bytes, all as recorded"
            )
        bad = sum(c.problem is not None for c in self.outputs)
        return f"{self.path}: {bad} of {checked} output(s) differ from {self.manifest}"


def failure_message(report: VerifyReport) -> str:
    """The one-line error of a failed verification: every problem, or the first
    `_NAMED_PROBLEMS` and how many more (each is on its own line of the output too)."""
    problems = report.problems
    shown = "; ".join(problems[:_NAMED_PROBLEMS])
    if len(problems) > _NAMED_PROBLEMS:
        shown += f"; and {len(problems) - _NAMED_PROBLEMS} more (listed on stdout)"
    return shown


def verify(path: str) -> VerifyReport:
    """Verify the output folder `path` (every output its manifest records), or the one
    output file `path` against the manifest of the folder holding it.

    Raises InputMissingError (66) when there is nothing at `path` or no manifest for it,
    ReadWriteError (74) when the manifest cannot be read, DataError (65) when a file given
    alone is not in its folder's manifest. Mismatches are the report's `problems`.
    """
    path = path.rstrip("/") or "/"
    if not storage.is_uri(path):
        path = os.path.abspath(path)  # the folders above a relative name are looked in too
    found = storage.kind(storage.locate(path))
    if found == pafs.FileType.NotFound:
        raise InputMissingError(f"{path}: no such file or folder")
    if found == pafs.FileType.Directory:
        folder, data = path, _read_manifest(path)
        if data is None:
            raise InputMissingError(f"{path}: no {MANIFEST}: not an output folder of batchpredict")
        records = _records(data, storage.join(folder, MANIFEST))
    else:
        folder, data = _manifest_above(path)
        key = path[len(folder) :].lstrip("/")
        records = [r for r in _records(data, storage.join(folder, MANIFEST)) if r["output"] == key]
        if not records:
            raise DataError(f"{path}: not recorded in {storage.join(folder, MANIFEST)}")
    complete = storage.size(storage.join(folder, SUCCESS_MARKER)) is not None
    return VerifyReport(
        path=path,
        manifest=storage.join(folder, MANIFEST),
        complete=complete,
        single=found != pafs.FileType.Directory,
        outputs=tuple(_check(folder, record) for record in records),
    )


def _read_manifest(folder: str) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none; ReadWriteError when unreadable."""
    where = storage.join(folder, MANIFEST)
    try:
        data = json.loads(storage.read_bytes(where))
    except (FileNotFoundError, InputMissingError):
        return None
    except ValueError as exc:
        raise ReadWriteError(f"{where}: cannot read the manifest: {error_text(exc)}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
        raise ReadWriteError(f"{where}: cannot read the manifest: it lists no outputs")
    return data


def _manifest_above(path: str) -> tuple[str, dict[str, Any]]:
    """The nearest folder above the file `path` with a manifest, and the manifest."""
    folder = path
    for _ in range(_MAX_LEVELS_UP):
        parent = folder.rsplit("/", 1)[0] if "/" in folder.rstrip("/") else ""
        if not parent or parent == folder or parent.endswith(":/"):
            break
        folder = parent
        data = _read_manifest(folder)
        if data is not None:
            return folder, data
    raise InputMissingError(f"{path}: no {MANIFEST} in the folders above it")


def _records(data: dict[str, Any], where: str) -> list[dict[str, Any]]:
    records = [r for r in data["outputs"] if isinstance(r, dict)]
    if len(records) != len(data["outputs"]) or not all(
        isinstance(r.get("output"), str) for r in records
    ):
        raise ReadWriteError(f"{where}: cannot read the manifest: an output without a name")
    return records


def _check(folder: str, record: dict[str, Any]) -> OutputCheck:
    """Compare one output with its record: presence, size, SHA-256, then its rows."""
    output = record["output"]
    path = storage.join(folder, output)
    recorded_bytes, recorded_sha = record.get("bytes"), record.get("sha256")
    recorded_rows = record.get("rows")

    def result(
        problem: str | None, rows: int | None = None, size: int | None = None
    ) -> OutputCheck:
        return OutputCheck(output, path, rows, size, problem)

    if not isinstance(recorded_sha, str) or not isinstance(recorded_bytes, int):
        return result("no checksum recorded (written by an older batchpredict): cannot verify")
    if record.get("format") == "delta":
        # A table: the manifest recorded the log entry of the version the run committed,
        # which must still be the current one.
        try:
            path = current_commit(path)
        except (InputMissingError, ReadWriteError) as exc:
            return result(f"unreadable: {error_text(exc)}")
        if storage.content(path).sha256 != recorded_sha:
            return result("altered: the Delta table's current version is not the one recorded")
    size = storage.fingerprint(path)["size"]
    if size is None:
        return result("missing")
    if size < recorded_bytes:
        return result(f"truncated: {size} bytes, recorded {recorded_bytes}", size=size)
    if size > recorded_bytes:
        return result(f"altered: {size} bytes, recorded {recorded_bytes}", size=size)
    if storage.content(path).sha256 != recorded_sha:
        return result("altered: sha256 differs", size=size)
    try:
        rows = count_rows(path, str(record.get("format")))
    except (DataError, ReadWriteError, InputMissingError, pa.ArrowException) as exc:
        return result(f"unreadable: {error_text(exc)}", size=size)
    if rows != recorded_rows:
        return result(f"rows: {rows}, recorded {recorded_rows}", rows, size)
    return result(None, rows, size)


def count_rows(path: str, format_name: str) -> int:
    """The rows of an output file, read again as its format defines them.

    CSV and TSV through Arrow's CSV parser with the first column read as text: a
    re-read with type guessing could fail on a kept text column whose first rows look
    numeric. JSON lines: the lines (one object each, as written). Parquet and Avro:
    batchpredict's readers.
    """
    if format_name in ("csv", "tsv"):
        return _csv_rows(path, "\t" if format_name == "tsv" else ",")
    if format_name == "jsonl":
        return _lines(path)
    if format_name == "delta":  # `path` is the log entry of the version (see `_check`)
        return committed_rows(path)
    reader = reader_for(path, format_name, ReadOptions())
    total = reader.total_rows()
    if total is not None:
        return total
    return sum(batch.num_rows for batch in reader.iter_batches())


def _csv_rows(path: str, delimiter: str) -> int:
    with storage.open_stream(path) as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(autogenerate_column_names=True, skip_rows=1),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    include_columns=["f0"], column_types={"f0": pa.string()}
                ),
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return 0  # a header and no rows
            raise
        return sum(batch.num_rows for batch in _batches(reader))


def _batches(reader: Any) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _lines(path: str) -> int:
    """Lines of a (decompressed) text file; a last line without a newline counts."""
    count, last = 0, b"\n"
    with storage.open_stream(path) as stream:
        while block := stream.read(_BLOCK):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
