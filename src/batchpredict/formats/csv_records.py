"""CSV records bounded in length before Arrow's reader sees them (`--max_record_bytes`).

Arrow's CSV readers hold a record in one block: a record longer than the block fails the
whole file ("straddling object"), and no block size is safe against a file made of one
endless record. `RecordLimit` sits between the input and the reader. It finds where each
record ends (a line end outside quotes, quotes opening only at the start of a field, as
Arrow parses them), passes records up to the limit through unchanged, and replaces each
longer one by a short marker row that has one field too many. Arrow then reports that row
through its invalid-row handler with its row number, like any malformed row, so it is
rejected (`--on_error skip`) or names the row in the error, and reading goes on after it.
A record being checked is held back until its end is seen, so memory stays within the limit.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchpredict.errors import DataError, error_text
from batchpredict.formats.base import ForwardStream

#: The first field of a marker row, followed by the record's byte offset and length.
MARKER = "\x00batchpredict: record longer than --max_record_bytes\x00"
_MARKER_FIELDS = re.compile(re.escape(MARKER) + r"(\d+):(\d+)")
#: Bytes kept of each long record's start, for the error and the rejects file.
KEPT_START_BYTES = 200

_QUOTE, _LF, _CR = 0x22, 0x0A, 0x0D
_READ_BYTES = 1 << 20
#: Reads up to this long have every line end found; longer ones only their first and last.
_EVERY_END_BELOW = 4096


@dataclass(frozen=True)
class LongRecord:
    """A record longer than the limit, replaced by a marker row."""

    #: Byte offset of the record's first byte in the (decompressed) input.
    offset: int
    #: The record's length in bytes, its line end included.
    length: int
    #: Its first bytes, as text.
    start: str


def long_record(marker_text: str, records: dict[int, LongRecord]) -> LongRecord | None:
    """The long record a marker row (its text as Arrow reports it) stands for, else None."""
    match = _MARKER_FIELDS.match(marker_text)
    if match is None:
        return None
    offset, length = int(match.group(1)), int(match.group(2))
    return records.get(offset, LongRecord(offset, length, ""))


@dataclass
class _QuoteState:
    """Where the scan is between two reads: inside a quoted field or not, and the last
    byte seen (a quote opens a quoted field only right after a delimiter or a line end)."""

    in_quotes: bool = False
    last_byte: int = _LF


class RecordLimit(ForwardStream):
    """A binary input with every CSV record longer than `limit` bytes replaced by a marker
    row (see the module docstring); `records` gains each replaced record by offset."""

    def __init__(
        self,
        source: Any,
        path: str,
        limit: int,
        delimiter: str,
        records: dict[int, LongRecord],
        on_record_length: Callable[[int], None],
    ) -> None:
        super().__init__(source)
        self._path = path
        self._limit = limit
        self._delimiter = delimiter.encode()
        self._records = records
        #: Called with the length of the longest record passed so far, when it grows.
        self._on_record_length = on_record_length
        self._longest = 0
        self._state = _QuoteState()
        self._ready = bytearray()  # whole records checked, not yet read
        self._record = bytearray()  # the start of the record being checked
        self._record_offset = 0  # its offset in the input
        #: Its length, once it passed the limit (only its start is then kept).
        self._dropped: int | None = None
        self._fields: int | None = None  # the header's, once seen
        self._at_end = False

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all remaining for a negative size); b"" at the end."""
        while not self._at_end and (size < 0 or len(self._ready) < size):
            data = self._source.read(max(size, _READ_BYTES))
            # A quote at the end of a read may be the first of an escaped pair, and a
            # carriage return the first of a CRLF line end: read on.
            while data.endswith((b'"', b"\r")) and (more := self._source.read(1)):
                data += more
            if data:
                self._scan(bytes(data))
            else:
                self._at_end = True
                if self._record or self._dropped is not None:
                    self._end_record(b"")
        take = len(self._ready) if size < 0 else min(size, len(self._ready))
        data = bytes(self._ready[:take])
        del self._ready[:take]
        self._position += len(data)
        return data

    def _scan(self, data: bytes) -> None:
        """Take one read: pass the records it ends, hold (or drop) the one it leaves open."""
        every_end = len(data) > self._limit
        ends = _record_ends(data, self._state, self._delimiter, every_end)
        start = 0
        if len(data) <= self._limit and len(ends) >= 2:
            # Records wholly inside a read shorter than the limit are within it: only the
            # first (which began before) and the last (which runs on) need measuring. (The
            # longest is known only as far as `ends` goes: at most the span of them.)
            self._end_record(data[: ends[0]])
            self._pass(data[ends[0] : ends[-1]], int(np.diff(ends).max()))
            self._record_offset += int(ends[-1] - ends[0])
            start = int(ends[-1])
        else:
            for end in ends.tolist():
                self._end_record(data[start:end])
                start = end
        self._add(data[start:])

    def _add(self, part: bytes) -> None:
        """The start (or more) of a record whose end is not yet seen."""
        if self._dropped is None and len(self._record) + len(part) > self._limit:
            self._dropped = len(self._record)  # from here on, only its start is kept
        if self._dropped is not None:
            self._dropped += len(part)
            self._record += part[: max(KEPT_START_BYTES - len(self._record), 0)]
            del self._record[KEPT_START_BYTES:]
        else:
            self._record += part

    def _end_record(self, tail: bytes) -> None:
        """The record held so far, ended by `tail`: passed, or replaced by a marker row."""
        self._add(tail)
        if self._dropped is not None:
            length = self._dropped
            self._replace(length)
        else:
            length = len(self._record)
            self._pass(bytes(self._record), length)
        self._record_offset += length
        self._record.clear()
        self._dropped = None

    def _pass(self, records: bytes, longest: int) -> None:
        """Whole records within the limit, the longest `longest` bytes, read unchanged."""
        if self._fields is None and records.strip(b"\r\n"):
            self._fields = _field_count(records, self._delimiter)
        self._ready += records
        if longest > self._longest:
            self._longest = longest
            self._on_record_length(longest)

    def _replace(self, length: int) -> None:
        """Put a marker row in place of the record held: one field more than the header."""
        offset = self._record_offset
        if self._fields is None:
            raise DataError(
                f"{self._path}: the header row is longer than --max_record_bytes "
                f"({self._limit} bytes)"
            )
        start = bytes(self._record).decode("utf-8", "replace")
        self._records[offset] = LongRecord(offset, length, start)
        marker = f"{MARKER}{offset}:{length}".encode() + self._delimiter * self._fields
        self._ready += marker + b"\n"


