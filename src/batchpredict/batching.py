"""Regroup streamed rows into chunks and fixed-size batches; no TensorFlow here.

Every batch handed to the model has exactly `batch_size` rows so that one traced function
serves the whole run; the last batch is padded by repeating its last row (a real value of
the right dtype, unlike zeros for string inputs) and the padding is dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa


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
