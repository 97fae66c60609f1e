"""Regroup streamed rows into chunks and fixed-size batches; no TensorFlow here.

Every batch handed to the model has exactly `batch_size` rows so that one traced function
serves the whole run; the last batch is padded by repeating its last row (a real value of
the right dtype, unlike zeros for string inputs) and the padding is dropped afterwards.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa

T = TypeVar("T")


def rechunk(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly `size` rows (the last may be shorter).

    Slicing is zero-copy; a chunk that spans two reader batches is a two-chunk table.
    """
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def whole_batches(rows: int, batch_size: int) -> int:
    """`rows` rounded up to a multiple of `batch_size`: chunks that pad only at a file's end."""
    return batch_count(rows, batch_size) * batch_size


def batch_count(rows: int, batch_size: int) -> int:
    """How many fixed-size batches `rows` rows need."""
    return -(-rows // batch_size)


def fixed_batches(
    arrays: dict[str, np.ndarray], rows: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Split `{name: array}` (first axis = rows) into batches of exactly `batch_size` rows.

    Full batches are views; only the last, short batch is copied and padded.
    """
    for start in range(0, rows, batch_size):
        stop = start + batch_size
        if stop <= rows:
            yield {name: a[start:stop] for name, a in arrays.items()}
        else:
            yield {name: pad_rows(a[start:rows], batch_size) for name, a in arrays.items()}


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Pad `array` to `size` rows by repeating its last row."""
    missing = size - len(array)
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


class _Failed:
    """An exception raised by the producer, handed to the consumer in order."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Prefetch(Generic[T]):
    """Iterates what `produce()` returns on its own thread, up to `depth` items ahead.

    Decoding (pyarrow, NumPy) releases the GIL, so the next batches are prepared while the
    model runs. The consumer waits in a Python queue, never inside a C++ call that a
    signal cannot interrupt, so SIGTERM and Ctrl-C end a run promptly even when the input
    stalls. The producer's exceptions are raised by `__next__` in order; `close` stops it.
    The iterable is created on the thread and referenced only there: readers blocked on a
    stalled pipe are then never torn down (and waited for) on the consumer's thread.

    With `hold_after_first`, the producer waits after the first item until `release()`,
    so that the consumer can time something on it without the producer competing for the
    CPU (`--batch_size auto`).
    """

    def __init__(
        self,
        produce: Callable[[], Iterable[T]],
        depth: int,
        name: str = "batchpredict-reader",
        hold_after_first: bool = False,
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._released = threading.Event()
        if not hold_after_first:
            self._released.set()
        self._finished = False
        self._thread = threading.Thread(
            target=self._produce, args=(produce,), name=name, daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._finished = True
            raise item.error
        return item  # type: ignore[return-value]

    def release(self) -> None:
        """Let a producer held after its first item go on."""
        self._released.set()

    def close(self) -> None:
        """Stop the producer at its next item (it may be blocked reading; it is a daemon)."""
        self._stopped.set()
        self._released.set()
        self._finished = True

    def _produce(self, produce: Callable[[], Iterable[T]]) -> None:
        try:
            for item in produce():
                if not self._offer(item):
                    return
                self._released.wait()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consumer's thread
            self._offer(_Failed(exc))
            return
        self._offer(_END)

    def _offer(self, item: object) -> bool:
        """Queue `item` unless the consumer has gone; False once it has."""
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False
