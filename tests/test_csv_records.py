"""`csv_records.RecordLimit`: CSV records longer than the limit replaced by marker rows,
every other byte passed unchanged, wherever the reads cut the input."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from batchpredict.formats.csv_records import MARKER, LongRecord, RecordLimit, long_record

_PLAIN = st.text(alphabet="ab1 .-", max_size=12)
_QUOTED = st.text(alphabet='ab,\n\r"x ', max_size=30).map(
    lambda v: '"' + v.replace('"', '""') + '"'
)


class ShortReads:
    """A binary source that returns at most `step` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        return self._data.read(self._step if size < 0 else min(size, self._step))

    def close(self) -> None:
        pass


def bounded(data: bytes, limit: int, step: int) -> tuple[bytes, dict[int, LongRecord]]:
    records: dict[int, LongRecord] = {}
    stream = RecordLimit(ShortReads(data, step), "in.csv", limit, ",", records, lambda _n: None)
    parts = []
    while part := stream.read(7):
        parts.append(part)
    return b"".join(parts), records


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[list[list[str]], str]:
    width = draw(st.integers(1, 4))
    rows = [[f"c{i}" for i in range(width)]]
    for _ in range(draw(st.integers(0, 12))):
        rows.append([draw(st.one_of(_PLAIN, _QUOTED)) for _ in range(width)])
    return rows, draw(st.sampled_from(["\n", "\r\n"]))


def as_text(rows: list[list[str]], newline: str) -> list[str]:
    return [",".join(row) + newline for row in rows]


@settings(max_examples=300, deadline=None)
@given(csv_files(), st.integers(1, 40), st.integers(1, 90))
def test_records_over_the_limit_are_replaced_and_the_rest_kept(
    file: tuple[list[list[str]], str], step: int, limit: int
) -> None:
    rows, newline = file
    lines = as_text(rows, newline)
    data = "".join(lines).encode()
    if len(lines[0].encode()) > limit:
        return  # a header over the limit is an error (tested below)
    out, records = bounded(data, limit, step)
    expected, offset = [], 0
    for number, line in enumerate(lines):
        size = len(line.encode())
        if number and size > limit:
            assert records[offset] == LongRecord(offset, size, line[:200])
            expected.append(f"{MARKER}{offset}:{size}" + "," * len(rows[0]) + "\n")
        else:
            expected.append(line)
        offset += size
    assert out.decode() == "".join(expected)
    assert len(records) == sum(1 for n, line in enumerate(lines) if n and len(line) > limit)


@settings(max_examples=100, deadline=None)
@given(csv_files(), st.integers(1, 40))
def test_within_the_limit_the_input_is_unchanged(
    file: tuple[list[list[str]], str], step: int
) -> None:
    rows, newline = file
    data = "".join(as_text(rows, newline)).encode()
    out, records = bounded(data, 1 << 20, step)
    assert out == data and not records


def test_a_marker_row_has_one_field_more_than_the_header() -> None:
    data = b'a,b,"c\nc"\n1,2,3\n' + b"4,5," + b"6" * 100 + b"\n7,8,9"
    out, records = bounded(data, 50, 5)
    rows = list(csv.reader(io.StringIO(out.decode(), newline="")))
    assert [len(row) for row in rows] == [3, 3, 4, 3]
    found = long_record(rows[2][0] + "," * 3, records)
    assert found == LongRecord(16, 105, "4,5," + "6" * 100 + "\n")


def test_a_quote_inside_an_unquoted_field_is_text() -> None:
    """Arrow opens quotes only at the start of a field: 5'11" is no quote, so the rows
    after it are not one long quoted record."""
    data = b"id,height\n1,5'11\"\n" + b"2,6'0\n" * 50
    out, records = bounded(data, 30, 64)
    assert out == data and not records


def _ends_byte_by_byte(data: bytes, in_quotes: bool, last: int) -> list[int]:
    """The definition the reader follows, one byte at a time (Arrow's parser states)."""
    ends, index = [], 0
    while index < len(data):
        byte = data[index]
        if in_quotes:
            if byte == 0x22:
                if data[index + 1 : index + 2] == b'"':
                    index += 1
                else:
                    in_quotes = False
        elif byte == 0x22 and last in (0x0A, 0x0D, 0x2C):
            in_quotes = True
        elif byte == 0x0A or (byte == 0x0D and data[index + 1 : index + 2] != b"\n"):
            ends.append(index + 1)
        last = byte
        index += 1
    return ends


@settings(max_examples=500, deadline=None)
@given(
    st.binary(min_size=1, max_size=60).map(lambda raw: bytes(b'a,"\n\r'[b % 5] for b in raw)),
    st.booleans(),
    st.sampled_from([0x0A, 0x2C, 0x61, 0x22]),
)
def test_record_ends_with_stray_quotes_follow_the_parser(
    data: bytes, in_quotes: bool, last: int
) -> None:
    from batchpredict.formats.csv_records import _QuoteState, _record_ends

    state = _QuoteState(in_quotes, last)
    found = _record_ends(data, state, b",", every_end=True).tolist()
    assert found == _ends_byte_by_byte(data, in_quotes, last)
