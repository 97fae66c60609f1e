"""Bad records with `--on_error skip`: CSV/TSV and JSON-lines readers report malformed rows
through `ReadOptions.on_bad_record`, leave them out and read on; without a callback the
first one raises DataError as before.

Good rows are written by the real libraries (pyarrow's CSV writer, `json.dumps`); broken
lines are plain text placed between them. The oracle for what must be yielded is the same
file without the broken lines, read without a callback.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpredict.errors import DataError
from batchpredict.formats import csv_io, json_io
from batchpredict.formats.base import BadRecord, ReadOptions
from batchpredict.formats.registry import reader_for

PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string())])


# -- helpers -------------------------------------------------------------------------------
def read(
    path: Path | str, chunk_size: int = 1000, fmt: str | None = None
) -> tuple[list[pa.RecordBatch], list[BadRecord]]:
    """All batches and all bad records, with a callback set (`--on_error skip`)."""
    bad: list[BadRecord] = []
    options = ReadOptions(chunk_size=chunk_size, on_bad_record=bad.append)
    batches = list(reader_for(str(path), fmt, options).iter_batches())
    return batches, bad


def read_strict(path: Path | str, chunk_size: int = 1000, fmt: str | None = None) -> pa.Table:
    """The table read without a callback (`--on_error fail`)."""
    options = ReadOptions(chunk_size=chunk_size)
    return pa.Table.from_batches(list(reader_for(str(path), fmt, options).iter_batches()))


def rows_table(ids: Sequence[int], texts: Sequence[str] | None = None) -> pa.Table:
    """Rows `id`, `x = id + 0.5` (never integral, so always read as double), `s`."""
    texts = texts if texts is not None else [f"s{i}" for i in ids]
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "x": [i + 0.5 for i in ids], "s": texts},
        schema=SCHEMA,
    )


def csv_bytes(table: pa.Table, delimiter: str = ",", header: bool = False) -> bytes:
    """`table` as CSV written by pyarrow."""
    sink = io.BytesIO()
    options = pacsv.WriteOptions(include_header=header, delimiter=delimiter)
    pacsv.write_csv(table, sink, write_options=options)
    return sink.getvalue()


def write_pieces(path: Path, pieces: Sequence[bytes | str]) -> None:
    """A file of byte pieces (written by a library) and text lines (broken rows)."""
    with path.open("wb") as handle:
        for piece in pieces:
            handle.write(piece if isinstance(piece, bytes) else piece.encode() + b"\n")


def csv_file(
    path: Path,
    segments: Sequence[pa.Table],
    broken: Sequence[Sequence[str]],
    delimiter: str = ",",
) -> tuple[list[BadRecord], Path]:
    """A CSV of `segments` (pyarrow-written) with `broken[i]` lines before segment i (and
    `broken[-1]` after the last); the bad records expected (reason left empty); and the
    same file without the broken lines."""
    assert len(broken) == len(segments) + 1
    header = csv_bytes(segments[0].slice(0, 0), delimiter, header=True)
    pieces: list[bytes | str] = [header]
    clean: list[bytes | str] = [header]
    expected: list[BadRecord] = []
    row = 0
    for index, lines in enumerate(broken):
        for line in lines:
            row += 1
            expected.append(BadRecord(row, "", line))
            pieces.append(line)
        if index < len(segments):
            data = csv_bytes(segments[index], delimiter)
            pieces.append(data)
            clean.append(data)
            row += segments[index].num_rows
    write_pieces(path, pieces)
    clean_path = path.with_name("clean-" + path.name)
    write_pieces(clean_path, clean)
    return expected, clean_path


def assert_reported(got: list[BadRecord], expected: list[BadRecord]) -> None:
    """The same rows and texts (cut at 1,000 characters), in order; reasons are checked by
    the callers."""
    assert [(bad.row, bad.text) for bad in got] == [(bad.row, bad.text[:1000]) for bad in expected]


def assert_same_table(batches: list[pa.RecordBatch], clean: pa.Table) -> None:
    """The batches hold the clean file's rows, in order, every one with its schema."""
    assert {batch.schema for batch in batches} <= {clean.schema}
    assert pa.Table.from_batches(batches, schema=clean.schema).equals(clean)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 256 bytes in both readers (1 MiB at least otherwise), so that small
    files span many blocks; the first block, which sets the types, is 256 bytes too."""
    for module in (csv_io, json_io):
        monkeypatch.setattr(module, "_SAMPLE_BYTES", 256)
        monkeypatch.setattr(module, "_MIN_BLOCK", 256)
    monkeypatch.setattr(csv_io, "_MAX_BLOCK", 256)


# -- CSV: wrong number of fields -----------------------------------------------------------
def test_csv_bad_rows_at_several_positions_across_blocks(tmp_path: Path) -> None:
    chunk = 1000
    # About 4.5 MiB: blocks are max(row bytes x chunk_size, 1 MiB), so 4 or 5 blocks.
    sizes = [1, 60_000, 70_000, 50_000, 1, 45_000]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    segments = [rows_table(range(s, s + n)) for s, n in zip(starts, sizes, strict=True)]
    broken = [["1,2"], ["3,4,5,6"], ["7"], ["8,9", "10,11,12,13"], ['"a,b",c,d,e'], [], ["x,y"]]
    path = tmp_path / "bad.csv"
    expected, clean_path = csv_file(path, segments, broken)
    sample = path.read_bytes()[: 1 << 20]
    assert path.stat().st_size > 3 * csv_io._block_size(sample, chunk)

    batches, bad = read(path, chunk)

    assert_reported(bad, expected)
    fields = [(3, 2), (3, 4), (3, 1), (3, 2), (3, 4), (3, 4), (3, 2)]
    assert [bad.reason for bad in bad] == [f"expected {e} fields, got {a}" for e, a in fields]
    clean = read_strict(clean_path, chunk)
    assert clean.schema == SCHEMA
    assert_same_table(batches, clean)
    assert all(batch.num_rows <= chunk for batch in batches)
    assert clean.num_rows + len(bad) == sum(sizes) + sum(map(len, broken))


def test_csv_without_callback_the_first_bad_row_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    csv_file(path, [rows_table(range(5)), rows_table(range(5, 9))], [[], ["1,2"], ["3,4,5,6"]])
    with pytest.raises(DataError, match=r"bad\.csv: row 6: expected 3 fields, got 2"):
        read_strict(path)


def test_csv_rows_are_numbered_as_rows_not_lines(tmp_path: Path) -> None:
    # Quoted values with line breaks before the bad rows: a row is not a line.
    texts = [f"line one {i}\nline two, with a comma\nline three" for i in range(40)]
    segments = [rows_table(range(40), texts), rows_table(range(40, 50))]
    path = tmp_path / "multiline.csv"
    expected, clean_path = csv_file(path, segments, [[], ['1,"a\nb"', "2,3,4,5"], ["6,7"]])

    batches, bad = read(path, chunk_size=7)

    assert [b.row for b in expected] == [41, 42, 53]
    assert_reported(bad, expected)
    assert_same_table(batches, read_strict(clean_path, chunk_size=7))


def test_csv_many_small_blocks(tmp_path: Path, small_blocks: None) -> None:
    segments = [rows_table(range(i * 20, i * 20 + 20)) for i in range(10)]
    broken: list[list[str]] = [["0"], *([f"{i},{i}"] for i in range(9)), ["1,2,3,4"]]
    path = tmp_path / "small.csv"
    expected, clean_path = csv_file(path, segments, broken)
    assert path.stat().st_size > 10 * 256

    batches, bad = read(path, chunk_size=3)

    assert_reported(bad, expected)
    assert_same_table(batches, read_strict(clean_path, chunk_size=3))


def test_tsv_bad_rows(tmp_path: Path) -> None:
    segments = [rows_table(range(30)), rows_table(range(30, 35))]
    path = tmp_path / "bad.tsv"
    broken = [["1\t2"], ["3\t4\t5\t6", "7,8,9"], ["10"]]
    expected, clean_path = csv_file(path, segments, broken, delimiter="\t")

    batches, bad = read(path, chunk_size=4)

    assert_reported(bad, expected)
    assert [b.row for b in bad] == [1, 32, 33, 39]
    assert bad[1].reason == "expected 3 fields, got 4"
    assert_same_table(batches, read_strict(clean_path, chunk_size=4))
    with pytest.raises(DataError, match="row 1: expected 3 fields, got 2"):
        read_strict(path)


def test_csv_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("a,b,c\n1,2,3\n\n4,5\n\n\n6,7,8\n9\n", encoding="utf-8")
    batches, bad = read(path)
    assert [(b.row, b.text) for b in bad] == [(2, "4,5"), (4, "9")]
    assert pa.Table.from_batches(batches).to_pylist() == [
        {"a": 1, "b": 2, "c": 3},
        {"a": 6, "b": 7, "c": 8},
    ]


# -- CSV: values that do not convert to the inferred type ---------------------------------
def test_csv_values_that_do_not_convert_are_reported(tmp_path: Path) -> None:
    # The types come from the first (1 MiB) block; the bad values are far beyond it.
    n = 200_000
    lines = [f"{i},{i + 0.5},s{i}" for i in range(n)]
    nulls = {150_004: '150004,"",s150004', 150_005: "150005,NA,s150005"}
    spaces = {150_006: "150006, 2.5 ,s150006"}
    oops = {
        150_000: "150000,oops,s150000",  # a float column
        150_003: "x150003,150003.5,s150003",  # an int column: a second pass
        160_000: '160000,"a ""quoted""\nvalue",s160000',
        170_000: "170000,?,s170000",
        170_001: "170001,?,s170001",  # a repeated token
        199_999: "199999,1.5.5,s199999",  # the last row
    }
    wrong_length = {150_001: "150001,1.5", 180_000: "180000,1.5,x,y"}
    for index, text in {**nulls, **spaces, **oops, **wrong_length}.items():
        lines[index] = text
    path = tmp_path / "drift.csv"
    path.write_text("id,x,s\n" + "\n".join(lines) + "\n", encoding="utf-8")
    clean_path = tmp_path / "clean.csv"
    keep = [text for i, text in enumerate(lines) if i not in oops and i not in wrong_length]
    clean_path.write_text("id,x,s\n" + "\n".join(keep) + "\n", encoding="utf-8")

    batches, bad = read(path, chunk_size=10_000)

    assert [(b.row, b.reason) for b in bad] == [
        (150_001, "column 'x': cannot read 'oops' as double"),
        (150_002, "expected 3 fields, got 2"),
        (150_004, "column 'id': cannot read 'x150003' as int64"),
        (160_001, "column 'x': cannot read 'a \"quoted\" value' as double"),
        (170_001, "column 'x': cannot read '?' as double"),
        (170_002, "column 'x': cannot read '?' as double"),
        (180_001, "expected 3 fields, got 4"),
        (200_000, "column 'x': cannot read '1.5.5' as double"),
    ]
    # Rows rebuilt from their fields (the raw text is gone once parsed).
    assert bad[0].text == "150000,oops,s150000"
    assert bad[3].text == '160000,"a ""quoted""\nvalue",s160000'
    assert bad[1].text == "150001,1.5"
    clean = read_strict(clean_path, chunk_size=10_000)
    assert clean.schema == SCHEMA
    assert_same_table(batches, clean)  # nulls and spaces read as in the first pass
    assert clean.num_rows + len(bad) == n


def test_csv_values_of_other_types(tmp_path: Path) -> None:
    # Every value is converted as in the typed pass (nulls, spaces, spellings) or reported;
    # the oracle: the file without the reported rows, read without a callback, and each
    # reported row alone failing so.
    first = [
        f"{i},{'true' if i % 2 else 'false'},2020-01-01 00:00:{i % 60:02d}" for i in range(60_000)
    ]
    later = [
        "1,True,2020-01-01T01:02:03",
        "2,yes,2020-01-01 00:00:00",  # not a boolean
        "3,,",
        "4,NA,2020-01-01 00:00:00Z",  # a zone offset where there was none
        "5,0,2020-01-01",
        "6, true,x",
    ]
    header = "n,b,t\n"
    path = tmp_path / "types.csv"
    path.write_text(header + "\n".join(first + later) + "\n", encoding="utf-8")

    batches, bad = read(path, chunk_size=5000)

    assert [b.row for b in bad] == [60_002, 60_004, 60_006]
    assert bad[0].reason == "column 'b': cannot read 'yes' as bool"
    assert bad[1].reason.startswith("column 't': cannot read as timestamp[s]:")
    kept = [line for i, line in enumerate(later) if 60_001 + i not in {b.row for b in bad}]
    path.write_text(header + "\n".join(first + kept) + "\n", encoding="utf-8")
    assert_same_table(batches, read_strict(path, chunk_size=5000))
    for record in bad:
        path.write_text(header + "\n".join([*first, record.text]) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match="row 60001"):
            read_strict(path, chunk_size=5000)


def test_csv_value_errors_without_callback_still_raise(tmp_path: Path) -> None:
    lines = [f"{i},{i + 0.5}" for i in range(150_000)] + ["1,oops"]
    path = tmp_path / "drift.csv"
    path.write_text("id,x\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 150001, column 'x': cannot read 'oops' as double"):
        read_strict(path, chunk_size=10_000)


def test_csv_value_error_in_stdin_cannot_be_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stdin cannot be read a second time, which skipping such a value needs.
    lines = [f"{i},{i + 0.5}" for i in range(150_000)] + ["1,oops", "2,2.5"]
    data = ("id,x\n" + "\n".join(lines) + "\n").encode()

    class FakeStdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    with pytest.raises(DataError, match=r"row 150001, column 'x'.*stdin"):
        read("-", chunk_size=10_000, fmt="csv")


# -- JSON lines ----------------------------------------------------------------------------
def jsonl_file(path: Path, lines: Sequence[str | None]) -> tuple[list[BadRecord], Path]:
    """A JSON-lines file of `lines`, where None stands for a good row written by
    `json.dumps` (ids in order) and a string is a broken line; the bad records expected
    (reason left empty) and the same file without the broken lines."""
    text: list[str] = []
    clean: list[str] = []
    expected: list[BadRecord] = []
    good = record = 0
    for line in lines:
        if line is None:
            row = json.dumps({"id": good, "x": good + 0.5, "s": f"s{good}"})
            text.append(row)
            clean.append(row)
            good += 1
            record += 1
        elif not line.strip():  # a blank line is not a record
            text.append(line)
            clean.append(line)
        else:
            text.append(line)
            record += 1
            expected.append(BadRecord(record, "", line))
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    clean_path = path.with_name("clean-" + path.name)
    clean_path.write_text("\n".join(clean) + "\n", encoding="utf-8")
    return expected, clean_path


DEEP = '{"id": ' + "[" * 1500 + "]" * 1500 + "}"


def test_jsonl_bad_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    good = [None] * 60_000
    lines: list[str | None] = [
        '{"id": 1,',  # the first line
        None,
        "",
        "   ",
        *good[:100],
        "[1, 2]",  # not an object
        '"text"',
        None,
        '{"id": 1} trailing',
        DEEP,
        *good,  # the schema is fixed after the first (1 MiB) block
        '{"id": "text", "x": 1.5, "s": "a"}',  # a type conflict in a later block
        '{"id": 2, "x": 1.5, "s": "a", "new": 1}',  # a field not in the schema
        '{"id": 3, "x": 1.5, "s": {"nested": 1}}',
        None,
        "{'id': 4}",
        *good[:10],
        '{"id": 5, "x": 1.5',  # the last line, cut short
    ]
    path = tmp_path / "bad.jsonl"
    expected, clean_path = jsonl_file(path, lines)
    assert path.stat().st_size > 2 << 20

    batches, bad = read(path, chunk_size=500)

    assert_reported(bad, expected)
    assert [b.row for b in bad][:5] == [1, 103, 104, 106, 107]
    reasons = [b.reason for b in bad]
    assert "nested too deeply" in reasons[4]
    assert "column 'id'" in reasons[5]
    assert "columns and types come from the first" in reasons[5]
    assert reasons[6].startswith("new fields ['new']")
    clean = read_strict(clean_path, chunk_size=500)
    assert clean.schema == SCHEMA
    assert_same_table(batches, clean)
    assert clean.num_rows + len(bad) == sum(1 for line in lines if line is None or line.strip())


def test_jsonl_without_callback_the_first_bad_line_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    jsonl_file(path, [None, "", None, "[1]", None, "{"])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 4: "):
        read_strict(path)


def test_jsonl_nan_literals_are_read_not_reported(tmp_path: Path) -> None:
    # Arrow's JSON parser accepts NaN and Infinity: they are values, in both modes (a NaN
    # feature is the pipeline's concern), not malformed lines.
    path = tmp_path / "nan.jsonl"
    path.write_text('{"x": 1.5}\n{"x": NaN}\n{"x": -Infinity}\n{"x": nan}\n', encoding="utf-8")
    batches, bad = read(path)
    assert [b.row for b in bad] == [4]
    values = pa.Table.from_batches(batches).column("x").to_pylist()
    assert values[0] == 1.5 and values[1] != values[1] and values[2] == float("-inf")


def test_jsonl_conflict_in_the_first_block_the_first_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "conflict.jsonl"
    lines = ['{"a": 1}', '{"a": "x"}', '{"a": null}', '{"a": 2.5}', '{"a": [1]}', '{"b": "y"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batches, bad = read(path)
    assert [(b.row, b.text) for b in bad] == [(2, lines[1]), (5, lines[4])]
    table = pa.Table.from_batches(batches)
    assert table.schema == pa.schema([("a", pa.float64()), ("b", pa.string())])
    assert table.to_pylist() == [
        {"a": 1.0, "b": None},
        {"a": None, "b": None},
        {"a": 2.5, "b": None},
        {"a": None, "b": "y"},
    ]


def test_jsonl_every_line_of_the_first_block_bad(tmp_path: Path, small_blocks: None) -> None:
    # No schema until a block has a good line: the next block infers it.
    lines: list[str | None] = ["{"] * 200 + [None] * 30 + ["]"] + [None] * 30
    path = tmp_path / "bad.jsonl"
    expected, clean_path = jsonl_file(path, lines)
    batches, bad = read(path, chunk_size=4)
    assert_reported(bad, expected)
    assert_same_table(batches, read_strict(clean_path, chunk_size=4))


def test_jsonl_long_bad_line_text_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    long_line = '{"s": "' + "x" * 5000
    path.write_text('{"s": "a"}\n' + long_line + "\n", encoding="utf-8")
    _, bad = read(path)
    assert [b.row for b in bad] == [2]
    assert bad[0].text == long_line[:1000]


def test_json_array_bad_element_still_raises(tmp_path: Path) -> None:
    # One JSON array: after a malformed element the next cannot be found reliably.
    path = tmp_path / "array.json"
    path.write_text('[{"a": 1},\n{"a": },\n{"a": 3}]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read(path)


@pytest.mark.parametrize("name", ["bad.csv", "bad.jsonl"])
def test_errors_of_the_callback_pass_unchanged(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("a,b\n1,2\n3\n4,5\n", encoding="utf-8")
    else:
        path.write_text('{"a": 1}\n{\n{"a": 2}\n', encoding="utf-8")

    def stop(record: BadRecord) -> None:
        raise OSError(f"rejects file full at row {record.row}")

    reader = reader_for(str(path), None, ReadOptions(on_bad_record=stop))
    with pytest.raises(OSError, match="rejects file full at row 2"):
        list(reader.iter_batches())


@pytest.mark.parametrize("name", ["bad.csv", "bad.jsonl"])
def test_invalid_utf8_is_not_skipped(tmp_path: Path, name: str) -> None:
    # Not a bad record but the wrong file (an encoding): it fails even with a callback.
    path = tmp_path / name
    if name.endswith(".csv"):
        body = "".join(f"{i},text {i}\n" for i in range(150_000)).encode()
        path.write_bytes(b"n,s\n" + body + b"1,caf\xe9\n2,ok\n")
    else:
        body = "".join(f'{{"n": {i}}}\n' for i in range(60_000)).encode()
        path.write_bytes(body + b'{"n": "caf\xe9"}\n{"n": 2}\n')
    with pytest.raises(DataError, match="UTF-8"):
        read(path, chunk_size=1000)


@pytest.mark.parametrize("name", ["bad.csv", "bad.jsonl"])
def test_bad_records_are_reported_before_later_rows(
    tmp_path: Path, small_blocks: None, name: str
) -> None:
    # A rejects file written from the callback is in step with the output.
    lines: list[str | None] = [None] * 100
    for position in (0, 7, 8, 50, 99):
        lines[position] = "{" if name.endswith(".jsonl") else "1,2"
    lines.append("]" if name.endswith(".jsonl") else "3")
    path = tmp_path / name
    if name.endswith(".jsonl"):
        jsonl_file(path, lines)
    else:
        ids = iter(range(len(lines)))
        pieces: list[bytes | str] = [b"id,x,s\n"]
        for line in lines:
            pieces.append(line if line is not None else csv_bytes(rows_table([next(ids)])))
        write_pieces(path, pieces)
    events: list[tuple[str, int]] = []

    def on_bad(record: BadRecord) -> None:
        events.append(("bad", record.row))

    options = ReadOptions(chunk_size=4, on_bad_record=on_bad)
    seen = 0
    for batch in reader_for(str(path), None, options).iter_batches():
        events.append(("rows", seen + batch.num_rows))  # rows read so far
        seen += batch.num_rows
    bad_rows = [row for kind, row in events if kind == "bad"]
    assert bad_rows == [1, 8, 9, 51, 100, 101]
    for index, (kind, row) in enumerate(events):
        if kind == "bad":
            # No batch before the report holds a row after it.
            before = [n for k, n in events[:index] if k == "rows"]
            assert not before or before[-1] + sum(1 for b in bad_rows if b < row) < row


# -- properties ----------------------------------------------------------------------------
_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]) | st.sampled_from(',"\n\t'),
    max_size=12,
).map(lambda s: "s" + s)  # a prefix keeps values strings and out of the null spellings

#: (kind, text) of a broken CSV row: a wrong number of fields, or (after the first
#: block only) a value that does not convert.
_csv_broken = st.one_of(
    st.tuples(st.just("fields"), st.sampled_from(["1", "1,2", "1,2,3,4", "a,b,c,d,e", '"x,y"'])),
    st.tuples(st.just("value"), st.sampled_from(["7,oops,s", "x,1.5,s", "8,?,s", '9,"1,5",s'])),
)


@pytest.mark.parametrize("delimiter", [",", "\t"])
@PROPERTY
@given(
    texts=st.lists(_text, min_size=1, max_size=60),
    broken=st.dictionaries(st.integers(0, 60), _csv_broken, max_size=12),
)
def test_csv_property(
    tmp_path: Path,
    small_blocks: None,
    delimiter: str,
    texts: list[str],
    broken: dict[int, tuple[str, str]],
) -> None:
    table = rows_table(range(len(texts)), texts)
    header = csv_bytes(table.slice(0, 0), delimiter, header=True)
    pieces: list[bytes | str] = [header]
    clean: list[bytes | str] = [header]
    expected: list[tuple[int, str]] = []
    offset = len(header)
    for row in range(len(texts) + 1):
        kind, line = broken.get(row, ("", ""))
        if kind == "value" and offset < 256:
            kind = ""  # within the first block, which sets the types
        if kind:
            line = line.replace(",", delimiter) if '"' not in line else line
            pieces.append(line)
            offset += len(line) + 1
            expected.append((len(pieces) - 1, line))
        if row < len(texts):
            data = csv_bytes(table.slice(row, 1), delimiter)
            pieces.append(data)
            clean.append(data)
            offset += len(data)
    path = tmp_path / "prop.csv"
    write_pieces(path, pieces)
    clean_path = tmp_path / "clean.csv"
    write_pieces(clean_path, clean)
    fmt = "csv" if delimiter == "," else "tsv"

    batches, bad = read(path, chunk_size=3, fmt=fmt)

    assert [b.row for b in bad] == [row for row, _ in expected]
    # Rows with a value that does not convert are rebuilt from their fields: the same here.
    assert [b.text for b in bad] == [line for _, line in expected]
    clean_table = read_strict(clean_path, chunk_size=3, fmt=fmt)
    assert clean_table.schema == SCHEMA
    assert_same_table(batches, clean_table)
    assert clean_table.num_rows + len(bad) == len(pieces) - 1


_json_broken = st.sampled_from(
    ["{", '{"id": 1', "[1, 2]", "3", '"s"', "true", "{'id': 1}", '{"id": 1} x', "}", DEEP]
)


@PROPERTY
@given(
    count=st.integers(1, 80),
    broken=st.dictionaries(st.integers(0, 80), st.one_of(_json_broken, st.just("")), max_size=20),
)
def test_jsonl_property(
    tmp_path: Path, small_blocks: None, count: int, broken: dict[int, str]
) -> None:
    lines: list[str | None] = []
    for row in range(count + 1):
        if row in broken:
            line = broken[row]
            if line.startswith("[") and all(old is not None and not old for old in lines):
                line = "3"  # a file that starts with "[" is one JSON array
            lines.append(line)
        if row < count:
            lines.append(None)
    path = tmp_path / "prop.jsonl"
    expected, clean_path = jsonl_file(path, lines)

    batches, bad = read(path, chunk_size=3)

    assert_reported(bad, expected)
    clean = read_strict(clean_path, chunk_size=3)
    assert_same_table(batches, clean)
    records = sum(1 for line in lines if line is None or line.strip())
    assert clean.num_rows + len(bad) == records
