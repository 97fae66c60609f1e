"""Finding the bad lines of a block of JSON lines that Arrow could not parse whole.

Arrow's row numbers count documents within a block, and a line may hold two documents, so
the bad lines are found by parsing parts of the block again: bisection for the first one
(`first_bad_line_error`, when bad lines are errors), or `BadLineSearch` for all of them
(`--on_error skip`), which then parses the block without them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from batchpredict.errors import DataError
from batchpredict.formats.base import BadRecord
from batchpredict.formats.json_values import (
    BLANK,
    ROW_SUFFIX,
    TOO_DEEP,
    LineParser,
    arrow_message,
    first_failure,
    line_text,
    schema_line,
)


def line_message(
    failure: BaseException, text: bytes, schema: pa.Schema | None, schema_lines: int
) -> str:
    """What is wrong with the line `text`, from Arrow's error `failure`."""
    message = arrow_message(failure)
    if schema is not None:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            pass  # a syntax error: Arrow's message says it all
        else:  # valid JSON that does not fit the schema
            if message == "unexpected field" and isinstance(value, dict):
                message = f"new fields {sorted(set(value) - set(schema.names))}"
            message += f" (columns and types come from the first {schema_lines} lines)"
    return message


def first_bad_line_error(
    path: str,
    lines: list[bytes],
    line: int,
    parse: LineParser,
    schema: pa.Schema | None,
    schema_lines: int,
) -> DataError:
    """The DataError for the first of `lines` (the first on `line`) that fails."""

    # Arrow's row numbers count documents within a block; bisect for the line.
    def fails(count: int) -> bool:
        try:
            parse(b"\n".join(lines[:count]) + b"\n")
        except pa.ArrowException:
            return True
        return False

    bad = first_failure(len(lines), fails)
    try:
        parse(b"\n".join(lines[:bad]) + b"\n")
    except pa.ArrowException as exc:
        message = line_message(exc, lines[bad - 1], schema, schema_lines)
        error = DataError(f"{path}: line {line + bad - 1}: {message}")
        error.__cause__ = exc
        return error
    raise AssertionError("no line of the block fails")  # pragma: no cover


def skip_bad_lines(
    lines: list[bytes],
    deep: list[int],
    record: int,
    parse: LineParser,
    schema: pa.Schema | None,
    schema_lines: int,
) -> tuple[pa.Table, int, list[BadRecord]]:
    """A block of `lines` that failed, with `on_bad_record`: every bad line found (`deep`
    ones are known), the block parsed without them, and the number of its records; the
    bad lines as bad records numbered after `record` records."""
    search = BadLineSearch(lines, deep, parse, schema, schema_lines)
    kept = search.good_lines()
    table, rows = search.parse_good(kept)
    return table, rows + len(search.reasons), search.bad_records(record)


class BadLineSearch:
    """The search for the bad lines of one block (the reasons, by line index).

    The block is parsed in windows of lines after the last bad one, which grow while
    they parse; a window that fails is bisected for its first bad line. With a fixed
    schema (`schema`, taken from the first `schema_lines` lines), lines are independent.
    While the schema is inferred (`schema` None), a line is bad if it fails after the
    good lines before it: each window is parsed after one line that stands for their
    inferred schema, and the block without the bad lines is checked as a whole at the end
    (and bisected again in the rare case that still fails).
    """

    def __init__(
        self,
        lines: list[bytes],
        deep: list[int],
        parse: LineParser,
        schema: pa.Schema | None,
        schema_lines: int,
    ) -> None:
        self._lines = lines
        self._parse = parse
        self._schema = schema
        self._schema_lines = schema_lines
        self.reasons: dict[int, str] = dict.fromkeys(deep, TOO_DEEP)

    def good_lines(self) -> list[int]:
        """The indexes of the lines that parse in windows (the bad ones in `reasons`)."""
        # Blank lines are no records, never bad: left out, a window's rows are its lines.
        candidates = [
            i for i, text in enumerate(self._lines) if text.strip(BLANK) and i not in self.reasons
        ]
        kept: list[int] = []
        context = b""
        low, width = 0, 1
        while low < len(candidates):
            window = candidates[low : low + width]
            found, failure = self._probe(context, window)
            if failure is None:
                kept += window
                low, width = low + len(window), width * 2
            else:
                position, failure, found = self._first_bad(context, window, failure)
                self._mark_bad(window[position], failure)
                kept += window[:position]
                low, width = low + position + 1, max(width // 2, 1)
            if self._schema is None and found is not None:
                # Exactly the good lines so far, if no single line stands for them.
                context = schema_line(found) or self._joined(kept).rstrip(b"\n")
                context += b"\n"
        return kept

    def parse_good(self, kept: list[int]) -> tuple[pa.Table, int]:
        """Arrow's parse of the `kept` lines; those that conflict with good lines that the
        windows' context missed are left out (and counted bad) until it succeeds."""
        while True:
            try:
                return self._parse(self._joined(kept))
            except pa.ArrowException as exc:
                position, failure, _ = self._first_bad(b"", kept, exc)
                self._mark_bad(kept.pop(position), failure)

    def bad_records(self, record: int) -> list[BadRecord]:
        """The bad lines, in order, numbered among the records after `record` records."""
        records = list(itertools.accumulate(bool(text.strip(BLANK)) for text in self._lines))
        return [
            BadRecord(record + records[index], reason, line_text(self._lines[index]))
            for index, reason in sorted(self.reasons.items())
        ]

    def _mark_bad(self, index: int, failure: BaseException) -> None:
        text = self._lines[index]
        self.reasons[index] = line_message(failure, text, self._schema, self._schema_lines)

    def _joined(self, indexes: Sequence[int]) -> bytes:
        return b"".join(self._lines[i] + b"\n" for i in indexes)

    def _probe(self, context: bytes, indexes: Sequence[int]) -> tuple[pa.Schema | None, Any]:
        """(schema, None) if the lines parse after `context`, else (None, the error)."""
        try:
            table, _ = self._parse(context + self._joined(indexes), threads=False)
        except pa.ArrowException as exc:
            return None, exc
        return table.schema, None

    def _first_bad(
        self, context: bytes, window: list[int], failure: Any
    ) -> tuple[int, Any, pa.Schema | None]:
        """For lines `window` that fail with `failure` after `context`: the position of
        the first bad line, its error, and the schema of the lines before it."""
        results: dict[int, tuple[pa.Schema | None, Any]] = {
            0: (None, None),
            len(window): (None, failure),
        }

        def fails(count: int) -> bool:
            if count not in results:
                results[count] = self._probe(context, window[:count])
            return results[count][1] is not None

        # Arrow's row, where it gives one, is a guess (a line may hold two documents)
        # that two parses confirm; the row after the `{}` and context rows.
        row = ROW_SUFFIX.search(str(failure).rstrip())
        guess = int(row.group(1)) - (2 if context else 1) if row else -1
        if 0 <= guess < len(window) and fails(guess + 1) and not fails(guess):
            count = guess + 1
        else:
            count = first_failure(len(window), fails)
        fails(count - 1)
        return count - 1, results[count][1] or failure, results[count - 1][0]