def straddles(failure: BaseException) -> bool:
    """Whether Arrow's streaming CSV reader failed on a row longer than its block."""
    return isinstance(failure, pa.ArrowInvalid) and "straddling" in error_text(failure)


def _field_count(records: bytes, delimiter: bytes) -> int:
    """The number of fields of the first of `records` (the header), read as Arrow would."""
    text = records.lstrip(b"\r\n").decode("utf-8", "replace").removeprefix("\ufeff")
    row = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter.decode()), [])
    return max(len(row), 1)


def _record_ends(data: bytes, state: _QuoteState, delimiter: bytes, every_end: bool) -> np.ndarray:
    """The offsets just past each line end of `data` that ends a record (outside quotes),
    given the quote state before it; `state` is moved past `data`. Without quotes and
    unless `every_end`, only the first and the last (see `_line_ends`).

    A quote opens a quoted field only at the start of a field, where Arrow's parser opens
    one; inside, two quotes are one and a single one closes it. Without quotes this is a
    search for line ends; with them, the quotes are counted (a record end has an even
    number before it) unless one sits where it cannot open a field, which is read byte
    by byte.
    """
    if not state.in_quotes and b'"' not in data:
        state.last_byte = data[-1]
        return _line_ends(data, every_end)
    view = np.frombuffer(data, dtype=np.uint8)
    breaks = _breaks(view)
    quotes = np.flatnonzero(view == _QUOTE)
    opening = quotes[(np.arange(len(quotes)) + state.in_quotes) % 2 == 0]
    before = np.where(opening > 0, view[np.maximum(opening - 1, 0)], state.last_byte)
    allowed = np.array([_LF, _CR, _QUOTE, delimiter[0]], dtype=np.uint8)
    # A quote after a quote is the second of an escaped pair only within `data` (a read
    # never ends in a quote but at the end of the input): else the exact walk decides.
    carried_quote = len(opening) > 0 and opening[0] == 0 and state.last_byte == _QUOTE
    if carried_quote or not np.isin(before, allowed).all():
        return _record_ends_exactly(data, state, delimiter[0])
    parity = (np.searchsorted(quotes, breaks) + state.in_quotes) % 2
    state.in_quotes = bool((len(quotes) + state.in_quotes) % 2)
    state.last_byte = data[-1]
    ends: np.ndarray = breaks[parity == 0] + 1
    return ends


def _line_ends(data: bytes, every_end: bool) -> np.ndarray:
    """The offsets just past each line end of `data` (no quotes in it): all of them when
    `every_end` or `data` is short, else the first and the last (memchr speed), which is
    all `_scan` needs when `data` is no longer than the limit."""
    if every_end or len(data) <= _EVERY_END_BELOW:
        view = np.frombuffer(data, dtype=np.uint8)
        return _breaks(view) + 1
    found = [at for at in (data.find(b"\n"), data.find(b"\r")) if at >= 0]
    if not found:
        return np.array([], dtype=np.int64)
    first = min(found)
    if data[first : first + 2] == b"\r\n":
        first += 1
    last = max(data.rfind(b"\n"), data.rfind(b"\r"))
    return np.array(sorted({first + 1, last + 1}), dtype=np.int64)


def _breaks(view: np.ndarray) -> np.ndarray:
    """The offsets of the line ends in `view`: LF, CR alone, and the LF of CRLF."""
    lone_cr = (view == _CR) & np.append(view[1:] != _LF, True)
    return np.flatnonzero((view == _LF) | lone_cr)


def _record_ends_exactly(data: bytes, state: _QuoteState, delimiter: int) -> np.ndarray:
    """`_record_ends` for quotes inside unquoted fields (read as text): the quotes are
    walked one by one (not the bytes) to find the quoted spans, whose line ends end no
    record."""
    view = np.frombuffer(data, dtype=np.uint8)
    starters = (_LF, _CR, delimiter)
    in_quotes, opened, escaped = state.in_quotes, 0, -1
    starts: list[int] = []
    stops: list[int] = []
    for at in np.flatnonzero(view == _QUOTE).tolist():
        if at == escaped:
            continue
        if in_quotes:
            if data[at + 1 : at + 2] == b'"':
                escaped = at + 1  # two quotes inside a quoted field are one
                continue
            starts.append(opened)
            stops.append(at)
            in_quotes = False
        elif (data[at - 1] if at else state.last_byte) in starters:
            in_quotes, opened = True, at
    if in_quotes:
        starts.append(opened)
        stops.append(len(data))
    breaks = _breaks(view)
    span = np.searchsorted(np.array(starts, dtype=np.int64), breaks, side="right") - 1
    # (A trailing 0 stands for "no span" at index -1, which `span >= 0` leaves out.)
    inside = (span >= 0) & (breaks < np.array([*stops, 0], dtype=np.int64)[span])
    state.in_quotes, state.last_byte = in_quotes, data[-1]
    ends: np.ndarray = breaks[~inside] + 1
    return ends
