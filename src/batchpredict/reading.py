"""The reading side of the local engine: every output's inputs read, mapped and converted
for the model, as a stream of pieces and ends, output after output.

Small local inputs are read ahead, `READERS` at a time: Arrow parses them with the GIL
released, so a dump of many small files is not read one file after the other on one
core. Their bad rows are held and passed to the rejects file when their output's turn
comes, so the rejects file lists them in input order, as a sequential read would.
Large inputs, stdin and objects in stores are streamed chunk by chunk, as always.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from batchpredict.batching import rechunk
from batchpredict.columns import ColumnMapping
from batchpredict.config import STDIO, RunConfig, is_uri
from batchpredict.conversion import RowProblem, to_model_arrays
from batchpredict.errors import DataError
from batchpredict.formats.base import BadRecord, Reader
from batchpredict.formats.registry import read_options, reader_for
from batchpredict.output_thread import PendingOutput
from batchpredict.outputs import RejectsWriter, rejects_path
from batchpredict.scoring import FileRows, Ready, RejectSink, RunColumns, sift
from batchpredict.sources import InputFile
from batchpredict.summary import Counts

#: Inputs read ahead at once.
READERS = 2
#: Outputs whose inputs are local files of at most this many bytes in all are read ahead.
SMALL_INPUT_BYTES = 4 << 20
#: Outputs read ahead of the one whose pieces are handed on, at most.
READ_AHEAD = 8


@dataclass(frozen=True)
class Piece:
    """Rows of one output, ready for the model."""

    output: PendingOutput
    ready: Ready


@dataclass(frozen=True)
class End:
    """Every row of an output was read: it may be committed once its pieces are written."""

    output: PendingOutput


Event = Piece | End


class Rejects(Protocol):
    """Where bad rows go: the rejects file, or a `HeldRejects` in front of it."""

    def add(self, source: str, rows: np.ndarray, table: pa.Table, problems: Sequence[Any]) -> None:
        """Keep the bad rows of one chunk."""

    def add_record(self, source: str, record: BadRecord) -> None:
        """Keep a record the reader could not parse."""


@dataclass
class HeldRejects:
    """Bad rows of an input read ahead, held until its output's turn."""

    target: RejectsWriter
    held: list[Callable[[], None]] = field(default_factory=list)

    def add(self, source: str, rows: np.ndarray, table: pa.Table, problems: Sequence[Any]) -> None:
        self.held.append(functools.partial(self.target.add, source, rows, table, problems))

    def add_record(self, source: str, record: BadRecord) -> None:
        self.held.append(functools.partial(self.target.add_record, source, record))

    def release(self) -> None:
        """Pass what is held to the rejects file, in the order it came."""
        for keep in self.held:
            keep()
        self.held.clear()


