"""The run's one writer thread: it encodes, writes and commits outputs in order while the
model scores, so that neither a thread nor a queue is set up per output.

The scoring thread hands it lists of actions, each a batch for an output or the order to
commit it; an output is opened at its first batch and committed (synced to disk, then
renamed into place whole) only when told to. Commits run on a few threads of their own,
so that the disk syncs of many small outputs overlap (a file system commits concurrent
syncs together) instead of costing one disk flush each in turn; outputs are still
reported committed in input order. After a failure the commits under way finish and
every output not committed is aborted, leaving any previous file of that name untouched.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchpredict.errors import DataError
from batchpredict.formats.base import Writer
from batchpredict.formats.json_writer import JsonLinesWriter, encode_together
from batchpredict.outputs import OutputTarget
from batchpredict.summary import Counts


@dataclass(eq=False)
class PendingOutput:
    """One output being made: its target, its writer, the rows counted for it, and the
    identities of its inputs as taken before they were read (for the manifest)."""

    target: OutputTarget
    writer: Writer
    inputs: list[dict[str, Any]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    schema: pa.Schema | None = None


#: Outputs being committed at once: their syncs overlap (a dump of small files synced
#: 2,000 outputs ~1.5x as fast with 16 as with 4; a waiting sync costs no CPU).
COMMIT_THREADS = 16
#: Commits started and not yet reported, at most; the writer waits for the oldest beyond
#: (each may hold a small output's batches: this bounds memory).
COMMIT_WINDOW = 2 * COMMIT_THREADS

#: A batch to append to an output, or (None) the order to commit it.
Action = tuple[PendingOutput, pa.RecordBatch | None]


class OutputThread:
    """Runs the writers of a run, one after the other, on one thread of its own.

    `committed` is called on that thread right after each output is renamed into place.
    """

    _DONE = object()

    def __init__(self, committed: Callable[[PendingOutput], None], depth: int) -> None:
        self._committed = committed
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        #: Outputs opened or being committed, not yet reported: aborted after a failure.
        self._open: dict[int, PendingOutput] = {}
        self._committing: deque[tuple[PendingOutput, Future[None]]] = deque()
        self._commits = ThreadPoolExecutor(COMMIT_THREADS, "batchpredict-commit")
        self._thread = threading.Thread(target=self._loop, name="batchpredict-writer", daemon=True)
        self._thread.start()

    def put(self, actions: Sequence[Action], *, check: bool = True) -> None:
        """Queue `actions`; re-raise the writer's failure as soon as it is known (unless
        `check` is False, while the run is already failing)."""
        if check and self._error is not None:
            raise self._error
        if actions:
            self._queue.put(list(actions))

    def close(self) -> None:
        """Wait until everything queued is written and committed; re-raise a failure."""
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """While failing: finish what is queued (outputs told to commit are committed),
        then abort every output left open. Never raises."""
        self._queue.put(self._DONE)
        self._thread.join()
        for output in self._open.values():
            output.writer.abort()
        self._open.clear()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                self._guard(self._reap, 0)
                self._commits.shutdown()
                return
            if self._error is None:  # else drain, so that the producer never blocks
                self._guard(self._act_all, item)

    def _guard(self, step: Callable[[Any], None], argument: Any) -> None:
        try:
            step(argument)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            self._error = self._error or exc

    def _act_all(self, actions: list[Action]) -> None:
        runs = list(_runs(actions))
        # Small JSON lines outputs given whole: encoded together, once (see `_encoded`).
        encoded = _encoded([(o, batches) for o, batches, commit in runs if commit])
        for output, batches, commit in runs:
            if output.schema is None and commit and batches:
                # The whole of a small output at once: written and committed on a commit
                # thread, beside the others (encoders release the GIL, syncs overlap).
                lines = encoded.get(id(output))
                if lines is not None:
                    write = functools.partial(self._write_lines, output, batches[0].schema, lines)
                else:
                    write = functools.partial(self._write_whole, output, batches)
                self._commit(output, write)
                continue
            for batch in batches:
                self._write(output, batch)
            if commit:
                self._commit(output, output.writer.commit)

    def _commit(self, output: PendingOutput, commit: Callable[[], None]) -> None:
        self._open[id(output)] = output
        self._committing.append((output, self._commits.submit(commit)))
        self._reap(COMMIT_WINDOW)

    def _reap(self, keep: int) -> None:
        """Report the oldest commits in order until at most `keep` are under way; the
        first that failed is raised, after every earlier one was reported."""
        while len(self._committing) > keep or (self._committing and self._committing[0][1].done()):
            output, future = self._committing.popleft()
            try:
                future.result()
            finally:
                self._open.pop(id(output), None)
            output.counts.written = output.writer.rows_written
            self._committed(output)

    def _write_whole(self, output: PendingOutput, batches: list[pa.RecordBatch]) -> None:
        try:
            for batch in batches:
                self._write(output, batch)
        except BaseException:
            output.writer.abort()  # no temporary file may stay behind
            raise
        output.writer.commit()

    def _write_lines(
        self, output: PendingOutput, schema: pa.Schema, lines: tuple[bytes, int]
    ) -> None:
        """`_write_whole` of an output whose rows are encoded already (`_encoded`)."""
        writer = output.writer
        assert isinstance(writer, JsonLinesWriter)
        output.schema = schema
        try:
            writer.open(schema)
            writer.write_lines(*lines)
        except BaseException:
            writer.abort()  # no temporary file may stay behind
            raise
        writer.commit()

    def _write(self, output: PendingOutput, batch: pa.RecordBatch) -> None:
        if output.schema is None:
            output.schema = batch.schema
            self._open[id(output)] = output
            output.writer.open(batch.schema)
        elif not batch.schema.equals(output.schema):
            batch = _conform(batch, output.schema)
        output.writer.write(batch)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a later input's batch to the first input's output schema, or explain why not."""
    if batch.schema.names != schema.names:
        raise DataError(
            f"inputs written to one output have different columns: {', '.join(schema.names)} "
            f"vs {', '.join(batch.schema.names)}; use --output_dir for one output per input"
        )
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"inputs written to one output have different column types: {exc}") from exc


def _runs(actions: list[Action]) -> Iterator[tuple[PendingOutput, list[pa.RecordBatch], bool]]:
    """The actions by output, in order: its batches, and whether it is then committed."""
    start = 0
    while start < len(actions):
        output = actions[start][0]
        stop = start
        while stop < len(actions) and actions[stop][0] is output:
            stop += 1
        batches = [batch for _, batch in actions[start:stop] if batch is not None]
        yield output, batches, actions[stop - 1][1] is None
        start = stop


def _encoded(
    wholes: list[tuple[PendingOutput, list[pa.RecordBatch]]],
) -> dict[int, tuple[bytes, int]]:
    """The JSON lines and rows of each new JSON lines output in `wholes` (outputs given
    whole), by `id`, from one encoding of them all when they share one schema (none else):
    one polars call in place of one per output."""
    chosen = [
        (output, batches)
        for output, batches in wholes
        if output.schema is None and batches and isinstance(output.writer, JsonLinesWriter)
    ]
    if len(chosen) < 2:
        return {}
    flat = [batch for _, batches in chosen for batch in batches]
    texts = encode_together(flat)
    if texts is None:
        return {}
    found: dict[int, tuple[bytes, int]] = {}
    pieces = iter(texts)
    for output, batches in chosen:
        lines = b"".join(next(pieces) for _ in batches)
        found[id(output)] = (lines, sum(batch.num_rows for batch in batches))
    return found
