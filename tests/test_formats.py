"""The format layer: readers against files written by the real libraries, writers read back
by them, compression, chunking, errors and the writer lifecycle."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpredict.errors import (
    DataError,
    InputMissingError,
    ReadWriteError,
    UsageError,
)
from batchpredict.formats import (
    READERS,
    WRITERS,
    ReadOptions,
    default_extension,
    describe_formats,
    format_for_path,
    reader_for,
    writer_for,
)
from batchpredict.formats.avro import arrow_schema, avro_schema

FORMATS = ["csv", "tsv", "jsonl", "avro", "parquet"]
TEXT_FORMATS = ["csv", "tsv", "jsonl"]
ROWS = 23
STRINGS = ["plain", "a,b", 'say "hi"', "tab\there", "é ü 漢", "line\nbreak", "x"]


def sample_table(with_list: bool = True) -> pa.Table:
    """Columns of every kind the pipeline meets; values exact in binary and short in decimal."""
    columns: dict[str, pa.Array] = {
        "f32": pa.array([i * 0.25 - 2 for i in range(ROWS)], pa.float32()),
        "f64": pa.array([i * 1.5 + 0.125 for i in range(ROWS)], pa.float64()),
        "i64": pa.array([i * 1_000_000_007 - 5 for i in range(ROWS)], pa.int64()),
        "s": pa.array([STRINGS[i % len(STRINGS)] + str(i) for i in range(ROWS)]),
        "nullable": pa.array([None if i % 3 == 0 else i / 4 for i in range(ROWS)]),
    }
    if with_list:
        columns["lst"] = pa.array(
            [[i * 0.5, -i * 0.5, 1.0][: i % 4] for i in range(ROWS)], pa.list_(pa.float32())
        )
    return pa.table(columns)


def table_for(fmt: str) -> pa.Table:
    """The sample table without list columns for the formats that cannot hold them."""
    return sample_table(with_list=fmt not in ("csv", "tsv"))


# -- writing with the real libraries -----------------------------------------------------
AVRO_SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Sample",
    "fields": [
        {"name": "f32", "type": "float"},
        {"name": "f64", "type": "double"},
        {"name": "i64", "type": "long"},
        {"name": "s", "type": "string"},
        {"name": "nullable", "type": ["null", "double"]},
        {"name": "lst", "type": {"type": "array", "items": "float"}},
    ],
}


def write_with_library(table: pa.Table, path: Path, fmt: str, codec: str = "deflate") -> None:
    """Write `table` with the format's own library, not with our writers."""
    if fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "tsv":
        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(delimiter="\t"))
    elif fmt == "jsonl":
        frame = table.to_pandas()
        frame.to_json(path, orient="records", lines=True, double_precision=15)
    elif fmt == "avro":
        with path.open("wb") as out:
            fastavro.writer(out, AVRO_SAMPLE_SCHEMA, table.to_pylist(), codec=codec)
    elif fmt == "parquet":
        pq.write_table(table, path, row_group_size=10)
    else:
        raise AssertionError(fmt)


def read_with_library(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of a file we wrote, read by the format's own library."""
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        options = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        return list(pacsv.read_csv(path, parse_options=options).to_pylist())
    if fmt == "jsonl":
        opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]
    if fmt == "avro":
        with path.open("rb") as data:
            return list(fastavro.reader(data))
    if fmt == "parquet":
        return list(pq.read_table(path).to_pylist())
    raise AssertionError(fmt)


def read_all(path: Path | str, chunk_size: int = 7, fmt: str | None = None) -> list[pa.RecordBatch]:
    """All batches our reader yields."""
    return list(reader_for(str(path), fmt, ReadOptions(chunk_size=chunk_size)).iter_batches())


