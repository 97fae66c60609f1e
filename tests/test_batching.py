"""Fixed-size batching: exact sizes, padding dropped, rows never lost or reordered."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpredict.batching import Prefetch, batch_count, fixed_batches, pad_rows, rechunk


def _batches(sizes: list[int]) -> list[pa.RecordBatch]:
    start = 0
    out = []
    for size in sizes:
        out.append(pa.record_batch({"x": pa.array(range(start, start + size), pa.int64())}))
        start += size
    return out


@given(
    st.lists(st.integers(min_value=0, max_value=50), max_size=12),
    st.integers(min_value=1, max_value=40),
)
def test_rechunk_gives_exact_chunks_in_order(sizes: list[int], size: int) -> None:
    chunks = list(rechunk(_batches(sizes), size))
    total = sum(sizes)
    assert [c.num_rows for c in chunks[:-1]] == [size] * (len(chunks) - 1)
    if chunks:
        assert 0 < chunks[-1].num_rows <= size
    values = [v for c in chunks for v in c.column("x").to_pylist()]
    assert values == list(range(total))


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=1, max_value=64))
def test_fixed_batches_pad_only_the_last(rows: int, batch_size: int) -> None:
    arrays = {
        "a": np.arange(rows, dtype=np.float32).reshape(rows, 1),
        "s": np.array([str(i) for i in range(rows)], dtype=object),
    }
    batches = list(fixed_batches(arrays, rows, batch_size))
    assert len(batches) == batch_count(rows, batch_size)
    assert all(len(b["a"]) == batch_size and len(b["s"]) == batch_size for b in batches)
    joined = np.concatenate([b["a"] for b in batches])[:rows, 0]
    np.testing.assert_array_equal(joined, np.arange(rows))
    padding = np.concatenate([b["s"] for b in batches])[rows:]
    assert all(p == str(rows - 1) for p in padding)  # padding repeats a real value


def test_full_batches_are_views_not_copies() -> None:
    data = np.zeros((8, 2), dtype=np.float32)
    first = next(fixed_batches({"x": data}, 8, 4))
    assert np.shares_memory(first["x"], data)


def test_pad_rows_keeps_trailing_dimensions() -> None:
    padded = pad_rows(np.ones((3, 5, 2)), 7)
    assert padded.shape == (7, 5, 2)


def test_prefetch_yields_in_order_and_raises_the_producers_error_in_place() -> None:
    def produce() -> Iterator[int]:
        yield from range(5)
        raise ValueError("bad row 6")

    feed = Prefetch(produce, depth=2)
    seen = []
    with pytest.raises(ValueError, match="bad row 6"):
        for item in feed:
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert list(feed) == []


def test_prefetch_close_stops_the_producer_without_draining_it() -> None:
    produced: list[int] = []
    made_on: list[str] = []

    def produce() -> Iterator[int]:
        made_on.append(threading.current_thread().name)
        for item in range(1_000_000):
            produced.append(item)
            yield item

    feed = Prefetch(produce, depth=2, name="test-prefetch")
    assert next(feed) == 0
    feed.close()
    time.sleep(0.5)
    assert len(produced) < 10, "the producer kept going after close"
    assert made_on == ["test-prefetch"], "the iterable is created on the prefetch thread"
