"""The reading side of the local engine: every output's inputs read, mapped and converted
for the model, as a stream of pieces and ends, output after output.

Small local inputs are read ahead, `READERS` at a time: Arrow parses them with the GIL
released, so a dump of many small files is not read one file after the other on one
core. Their bad rows are held and passed to the rejects file when their output's turn
comes, so the rejects file lists them in input order, as a sequential read would.
Consecutive small JSON lines inputs are read ahead together, up to `GROUP_FILES` at a
time: parsed by one Arrow call when they are plain enough to be (`json_group`), else one
by one; each output's rows, errors and rejects are what reading it alone gives.
Large inputs, stdin and objects in stores are streamed chunk by chunk, as always.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from batchpredict.batching import rechunk
from batchpredict.columns import ColumnMapping
from batchpredict.config import STDIO, RunConfig, is_uri
from batchpredict.conversion import RowProblem, to_model_arrays
from batchpredict.errors import BatchPredictError, DataError
from batchpredict.formats.base import BadRecord, Reader, ReadOptions
from batchpredict.formats.json_group import SmallFile, read_group, small_file
from batchpredict.formats.json_io import JsonLinesReader
from batchpredict.formats.registry import read_options, reader_for
from batchpredict.output_thread import PendingOutput
from batchpredict.outputs import RejectsWriter, rejects_path
from batchpredict.scoring import FileRows, Ready, RejectSink, RunColumns, sift
from batchpredict.sources import InputFile
from batchpredict.storage import compression_of
from batchpredict.summary import Counts

#: Inputs read ahead at once.
READERS = 2
#: Outputs whose inputs are local files of at most this many bytes in all are read ahead.
SMALL_INPUT_BYTES = 4 << 20
#: Reads (an output's inputs, or a group of outputs) ahead of the one handed on, at most.
READ_AHEAD = 8
#: Small JSON lines inputs (one per output) read together, at most: their files and bytes.
GROUP_FILES = 64
GROUP_BYTES = 1 << 20

#: What a read ahead gives each of its outputs: its pieces, or the error reading it raised
#: (raised in its turn, after the outputs before it are handed on).
_Result = list[Ready] | BaseException


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


@dataclass
class _Ahead:
    """Outputs read ahead together on the pool: their held bad rows, and their results."""

    outputs: list[PendingOutput]
    held: list[HeldRejects | None]
    read: Future[list[_Result]]

    def handed_on(self) -> Iterator[Event]:
        """Each output's pieces and end, in order; the first that failed raises its error."""
        # The results end at the first failure.
        for output, held, result in zip(self.outputs, self.held, self.read.result(), strict=False):
            if isinstance(result, BaseException):
                raise result
            if held is not None:
                held.release()
            for ready in result:
                yield Piece(output, ready)
            yield End(output)


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
        ahead: deque[_Ahead] = deque()
        group: list[PendingOutput] = []  # small JSON lines inputs, read together
        group_bytes = 0
        try:
            for output in outputs:
                size = self._small(output)
                if size is None or not self._groupable(output, size):
                    if group:
                        ahead.append(self._submit(pool, group))
                        group, group_bytes = [], 0
                    if size is None:
                        while ahead:
                            yield from ahead.popleft().handed_on()
                        yield from self._streamed(output)
                        continue
                    ahead.append(self._submit(pool, [output]))
                else:
                    if group and (len(group) == GROUP_FILES or group_bytes + size > GROUP_BYTES):
                        ahead.append(self._submit(pool, group))
                        group, group_bytes = [], 0
                    group.append(output)
                    group_bytes += size
                while len(ahead) > READ_AHEAD:
                    yield from ahead.popleft().handed_on()
            if group:
                ahead.append(self._submit(pool, group))
            while ahead:
                yield from ahead.popleft().handed_on()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, pool: ThreadPoolExecutor, outputs: list[PendingOutput]) -> _Ahead:
        """Start reading `outputs` ahead on `pool`, their bad rows held."""
        held = [None if (sink := self._sink(o)) is None else HeldRejects(sink) for o in outputs]
        return _Ahead(outputs, held, pool.submit(self._read_many, outputs, held))

    def _sink(self, output: PendingOutput) -> RejectsWriter | None:
        return self.rejects.get(rejects_path(output.target, self.config)) if self.rejects else None

    def _small(self, output: PendingOutput) -> int | None:
        """The bytes of `output`'s inputs if it is read ahead: they are local files of at
        most `SMALL_INPUT_BYTES` together (it is held whole), and the column mapping is
        decided (stdin, the one exception, decides it as it is read); else None."""
        if self.run_columns.mapping is None:
            return None
        total = 0
        for source in output.target.inputs:
            # A Delta table is a folder of any size: always streamed.
            if source.path == STDIO or is_uri(source.path) or source.format == "delta":
                return None
            try:
                total += os.path.getsize(source.path)
            except OSError:
                return None  # the reader says what is wrong with it, in its turn
        return total if total <= SMALL_INPUT_BYTES else None

    @staticmethod
    def _groupable(output: PendingOutput, size: int) -> bool:
        """Whether `output` is one small uncompressed JSON lines file, read with others."""
        if len(output.target.inputs) != 1 or size >= GROUP_BYTES:
            return False
        source = output.target.inputs[0]
        if compression_of(source.path) or not os.path.isfile(source.path):
            return False
        try:
            reader = reader_for(source.path, source.format, ReadOptions())
        except BatchPredictError:
            return False  # its reader says what is wrong, in its turn
        return isinstance(reader, JsonLinesReader)

    def _read_many(
        self, outputs: list[PendingOutput], held: list[HeldRejects | None]
    ) -> list[_Result]:
        """The pieces of each output, in order, until one fails (its error ends the list);
        small JSON lines files from one parse when `read_group` can (see the module)."""
        tables: list[pa.Table | None] | None = None
        together: dict[int, Ready] = {}
        try:
            tables = self._group_tables(outputs) if len(outputs) > 1 else None
            together = {} if tables is None else self._converted_together(outputs, tables)
        except Exception:  # noqa: BLE001 - read alone, each file reports its own errors
            tables, together = None, {}
        results: list[_Result] = []
        for index, output in enumerate(outputs):
            try:
                table = None if tables is None else tables[index]
                if index in together:
                    readies = [together[index]]
                elif table is not None:
                    readies = list(self._whole_table(output, table, held[index]))
                else:
                    readies = list(self.chunks(output.target.inputs, output.counts, held[index]))
            except Exception as exc:  # noqa: BLE001 - raised in the output's turn
                results.append(exc)
                break
            results.append(readies)
        return results

    def _group_tables(self, outputs: list[PendingOutput]) -> list[pa.Table | None] | None:
        """Each output's one JSON lines input as its reader would yield it, from one parse
        of those that `small_file` accepts (None for the others); None when `read_group`
        cannot be sure of that, and every file is read alone."""
        files: list[SmallFile | None] = []
        for output in outputs:
            path = output.target.inputs[0].path
            try:
                with open(path, "rb") as stream:
                    # Only a regular file can be read again, alone, if need be.
                    regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
                    data = stream.read(SMALL_INPUT_BYTES + 1) if regular else None
            except OSError:
                data = None  # its reader says what is wrong, in its turn
            files.append(None if data is None else small_file(path, data, self._read_options(path)))
        plain = [f for f in files if f is not None]
        if len(plain) < 2:
            return None
        tables = read_group(plain, self._read_options(plain[0].path))
        if tables is None:
            return None
        found = iter(tables)
        return [None if f is None else next(found) for f in files]

    def _converted_together(
        self, outputs: list[PendingOutput], tables: list[pa.Table | None]
    ) -> dict[int, Ready]:
        """The one chunk of each output whose table was read (`_group_tables`), from one
        conversion of them all (by index); none when a row or column of any is bad, which
        `_whole_table` then reports as reading the file alone would."""
        chosen = [
            (i, t) for i, t in enumerate(tables) if t is not None and t.num_rows <= self.chunk_rows
        ]
        if len(chosen) < 2:
            return {}
        table = pa.concat_tables([t for _, t in chosen])
        path = outputs[chosen[0][0]].target.inputs[0].path
        try:
            mapping = self.run_columns.for_file(table.schema, path, declared_types=False)
            converted = to_model_arrays(table, mapping, path, self.config.fill_value)
        except DataError:
            return {}
        if converted.problems:
            return {}
        kept = table.select(list(mapping.kept))
        found: dict[int, Ready] = {}
        start = 0
        for index, part in chosen:
            rows = part.num_rows
            stop = start + rows
            arrays = {name: values[start:stop] for name, values in converted.arrays.items()}
            source = outputs[index].target.inputs[0].path
            found[index] = Ready(source, kept.slice(start, rows), arrays, rows)
            outputs[index].counts.read += rows
            start = stop
        return found

    def _read_options(
        self, path: str, on_bad_record: Callable[[BadRecord], None] | None = None
    ) -> ReadOptions:
        numbers = functools.partial(self.run_columns.read_types, source=path)
        return read_options(self.config, on_bad_record, numbers)

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
        for source in inputs:
            keep = None if rejects is None else _keep_record(rejects, counts)
            rows = FileRows(source.path, keep)
            options = self._read_options(source.path, None if keep is None else rows.on_bad_record)
            if source.row_groups is not None:  # a shard's part of a Parquet file
                options = dataclasses.replace(options, row_groups=source.row_groups)
                rows.read = source.row_groups.rows_before
            reader = reader_for(source.path, source.format, options)
            yield from self._prepared(source, reader, reader.iter_batches(), rows, counts, rejects)

    def _whole_table(
        self, output: PendingOutput, table: pa.Table, rejects: Rejects | None
    ) -> Iterator[Ready]:
        """`chunks` of an output whose one input was read already, as `table` (no record
        of it was bad: `read_group`)."""
        [source] = output.target.inputs
        keep = None if rejects is None else _keep_record(rejects, output.counts)
        rows = FileRows(source.path, keep)
        reader = reader_for(source.path, source.format, self._read_options(source.path))
        batches = table.to_batches(max_chunksize=self.config.chunk_size)
        yield from self._prepared(source, reader, batches, rows, output.counts, rejects)

    def _prepared(
        self,
        source: InputFile,
        reader: Reader,
        batches: Iterable[pa.RecordBatch],
        rows: FileRows,
        counts: Counts,
        rejects: Rejects | None,
    ) -> Iterator[Ready]:
        """The batches `reader` read of `source`, mapped and converted chunk by chunk."""
        config, run_columns = self.config, self.run_columns
        reject = None if rejects is None else _reject_rows(source.path, rejects, counts)
        mapping: ColumnMapping | None = None
        empty: Ready | None = None  # a chunk whose every row was rejected
        yielded = False
        for table in rechunk(batches, self.chunk_rows):
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