def assert_rows_equal(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Equal rows, with float32 rounding and NaN allowed for."""
    assert len(actual) == len(expected)
    for got_row, want_row in zip(actual, expected, strict=True):
        assert set(got_row) == set(want_row)
        for key, want in want_row.items():
            assert_value_equal(got_row[key], want, key)


def assert_value_equal(got: Any, want: Any, key: str) -> None:
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert got == pytest.approx(want, rel=1e-6, nan_ok=True), key
    elif isinstance(want, list):
        assert isinstance(got, list), key
        assert len(got) == len(want), key
        for g, w in zip(got, want, strict=True):
            assert_value_equal(g, w, key)
    else:
        assert got == want, key


def assert_one_line(exc: pytest.ExceptionInfo[Exception], path: Path | str) -> str:
    """The error message: one line that names the file."""
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# -- reading files written by the real libraries -----------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_library_written_file_in_chunks(tmp_path: Path, fmt: str) -> None:
    table = table_for(fmt)
    path = tmp_path / f"data{default_extension(fmt)}"
    write_with_library(table, path, fmt)

    batches = read_all(path, chunk_size=7)

    assert len(batches) >= 3
    assert all(0 < batch.num_rows <= 7 for batch in batches)
    assert sum(batch.num_rows for batch in batches) == ROWS
    assert len({batch.schema for batch in batches}) == 1
    combined = pa.Table.from_batches(batches)
    assert_rows_equal(combined.to_pylist(), table.to_pylist())


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_through_our_writer(tmp_path: Path, fmt: str) -> None:
    table = table_for(fmt)
    path = tmp_path / f"out{default_extension(fmt)}"
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    for batch in table.to_batches(max_chunksize=5):
        writer.write(batch)
    writer.commit()

    assert writer.rows_written == ROWS
    assert_rows_equal(read_with_library(path, fmt), table.to_pylist())
    assert_rows_equal(pa.Table.from_batches(read_all(path)).to_pylist(), table.to_pylist())


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
def test_compressed_text_inputs(tmp_path: Path, fmt: str, suffix: str) -> None:
    table = table_for(fmt)
    plain = tmp_path / f"data{default_extension(fmt)}"
    write_with_library(table, plain, fmt)
    compressed = tmp_path / f"data{default_extension(fmt)}{suffix}"
    data = plain.read_bytes()
    compress: dict[str, Callable[[bytes], bytes]] = {
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".zst": zstandard.ZstdCompressor().compress,
    }
    compressed.write_bytes(compress[suffix](data))

    assert format_for_path(str(compressed)) == fmt
    combined = pa.Table.from_batches(read_all(compressed))
    assert_rows_equal(combined.to_pylist(), table.to_pylist())


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
def test_compressed_text_outputs(tmp_path: Path, fmt: str, suffix: str) -> None:
    table = table_for(fmt)
    path = tmp_path / f"out{default_extension(fmt)}{suffix}"
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.commit()

    decompress: dict[str, Callable[[bytes], bytes]] = {
        ".gz": gzip.decompress,
        ".bz2": bz2.decompress,
        ".zst": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
    }
    plain = tmp_path / f"plain{default_extension(fmt)}"
    plain.write_bytes(decompress[suffix](path.read_bytes()))
    assert_rows_equal(read_with_library(plain, fmt), table.to_pylist())


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
def test_avro_codecs(tmp_path: Path, codec: str) -> None:
    table = sample_table()
    path = tmp_path / "data.avro"
    write_with_library(table, path, "avro", codec=codec)
    assert_rows_equal(pa.Table.from_batches(read_all(path)).to_pylist(), table.to_pylist())


def test_avro_types_map_to_arrow(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Rich",
        "namespace": "test",
        "fields": [
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["R", "G"]}},
            {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "int"}}},
            {"name": "tags", "type": {"type": "map", "values": "long"}},
            {
                "name": "inner",
                "type": {
                    "type": "record",
                    "name": "Inner",
                    "fields": [{"name": "x", "type": "int"}],
                },
            },
            {"name": "again", "type": ["null", "Inner"]},
            {"name": "raw", "type": {"type": "fixed", "name": "Four", "size": 4}},
            {"name": "maybe", "type": ["string", "null"]},
        ],
    }
    import datetime as dt

    records = [
        {
            "day": dt.date(2024, 1, 2),
            "at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "colour": "G",
            "grid": [[1, 2], [], [3]],
            "tags": {"a": 1},
            "inner": {"x": 7},
            "again": None,
            "raw": b"abcd",
            "maybe": None,
        },
        {
            "day": dt.date(1970, 1, 1),
            "at": dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc),
            "colour": "R",
            "grid": [],
            "tags": {},
            "inner": {"x": -1},
            "again": {"x": 3},
            "raw": b"wxyz",
            "maybe": "yes",
        },
    ]
    path = tmp_path / "rich.avro"
    with path.open("wb") as out:
        fastavro.writer(out, schema, records)

    table = pa.Table.from_batches(read_all(path))

    assert table.schema == arrow_schema(schema)
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("at").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("grid").type == pa.list_(
        pa.field("item", pa.list_(pa.field("item", pa.int32(), nullable=False)), nullable=False)
    )
    assert table.schema.field("raw").type == pa.binary(4)
    assert table.schema.field("maybe").nullable
    assert not table.schema.field("colour").nullable
    rows = table.to_pylist(maps_as_pydicts="strict")
    assert rows[0]["colour"] == "G"
    assert rows[0]["grid"] == [[1, 2], [], [3]]
    assert rows[0]["tags"] == {"a": 1}
    assert rows[1]["again"] == {"x": 3}
    assert rows[0]["at"] == records[0]["at"]


def test_avro_schema_round_trip_of_arrow_types() -> None:
    schema = pa.schema(
        [
            pa.field("f", pa.float32(), nullable=False),
            pa.field("d", pa.float64()),
            pa.field("l", pa.list_(pa.float32())),
            pa.field("n", pa.list_(pa.list_(pa.int64()))),
            pa.field("s", pa.struct([pa.field("x", pa.int32(), nullable=False)])),
        ]
    )
    avro = avro_schema(schema)
    fields = {f["name"]: f["type"] for f in avro["fields"]}
    assert fields["f"] == "float"
    assert fields["d"] == ["null", "double"]
    assert fields["l"] == ["null", {"type": "array", "items": ["null", "float"]}]
    assert arrow_schema(fastavro.parse_schema(avro)) == schema


def test_json_array_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    table = sample_table()
    path = tmp_path / "array.json"
    path.write_text(json.dumps(table.to_pylist(), indent=2), encoding="utf-8")

    batches = read_all(path, chunk_size=5)

    assert [batch.num_rows for batch in batches] == [5, 5, 5, 5, 3]
    assert len({batch.schema for batch in batches}) == 1
    assert_rows_equal(pa.Table.from_batches(batches).to_pylist(), table.to_pylist())


def test_json_array_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2},\n  {"a": oops}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path)
    assert "line 4" in assert_one_line(exc, path)

    path.write_text('[{"a": 1}, 5]', encoding="utf-8")
    with pytest.raises(DataError, match="not a JSON object"):
        read_all(path)

    path.write_text('[{"a": NaN}]', encoding="utf-8")
    with pytest.raises(DataError, match="NaN"):
        read_all(path)


def test_json_lines_utf8_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\n   \n{"a": null}')
    table = pa.Table.from_batches(read_all(path))
    assert table.to_pylist() == [{"a": 1}, {"a": 2}, {"a": None}]


# -- errors --------------------------------------------------------------------------------
def test_csv_wrong_field_count_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n9,10,11\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path)
    message = assert_one_line(exc, path)
    assert "row 3" in message
    assert "expected 3 fields, got 2" in message


def test_csv_bad_row_far_into_the_file(tmp_path: Path) -> None:
    # Beyond the first (1 MiB) block, so the row number must carry across blocks.
    path = tmp_path / "long.csv"
    body = "".join(f"{i},{i * 2}\n" for i in range(150_000))
    path.write_text(f"a,b\n{body}1,2,3\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path, chunk_size=1000)
    assert "row 150001" in assert_one_line(exc, path)


def test_csv_type_drift_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "drift.csv"
    body = "".join(f"{i},x\n" for i in range(150_000))
    path.write_text(f"n,s\n{body}oops,y\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path, chunk_size=10_000)
    message = assert_one_line(exc, path)
    assert "row 150001" in message
    assert "'n'" in message
    assert "int64" in message


def test_csv_column_null_in_first_block_becomes_string(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    body = "".join(f"{i},\n" for i in range(150_000))
    path.write_text(f"n,late\n{body}1,1.5\n", encoding="utf-8")
    batches = read_all(path, chunk_size=50_000)
    assert {batch.schema.field("late").type for batch in batches} == {pa.string()}
    assert batches[-1].column("late")[-1].as_py() == "1.5"


def test_csv_invalid_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b\n1,café\n".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        read_all(path)
    assert "UTF-8" in assert_one_line(exc, path)


def test_csv_bom_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfx,y\n1,NA\n,2\n")
    table = pa.Table.from_batches(read_all(path))
    assert table.to_pylist() == [{"x": 1, "y": None}, {"x": None, "y": 2}]


def test_csv_duplicate_header_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("a,b,a\n1,2,3\n", encoding="utf-8")
    with pytest.raises(DataError, match="duplicate"):
        read_all(path)


def test_malformed_json_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path)
    assert "line 4" in assert_one_line(exc, path)


def test_json_error_line_carries_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    # Beyond the first (1 MiB) block, so the line number must carry across blocks.
    body = "".join(f'{{"a": {i}, "b": "{"x" * 20}"}}\n' for i in range(40_000))
    path.write_text(body + '{"a": "text"}\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path, chunk_size=500)
    message = assert_one_line(exc, path)
    assert "line 40001" in message
    assert "'a'" in message


def test_json_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "\xff"}\n')
    with pytest.raises(DataError) as exc:
        read_all(path)
    assert "line 2" in assert_one_line(exc, path)


def test_json_lines_leading_null_does_not_crash(tmp_path: Path) -> None:
    # A first document `null` crashes pyarrow's JSON reader; ours must not pass it on.
    path = tmp_path / "null.jsonl"
    path.write_text('null\n{"a": 1}\n', encoding="utf-8")
    table = pa.Table.from_batches(read_all(path))
    assert table.column("a").to_pylist() == [None, 1]


def test_non_avro_file_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.avro"
    path.write_text("station,temp\nx,1\n", encoding="utf-8")
    with pytest.raises(ReadWriteError) as exc:
        read_all(path)
    assert "not an Avro container file" in assert_one_line(exc, path)


def test_truncated_avro_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.avro"
    write_with_library(sample_table(), path, "avro", codec="null")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ReadWriteError) as exc:
        read_all(path)
    assert_one_line(exc, path)


def test_truncated_parquet_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    write_with_library(sample_table(), path, "parquet")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ReadWriteError) as exc:
        read_all(path)
    assert_one_line(exc, path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_and_missing_inputs(tmp_path: Path, fmt: str) -> None:
    empty = tmp_path / f"empty{default_extension(fmt)}"
    empty.write_bytes(b"")
    with pytest.raises(InputMissingError) as exc:
        read_all(empty)
    assert_one_line(exc, empty)
    with pytest.raises(InputMissingError):
        read_all(tmp_path / f"missing{default_extension(fmt)}")


def test_parquet_total_rows_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data.parquet"
    write_with_library(sample_table(), path, "parquet")
    assert reader_for(str(path), None, ReadOptions()).total_rows() == ROWS

    class FakeStdin:
        buffer = io.BytesIO(path.read_bytes())

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    reader = reader_for("-", "parquet", ReadOptions(chunk_size=10))
    assert reader.total_rows() == ROWS
    assert sum(batch.num_rows for batch in reader.iter_batches()) == ROWS


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "avro"])
def test_streamable_formats_read_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    table = table_for(fmt)
    path = tmp_path / f"data{default_extension(fmt)}"
    write_with_library(table, path, fmt)

    class FakeStdin:
        buffer = io.BytesIO(path.read_bytes())

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    combined = pa.Table.from_batches(read_all("-", fmt=fmt))
    assert_rows_equal(combined.to_pylist(), table.to_pylist())


# -- writers ---------------------------------------------------------------------------------
def test_json_writer_writes_nan_and_infinity_as_null(tmp_path: Path) -> None:
    table = pa.table(
        {
            "x": pa.array([0.1, math.nan, math.inf, None], pa.float32()),
            "v": pa.array([[0.1, math.nan], [], None, [-math.inf]], pa.list_(pa.float64())),
        }
    )
    path = tmp_path / "out.jsonl"
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.slice(1).to_batches()[0])  # a slice: offsets must be handled
    writer.commit()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == ['{"x":null,"v":[]}', '{"x":null,"v":null}', '{"x":null,"v":[null]}']

    path.unlink()
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.commit()
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"x": 0.1, "v": [0.1, None]}  # float32 0.1 printed as 0.1


def test_json_writer_fast_path_writes_what_the_per_row_path_writes(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, 2**62, -3], pa.int64()),
            "u": pa.array([0, 255, None], pa.uint8()),
            "p": pa.array([0.1, 1 / 3, math.nan], pa.float32()),
            "d": pa.array([1e20, -0.0, 2.0]),
            "s": pa.array(['quote " back \\ nl \n', "\u0001 ü \u2028", None]),
            "ok": pa.array([True, None, False]),
            "l": pa.array([[0.5, math.inf], [], None], pa.list_(pa.float32())),
            "st": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": "z"}]),
        }
    )
    texts = []
    for fast in (True, False):
        path = tmp_path / f"out-{fast}.jsonl"
        writer = writer_for(str(path), None)
        writer.open(table.schema)
        assert writer._polars is True  # type: ignore[attr-defined]
        writer._polars = fast  # type: ignore[attr-defined]
        writer.write(table.to_batches()[0])
        writer.commit()
        texts.append(path.read_text(encoding="utf-8"))
    # split("\n"), not splitlines(): U+2028 inside a string is no line end in JSON lines.
    fast_rows = [json.loads(line) for line in texts[0].rstrip("\n").split("\n")]
    assert fast_rows == [json.loads(line) for line in texts[1].rstrip("\n").split("\n")]
    assert fast_rows[0]["p"] == 0.1 and fast_rows[2]["p"] is None
    assert fast_rows[0]["s"] == 'quote " back \\ nl \n'


def test_avro_writer_fast_path_writes_what_fastavro_writes(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, None, 2**40, -5], pa.int64()),
            "n": pa.array([1, 2, None, -(2**31)], pa.int32()),
            "p": pa.array([0.1, None, math.inf, -0.0], pa.float32()),
            "d": pa.array([1e300, 2.5, None, math.nan]),
            "s": pa.array(["a", "ü ☃", None, ""]),
            "ok": pa.array([True, None, False, True]),
        }
    )
    schemas, rows = [], []
    for fast in (True, False):
        path = tmp_path / f"out-{fast}.avro"
        writer = writer_for(str(path), None)
        writer.open(table.schema)
        assert writer._polars is True  # type: ignore[attr-defined]
        writer._polars = fast  # type: ignore[attr-defined]
        for batch in table.to_batches(max_chunksize=3):  # two blocks
            writer.write(batch)
        writer.commit()
        with path.open("rb") as handle:
            reader = fastavro.reader(handle)
            schemas.append(reader.writer_schema)
            rows.append(list(reader))
    assert schemas[0] == schemas[1]
    assert rows[0][3]["d"] != rows[0][3]["d"]  # NaN survives
    for row in rows:
        row[3]["d"] = None
    assert rows[0] == rows[1]
    assert [row["id"] for row in rows[0]] == [1, None, 2**40, -5]


def test_csv_writer_refuses_list_columns_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    writer = writer_for(str(path), None)
    with pytest.raises(DataError, match="lst"):
        writer.open(sample_table().schema)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_abort_keeps_previous_output(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out{default_extension(fmt)}"
    path.write_bytes(b"previous contents")
    table = table_for(fmt)
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.abort()
    assert path.read_bytes() == b"previous contents"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("fmt", FORMATS)
def test_abort_without_previous_output_leaves_no_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out{default_extension(fmt)}"
    writer = writer_for(str(path), None)
    writer.open(table_for(fmt).schema)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_commit_leaves_only_the_output(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "sub" / f"out{default_extension(fmt)}"
    path.parent.mkdir()
    path.write_bytes(b"old")
    table = table_for(fmt)
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.commit()
    assert list(path.parent.iterdir()) == [path]
    assert path.read_bytes() != b"old"


def test_avro_writer_refuses_invalid_names(tmp_path: Path) -> None:
    path = tmp_path / "out.avro"
    writer = writer_for(str(path), None)
    with pytest.raises(DataError, match="sepal length"):
        writer.open(pa.schema([("sepal length", pa.float64())]))
    assert list(tmp_path.iterdir()) == []


# -- registry ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.csv", "csv"),
        ("A.CSV.GZ", "csv"),
        ("x.tsv.bz2", "tsv"),
        ("x.tab", "tsv"),
        ("x.ndjson.zst", "jsonl"),
        ("x.json", "jsonl"),
        ("x.pq", "parquet"),
        ("dir.v2/x.avro", "avro"),
        ("x.txt", None),
        ("x.gz", None),
        ("-", None),
    ],
)
def test_format_for_path(path: str, expected: str | None) -> None:
    assert format_for_path(path) == expected


def test_registry_lookups_and_errors() -> None:
    # Delta tables are folders, tested in test_delta.py.
    assert set(READERS) == set(WRITERS) == {*FORMATS, "delta"}
    assert type(reader_for("x.data", "JSON", ReadOptions())).name == "jsonl"
    with pytest.raises(UsageError, match="--input_format") as exc:
        reader_for("x.data", None, ReadOptions())
    assert ".csv" in str(exc.value)
    with pytest.raises(UsageError, match="--input_format"):
        reader_for("-", None, ReadOptions())
    with pytest.raises(UsageError, match="csv, delta, jsonl") as exc:
        reader_for("x.csv", "excel", ReadOptions())
    with pytest.raises(UsageError, match=r"\.gz"):
        reader_for("x.parquet.gz", None, ReadOptions())
    with pytest.raises(UsageError, match=r"\.zst"):
        writer_for("x.avro.zst", None)
    with pytest.raises(UsageError, match="--output_format"):
        writer_for("x.out", None)
    assert default_extension("parquet") == ".parquet"
    assert default_extension("tsv") == ".tsv"
    assert ("csv", (".csv",), True, True) in describe_formats()
    assert [row[0] for row in describe_formats()] == sorted({*FORMATS, "delta"})


# -- properties ------------------------------------------------------------------------------
#: tmp_path is shared by a test's examples; each example overwrites its own file.
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_rows = st.lists(
    st.fixed_dictionaries(
        {
            "x": st.floats(allow_nan=False, allow_infinity=False, width=64),
            "n": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "t": st.text(max_size=20),
            "maybe": st.one_of(st.none(), st.integers(-1000, 1000)),
        }
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "avro"])
@PROPERTY
@given(rows=_rows)
def test_round_trip_property(tmp_path: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema(
        [("x", pa.float64()), ("n", pa.int64()), ("t", pa.string()), ("maybe", pa.int64())]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    path = tmp_path / f"prop{default_extension(fmt)}"
    writer = writer_for(str(path), None)
    writer.open(schema)
    for batch in table.to_batches(max_chunksize=9):
        writer.write(batch)
    writer.commit()

    got = pa.Table.from_batches(read_all(path, chunk_size=6)).to_pylist()
    if all(row["maybe"] is None for row in rows) and fmt == "jsonl":
        # JSON carries no type for a column that is null throughout.
        for row in got:
            assert row.pop("maybe") is None
        rows = [{k: v for k, v in row.items() if k != "maybe"} for row in rows]
    assert got == rows


_csv_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]) | st.sampled_from(',"\n\t'),
    min_size=1,
    max_size=12,
).map(lambda s: "t:" + s)  # a prefix keeps values strings and out of the null spellings


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@PROPERTY
@given(texts=st.lists(_csv_text, min_size=1, max_size=30), data=st.data())
def test_csv_round_trip_property(tmp_path: Path, fmt: str, texts: list[str], data: Any) -> None:
    numbers = data.draw(
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False),
            min_size=len(texts),
            max_size=len(texts),
        )
    )
    table = pa.table({"t": texts, "x": pa.array(numbers, pa.float64())})
    path = tmp_path / f"prop{default_extension(fmt)}"
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.commit()
    got = pa.Table.from_batches(read_all(path, chunk_size=4))
    assert got.column("t").to_pylist() == texts
    assert got.column("x").cast(pa.float64()).to_pylist() == numbers


def test_pandas_reads_our_jsonl(tmp_path: Path) -> None:
    table = sample_table()
    path = tmp_path / "out.jsonl"
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.commit()
    frame = pd.read_json(path, lines=True)
    assert list(frame.columns) == table.column_names
    assert frame["i64"].tolist() == table.column("i64").to_pylist()


def test_csv_quoted_newlines_across_blocks(tmp_path: Path) -> None:
    # Many multi-line values, so that some straddle the reader's block boundaries.
    path = tmp_path / "multiline.csv"
    values = [f"first {i}\nsecond, with comma\nthird" for i in range(60_000)]
    pacsv.write_csv(pa.table({"i": range(60_000), "text": values}), path)
    batches = read_all(path, chunk_size=20_000)
    table = pa.Table.from_batches(batches)
    assert table.column("i").to_pylist() == list(range(60_000))
    assert table.column("text").to_pylist() == values


def test_json_lines_new_field_after_first_block(tmp_path: Path) -> None:
    path = tmp_path / "sparse.jsonl"
    # Beyond the first (1 MiB) block, so the schema is already fixed.
    body = "".join(f'{{"a": {i}, "pad": "{"p" * 30}"}}\n' for i in range(40_000))
    path.write_text(body + '{"a": 1, "late": 2}\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_all(path, chunk_size=500)
    message = assert_one_line(exc, path)
    assert "line 40001" in message
    assert "late" in message


def test_csv_header_only_gives_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("a,b\n", encoding="utf-8")
    assert read_all(path) == []


def test_avro_writer_round_trips_nested_and_temporal_types(tmp_path: Path) -> None:
    import datetime as dt

    table = pa.table(
        {
            "when": pa.array(
                [dt.datetime(2024, 5, 6, 7, 8, 9, 123000)] * 2, pa.timestamp("ms", "UTC")
            ),
            "day": pa.array([dt.date(2024, 5, 6), None]),
            "point": pa.array([{"x": 1.5, "y": None}, None]),
            "grid": pa.array([[[1, 2], [3]], []], pa.list_(pa.list_(pa.int64()))),
            "flag": pa.array([True, None]),
        }
    )
    path = tmp_path / "rich.avro"
    writer = writer_for(str(path), None)
    writer.open(table.schema)
    writer.write(table.to_batches()[0])
    writer.commit()
    assert read_with_library(path, "avro") == table.to_pylist()
    assert pa.Table.from_batches(read_all(path)).to_pylist() == table.to_pylist()


@pytest.mark.parametrize("fmt", FORMATS)
@settings(PROPERTY, max_examples=60)
@given(
    edits=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=0, max_size=3)), max_size=4),
    keep=st.floats(0.05, 1),
)
def test_damaged_files_fail_with_our_errors(
    tmp_path: Path, fmt: str, edits: list[tuple[float, bytes]], keep: float
) -> None:
    path = tmp_path / f"damaged{default_extension(fmt)}"
    write_with_library(table_for(fmt), path, fmt)
    data = bytearray(path.read_bytes())
    for where, replacement in edits:
        at = int(where * (len(data) - 1))
        data[at : at + len(replacement)] = replacement
    path.write_bytes(bytes(data[: max(1, int(len(data) * keep))]))
    try:
        for batch in read_all(path):
            batch.validate(full=True)
    except (DataError, ReadWriteError, InputMissingError) as exc:
        assert "\n" not in str(exc)
        assert str(path) in str(exc)


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut CSV input into ranges of 4 KiB, so that small files cross many ranges."""
    from batchpredict.formats import csv_io

    monkeypatch.setattr(csv_io, "_RANGE_BYTES", 4096)
    monkeypatch.setattr(csv_io, "_RANGE_BLOCK", 1024)
    monkeypatch.setattr(csv_io, "_MAX_RANGE", 16384)


def _range_csv(path: Path, rows: int, line: Callable[[int], str]) -> Path:
    path.write_text("id,x,note\n" + "".join(line(i) for i in range(1, rows + 1)), "utf-8")
    return path


@pytest.mark.usefixtures("small_ranges")
@pytest.mark.parametrize(
    "line",
    [
        lambda i: f"{i},{i / 3},plain\n",
        # Quoted values with line ends (after the unquoted start the path was chosen on).
        lambda i: f'{i},{i / 3},"two\nlines, ""quoted"""\n' if i > 300 else f"{i},{i / 3},p\n",
        lambda i: f"{i},{i / 3},p\r\n",
    ],
    ids=["plain", "quoted-newlines-later", "crlf"],
)
def test_csv_ranges_read_every_row_in_order(tmp_path: Path, line: Callable[[int], str]) -> None:
    path = _range_csv(tmp_path / "r.csv", 2000, line)
    got = pa.Table.from_batches(read_all(path, chunk_size=100))
    want = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert got.num_rows == 2000
    assert got.column("id").to_pylist() == list(range(1, 2001))
    assert got.column("note").to_pylist() == want.column("note").to_pylist()


@pytest.mark.usefixtures("small_ranges")
@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("120000,oops,p\n", "row 120000, column 'x': cannot read 'oops' as double"),
        ("120000,1.5\n", "row 120000: expected 3 fields, got 2"),
    ],
)
def test_csv_ranges_name_the_row_of_a_bad_value_deep_in_the_file(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    # 2 MB: past the first MiB that column types are inferred from.
    path = _range_csv(
        tmp_path / "r.csv", 150_000, lambda i: bad_line if i == 120_000 else f"{i},0.5,p\n"
    )
    with pytest.raises(DataError, match=message):
        read_all(path, chunk_size=10_000)


@pytest.mark.usefixtures("small_ranges")
def test_csv_stray_quote_falls_back_to_the_streaming_reader(tmp_path: Path) -> None:
    # A quote inside an unquoted field is literal to Arrow but defeats quote counting:
    # no record end is found, and the streaming reader reads on from there.
    path = _range_csv(
        tmp_path / "r.csv", 3000, lambda i: f'{i},0.5,5"\n' if i == 10 else f"{i},0.5,p\n"
    )
    got = pa.Table.from_batches(read_all(path, chunk_size=100))
    assert got.column("id").to_pylist() == list(range(1, 3001))
    assert got.column("note").to_pylist()[9] == '5"'