class Reading:
    """The events of a run's outputs, in order (iterated on the prefetch thread)."""

    def __init__(
        self,
        run_columns: RunColumns,
        chunk_rows: int,
        config: RunConfig,
        rejects: dict[str, RejectsWriter],
    ) -> None:
        self.run_columns = run_columns
        self.chunk_rows = chunk_rows
        self.config = config
        self.rejects = rejects

    def events(self, outputs: list[PendingOutput]) -> Iterator[Event]:
        """Every output's pieces, then its end, output after output."""
        pool = ThreadPoolExecutor(READERS, "batchpredict-read")
        ahead: deque[tuple[PendingOutput, Future[list[Ready]], HeldRejects | None]] = deque()
        try:
            for output in outputs:
                if not self._small(output):
                    while ahead:
                        yield from self._handed_on(*ahead.popleft())
                    yield from self._streamed(output)
                    continue
                sink = self._sink(output)
                held = None if sink is None else HeldRejects(sink)
                ahead.append((output, pool.submit(self._read_whole, output, held), held))
                while len(ahead) > READ_AHEAD:
                    yield from self._handed_on(*ahead.popleft())
            while ahead:
                yield from self._handed_on(*ahead.popleft())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _sink(self, output: PendingOutput) -> RejectsWriter | None:
        return self.rejects.get(rejects_path(output.target, self.config)) if self.rejects else None

    def _small(self, output: PendingOutput) -> bool:
        """Whether to read `output` ahead: its inputs are local files of at most
        `SMALL_INPUT_BYTES` together (it is held whole), and the column mapping is
        decided (stdin, the one exception, decides it as it is read)."""
        if self.run_columns.mapping is None:
            return False
        total = 0
        for source in output.target.inputs:
            if source.path == STDIO or is_uri(source.path):
                return False
            try:
                total += os.path.getsize(source.path)
            except OSError:
                return False  # the reader says what is wrong with it, in its turn
        return total <= SMALL_INPUT_BYTES

    def _read_whole(self, output: PendingOutput, held: HeldRejects | None) -> list[Ready]:
        return list(self.chunks(output.target.inputs, output.counts, held))

    def _handed_on(
        self, output: PendingOutput, read: Future[list[Ready]], held: HeldRejects | None
    ) -> Iterator[Event]:
        readies = read.result()
        if held is not None:
            held.release()
        for ready in readies:
            yield Piece(output, ready)
        yield End(output)

    def _streamed(self, output: PendingOutput) -> Iterator[Event]:
        for ready in self.chunks(output.target.inputs, output.counts, self._sink(output)):
            yield Piece(output, ready)
        yield End(output)

    def chunks(
        self, inputs: tuple[InputFile, ...], counts: Counts, rejects: Rejects | None
    ) -> Iterator[Ready]:
        """Read, map and convert the inputs chunk by chunk, ready for the model.

        Bad rows stop the run (`--on_error fail`) or go to `rejects` and are left out.
        """
        config, run_columns = self.config, self.run_columns
        for source in inputs:
            keep = None if rejects is None else _keep_record(rejects, counts)
            rows = FileRows(source.path, keep)
            numbers = functools.partial(run_columns.read_types, source=source.path)
            options = read_options(config, None if keep is None else rows.on_bad_record, numbers)
            if source.row_groups is not None:  # a shard's part of a Parquet file
                options = dataclasses.replace(options, row_groups=source.row_groups)
                rows.read = source.row_groups.rows_before
            reader = reader_for(source.path, source.format, options)
            reject = None if rejects is None else _reject_rows(source.path, rejects, counts)
            mapping: ColumnMapping | None = None
            empty: Ready | None = None  # a chunk whose every row was rejected
            yielded = False
            for table in rechunk(reader.iter_batches(), self.chunk_rows):
                if mapping is None:
                    mapping = run_columns.for_file(table.schema, source.path, reader.declares_types)
                converted = to_model_arrays(table, mapping, source.path, config.fill_value)
                counts.read += table.num_rows
                numbers_in_file = rows.next(table.num_rows)
                ready = sift(
                    table, mapping, converted, numbers_in_file, source=source.path, reject=reject
                )
                if ready.rows:
                    yielded = True
                    yield ready
                elif empty is None:
                    empty = ready
            rows.check_not_empty()
            if not yielded:
                # Every row rejected: the output is still written, with its columns and
                # no rows (the reader dropped them all, or the model's conversion did).
                yield empty or self._no_rows(source, reader, run_columns, reject)

    def _no_rows(
        self,
        source: InputFile,
        reader: Reader,
        run_columns: RunColumns,
        reject: RejectSink | None,
    ) -> Ready:
        """A ready chunk of no rows with the input's columns, for an input whose every record
        the reader rejected; stdin cannot be read again for its columns."""
        if source.path == STDIO:
            raise DataError(f"{source.path}: every row was rejected; no output can be written")
        schema = reader.schema()  # as read before the model's columns are parsed as numbers
        if not reader.declares_types:
            for name, kind in run_columns.read_types(schema, source.path).items():
                schema = schema.set(schema.get_field_index(name), pa.field(name, kind))
        table = schema.empty_table()
        mapping = run_columns.for_file(table.schema, source.path, reader.declares_types)
        converted = to_model_arrays(table, mapping, source.path, self.config.fill_value)
        rows = np.zeros(0, dtype=np.int64)
        return sift(table, mapping, converted, rows, source=source.path, reject=reject)


def _keep_record(rejects: Rejects, counts: Counts) -> Callable[[str, BadRecord], None]:
    """Keeps a record the reader could not parse in the rejects file, counted as read."""

    def keep(source: str, record: BadRecord) -> None:
        rejects.add_record(source, record)
        counts.read += 1
        counts.rejected += 1

    return keep


def _reject_rows(source: str, rejects: Rejects, counts: Counts) -> RejectSink:
    """Keeps a chunk's bad rows in the rejects file, counted."""

    def reject(table: pa.Table, rows: np.ndarray, problems: Sequence[RowProblem]) -> None:
        rejects.add(source, rows, table, problems)
        counts.rejected += len(problems)

    return reject
