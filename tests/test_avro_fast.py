"""The Avro reader's two decoders: polars (runs of blocks, for the schemas it decodes as the
specification says) and fastavro (the rest): same values, types, batches and errors, and
the limits every block is read within."""

from __future__ import annotations

import datetime as dt
import io
import math
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import fastavro._write
import fastavro.read
import polars
import pyarrow as pa
import pytest
import zstandard

from batchpredict.errors import BatchPredictError, DataError, ReadWriteError
from batchpredict.formats import ReadOptions
from batchpredict.formats.avro import AvroReader, arrow_schema, files
from batchpredict.formats.avro.container import encode_long as _encode_long
from batchpredict.formats.avro.decode import FastavroDecoder

CODECS = ["null", "deflate", "snappy", "zstandard"]
#: Every codec the reader decompresses (fastavro writes all of these).
ALL_CODECS = [*CODECS, "bzip2", "xz"]
UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def zstandard_for_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastavro writes and reads zstandard only with backports.zstd; these tests' own
    fastavro calls use the zstandard package (the reader decompresses blocks itself)."""

    def write_block(fo: Any, data: bytes, level: int | None) -> None:
        packed = zstandard.ZstdCompressor().compress(data)
        fo.write(_encode_long(len(packed)))
        fo.write(packed)

    def read_block(fo: Any) -> io.BytesIO:
        packed = fo.read(fastavro.schemaless_reader(fo, "long", None))
        return io.BytesIO(zstandard.ZstdDecompressor().stream_reader(packed).read())

    monkeypatch.setitem(fastavro._write.BLOCK_WRITERS, "zstandard", write_block)
    monkeypatch.setitem(fastavro.read.BLOCK_READERS, "zstandard", read_block)


# -- schemas and records -----------------------------------------------------------------
def record(fields: list[tuple[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": "Row", "fields": [{"name": n, "type": t} for n, t in fields]}


NUMERIC = record([("id", "long")] + [(f"f{i}", "float") for i in range(30)])


def numeric_rows(count: int) -> list[dict[str, Any]]:
    rnd = random.Random(count)
    return [{"id": i, **{f"f{j}": rnd.uniform(-1e6, 1e6) for j in range(30)}} for i in range(count)]


RICH = record(
    [
        ("id", "long"),
        ("small", "int"),
        ("f", "float"),
        ("d", "double"),
        ("flag", "boolean"),
        ("text", "string"),
        ("raw", "bytes"),
        ("maybe_text", ["null", "string"]),
        ("maybe_double", ["double", "null"]),
        ("maybe_flag", ["null", "boolean"]),
        ("vector", {"type": "array", "items": "float"}),
        ("grid", {"type": "array", "items": {"type": "array", "items": ["null", "long"]}}),
        ("maybe_words", ["null", {"type": "array", "items": "string"}]),
        ("at", {"type": "long", "logicalType": "timestamp-millis"}),
        ("at_us", ["null", {"type": "long", "logicalType": "timestamp-micros"}]),
        ("local", {"type": "long", "logicalType": "local-timestamp-millis"}),
        ("day", {"type": "int", "logicalType": "date"}),
    ]
)


def rich_rows(count: int) -> list[dict[str, Any]]:
    rnd = random.Random(7)
    rows = []
    for i in range(count):
        rows.append(
            {
                "id": rnd.randint(-(2**63), 2**63 - 1) if i % 5 == 0 else i,
                "small": rnd.randint(-(2**31), 2**31 - 1),
                "f": rnd.uniform(-1, 1) if i % 11 else float("nan"),
                "d": rnd.uniform(-1e300, 1e300) if i % 13 else float("inf"),
                "flag": i % 3 == 0,
                "text": "é漢" * (i % 4) + str(i) * (i % 90),
                "raw": bytes(range(i % 200)),
                "maybe_text": None if i % 4 == 0 else "x" * (i % 70),
                "maybe_double": None if i % 2 else i / 3,
                "maybe_flag": None if i % 5 == 0 else i % 2 == 0,
                "vector": [rnd.uniform(-1, 1) for _ in range(i % 80)],
                "grid": [
                    [None if j % 3 == 0 else j * 10 ** (j % 17) for j in range(k)]
                    for k in range(i % 4)
                ],
                "maybe_words": None if i % 3 == 0 else [str(j) * j for j in range(i % 4)],
                "at": dt.datetime(2024, 1, 1, tzinfo=UTC)
                + dt.timedelta(milliseconds=i * 12_345_678),
                "at_us": None
                if i % 6 == 0
                else dt.datetime(1900, 1, 1, tzinfo=UTC)
                + dt.timedelta(microseconds=i * 987_654_321),
                "local": dt.datetime(1969, 12, 31) + dt.timedelta(milliseconds=i * 1001),
                "day": dt.date(1970, 1, 1) + dt.timedelta(days=i * 37 - 9000),
            }
        )
    return rows


def write(
    path: Path,
    schema: Any,
    rows: list[Any],
    codec: str = "null",
    sync_interval: int = 16000,
) -> Path:
    with path.open("wb") as out:
        fastavro.writer(out, schema, rows, codec=codec, sync_interval=sync_interval)
    return path


# -- reading -----------------------------------------------------------------------------
def batches(path: Path | str, chunk_size: int) -> list[pa.RecordBatch]:
    return list(AvroReader(str(path), ReadOptions(chunk_size=chunk_size)).iter_batches())


def outcome(path: Path | str, chunk_size: int) -> tuple[list[tuple[pa.Schema, Any]], str | None]:
    """The batches read (schema and rows) and the error that ended the read, if any."""
    got: list[tuple[pa.Schema, Any]] = []
    try:
        for batch in AvroReader(str(path), ReadOptions(chunk_size=chunk_size)).iter_batches():
            got.append((batch.schema, batch.to_pylist(maps_as_pydicts="strict")))
    except BatchPredictError as exc:
        return got, f"{type(exc).__name__}: {exc}"
    return got, None


def slow_outcome(
    monkeypatch: pytest.MonkeyPatch, path: Path | str, chunk_size: int
) -> tuple[list[tuple[pa.Schema, Any]], str | None]:
    """What the fastavro path alone gives."""
    with monkeypatch.context() as patch:
        patch.setattr(files, "decoder_for", FastavroDecoder)
        return outcome(path, chunk_size)


class Calls:
    """Counts calls of polars' Avro reader, and the files (`fastavro`) or runs of blocks
    after polars' (`fallbacks`) that fastavro decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.polars = 0
        self.fastavro = 0
        self.fallbacks = 0
        read_avro = polars.read_avro
        decoder_for = files.decoder_for

        def counting_read_avro(*args: Any, **kwargs: Any) -> Any:
            self.polars += 1
            return read_avro(*args, **kwargs)

        def counting_decoder_for(*args: Any) -> Any:
            decoder = decoder_for(*args)
            if isinstance(decoder, FastavroDecoder):
                self.fastavro += 1
                return decoder
            slow = decoder._slow.decode

            def fallback(blocks: list[Any], before: int) -> Any:
                self.fallbacks += bool(blocks)
                return slow(blocks, before)

            decoder._slow.decode = fallback
            return decoder

        monkeypatch.setattr(polars, "read_avro", counting_read_avro)
        monkeypatch.setattr(files, "decoder_for", counting_decoder_for)


def same_value(got: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, list):
        return len(got) == len(want) and all(map(same_value, got, want))
    return bool(got == want)


def float32(value: Any) -> Any:
    if isinstance(value, list):
        return [float32(v) for v in value]
    return None if value is None else pa.scalar(value, pa.float32()).as_py()


def assert_matches_fastavro(path: Path, table: pa.Table, float_columns: set[str]) -> None:
    """Value by value, in order, what fastavro reads (floats rounded to float32 as Arrow's)."""
    with path.open("rb") as data:
        expected = list(fastavro.reader(data))
    got = table.to_pylist()
    assert len(got) == len(expected)
    for number, (row, want) in enumerate(zip(got, expected, strict=True)):
        assert list(row) == list(want)
        for name, value in want.items():
            if name in float_columns:
                value = float32(value)
            assert same_value(row[name], value), (number, name, row[name], value)


# -- the fast path gives what fastavro gives ---------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("chunk_size", [1, 7, 250, 100_000])
def test_rich_schema_matches_fastavro(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str, chunk_size: int
) -> None:
    # Small blocks (about 2 KB), so that chunks split both inside and across blocks.
    path = write(tmp_path / "rich.avro", RICH, rich_rows(900), codec, sync_interval=2000)
    calls = Calls(monkeypatch)
    got = batches(path, chunk_size)
    assert calls.polars > 0 and calls.fastavro == 0 and calls.fallbacks == 0
    assert [b.num_rows for b in got[:-1]] == [chunk_size] * (len(got) - 1)
    assert 0 < got[-1].num_rows <= chunk_size
    table = pa.Table.from_batches(got)
    assert table.schema == arrow_schema(fastavro.parse_schema(RICH))
    assert_matches_fastavro(path, table, {"f", "vector"})


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_numeric_schema_matches_fastavro(tmp_path: Path, codec: str) -> None:
    path = write(tmp_path / "numeric.avro", NUMERIC, numeric_rows(5000), codec)
    table = pa.Table.from_batches(batches(path, 1000))
    assert table.schema == arrow_schema(NUMERIC)
    assert table.schema.field("f0").type == pa.float32()
    assert_matches_fastavro(path, table, {f"f{i}" for i in range(30)})


def test_fast_path_is_used_for_the_numeric_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "numeric.avro", NUMERIC, numeric_rows(3000), "deflate")
    calls = Calls(monkeypatch)
    table = pa.Table.from_batches(batches(path, 1024))
    assert table.num_rows == 3000
    assert table.column("id").to_pylist() == list(range(3000))
    assert calls.polars == 3  # 1024 + 1024 + 952 rows, each run of blocks decoded once
    assert calls.fastavro == 0 and calls.fallbacks == 0


def test_many_small_blocks_and_chunks_smaller_than_a_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = write(tmp_path / "small.avro", RICH, rich_rows(300), "deflate", sync_interval=1)
    with small.open("rb") as data:
        assert len(list(fastavro.block_reader(data))) == 300  # one record a block
    big = write(tmp_path / "big.avro", NUMERIC, numeric_rows(2000), "snappy", sync_interval=10**6)
    with big.open("rb") as data:
        assert len(list(fastavro.block_reader(data))) == 1
    calls = Calls(monkeypatch)
    for path, chunk, floats in (
        (small, 16, {"f", "vector"}),
        (big, 3, {f"f{i}" for i in range(30)}),
    ):
        got = batches(path, chunk)
        assert all(b.num_rows == chunk for b in got[:-1])
        assert_matches_fastavro(path, pa.Table.from_batches(got), floats)
    assert calls.fastavro == 0 and calls.fallbacks == 0
    assert calls.polars == 300 // 16 + 1 + 1  # a run per chunk; the big block once


def test_empty_blocks_and_files_without_records(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.avro", NUMERIC, [])
    assert batches(empty, 10) == []
    # A block of no records (count 0, size 0) between two others.
    data = write(tmp_path / "two.avro", NUMERIC, numeric_rows(4), sync_interval=1).read_bytes()
    with io.BytesIO(data) as stream:
        second = list(fastavro.block_reader(stream))[1].offset
    sync = data[second - 16 : second]
    path = tmp_path / "gap.avro"
    path.write_bytes(data[:second] + b"\x00\x00" + sync + data[second:])
    assert pa.Table.from_batches(batches(path, 3)).column("id").to_pylist() == [0, 1, 2, 3]


def test_trailing_newline_is_tolerated_on_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "nl.avro", NUMERIC, numeric_rows(50), sync_interval=500)
    path.write_bytes(path.read_bytes() + b"\n")
    calls = Calls(monkeypatch)
    assert pa.Table.from_batches(batches(path, 20)).num_rows == 50
    assert calls.fastavro == 0 and calls.fallbacks == 0


def test_stdin_reads_on_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "in.avro", RICH, rich_rows(200), "zstandard", sync_interval=3000)

    class FakeStdin:
        buffer = io.BytesIO(path.read_bytes())

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    calls = Calls(monkeypatch)
    table = pa.Table.from_batches(batches("-", 64))
    assert calls.fastavro == 0 and calls.fallbacks == 0
    assert_matches_fastavro(path, table, {"f", "vector"})


# -- schemas polars cannot decode as fastavro does fall back ------------------------------
FALLBACK_CASES: dict[str, tuple[Any, list[Any]]] = {
    "enum": ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, ["A", "B"]),
    "fixed": ({"type": "fixed", "name": "F", "size": 2}, [b"ab", b"cd"]),
    "map": ({"type": "map", "values": "long"}, [{"a": 1}, {}]),
    "record": (record([("x", "int")]) | {"name": "Inner"}, [{"x": 1}, {"x": 2}]),
    "decimal": (
        {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
        [__import__("decimal").Decimal("1.25"), __import__("decimal").Decimal("-3.00")],
    ),
    "time-millis": ({"type": "int", "logicalType": "time-millis"}, [dt.time(1, 2, 3)] * 2),
    "uuid": (
        {"type": "string", "logicalType": "uuid"},
        ["6c3a7ff6-3c1f-4a0c-9d0a-2c4d1b1e4f5a", "00000000-0000-0000-0000-000000000000"],
    ),
    "date-in-array": (
        {"type": "array", "items": {"type": "int", "logicalType": "date"}},
        [[dt.date(2020, 1, 1)], []],
    ),
    "unknown-logical-type": ({"type": "long", "logicalType": "nonsense"}, [1, 2]),
    "null": ("null", [None, None]),
    "union-of-one": (["long"], [1, 2]),
    "array-of-records": (
        {"type": "array", "items": record([("y", "double")]) | {"name": "Item"}},
        [[{"y": 1.0}], []],
    ),
}


@pytest.mark.parametrize("case", sorted(FALLBACK_CASES))
def test_schemas_polars_cannot_read_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    kind, values = FALLBACK_CASES[case]
    schema = record([("id", "long"), ("value", kind)])
    path = write(tmp_path / "f.avro", schema, [{"id": i, "value": v} for i, v in enumerate(values)])
    want = slow_outcome(monkeypatch, path, 10)
    calls = Calls(monkeypatch)
    assert outcome(path, 10) == want
    if case == "uuid":
        # The fastavro path cannot put fastavro's uuid.UUID objects into pa.uuid() either.
        assert want[1] is not None and "do not fit the Arrow types" in want[1]
    else:
        assert want[1] is None and len(want[0][0][1]) == len(values)
    assert calls.polars == 0 and calls.fastavro == 1


@pytest.mark.parametrize("codec", ["bzip2", "xz"])
def test_blocks_of_every_codec_go_to_polars_decompressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    path = write(tmp_path / "c.avro", RICH, rich_rows(40), codec, sync_interval=2000)
    calls = Calls(monkeypatch)
    table = pa.Table.from_batches(batches(path, 8))
    assert calls.polars > 0 and calls.fastavro == 0 and calls.fallbacks == 0
    assert_matches_fastavro(path, table, {"f", "vector"})


def test_recursive_types_and_unions_of_several_types_are_refused(tmp_path: Path) -> None:
    node = record([("next", ["null", "Node"])]) | {"name": "Node", "namespace": "ns"}
    path = write(tmp_path / "node.avro", node, [{"next": {"next": None}}])
    with pytest.raises(DataError, match=r"node.avro: recursive Avro type 'ns.Node' is not supp"):
        batches(path, 10)
    path = write(tmp_path / "union.avro", record([("v", ["null", "long", "string"])]), [{"v": 1}])
    with pytest.raises(DataError, match=r"field 'v': Avro unions of several types are not supp"):
        batches(path, 10)


def test_top_level_non_record_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "longs.avro", "long", [1, 2, 3])
    calls = Calls(monkeypatch)
    assert pa.Table.from_batches(batches(path, 2)).column("value").to_pylist() == [1, 2, 3]
    assert calls.polars == 0


# -- corrupt files: the errors (and results) the fastavro path gives ----------------------
def blocks_of(data: bytes) -> list[Any]:
    with io.BytesIO(data) as stream:
        return list(fastavro.block_reader(stream))


TWO_FIELDS = record([("x", "double"), ("label", "string")])


def two_field_bytes(rows: int, codec: str = "null", sync_interval: int = 200) -> bytes:
    out = io.BytesIO()
    records = [{"x": float(i), "label": f"row{i}"} for i in range(rows)]
    fastavro.writer(out, TWO_FIELDS, records, codec=codec, sync_interval=sync_interval)
    return out.getvalue()


def patch_byte(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def single_field_file(schema: Any, payloads: list[bytes]) -> bytes:
    """A container of one block holding the given encoded records of a one-field record."""
    out = io.BytesIO()
    fastavro.writer(out, record([("v", schema)]), [])
    header = out.getvalue()
    sync = header[-16:]
    data = b"".join(payloads)
    return header + _encode_long(len(payloads)) + _encode_long(len(data)) + data + sync


ENUM = {"type": "enum", "name": "E", "symbols": ["A", "B"]}


def corrupt_files() -> dict[str, bytes]:
    plain = two_field_bytes(100)
    blocks = blocks_of(plain)
    third = blocks[2].offset
    sync_byte = blocks[1].offset + blocks[1].size - 3
    return {
        "truncated final block": plain[:-40],
        "truncated deflate block": two_field_bytes(2000, "deflate", 16000)[:-40],
        # Flipped, not zeroed: the marker is random and its byte may already be 0.
        "wrong sync marker": patch_byte(plain, sync_byte, plain[sync_byte] ^ 0xFF),
        "block count too small": patch_byte(plain, third, plain[third] - 2),
        "block count too large": patch_byte(plain, third, plain[third] + 2),
        "block count far too large": patch_byte(plain, third, 0x7E),
        "size past the end": plain[: third + 1] + _encode_long(10**12) + plain[third + 3 :],
        "junk after the last block": plain + b"junk",
        "whitespace after the last block": plain + b" \n",
        "negative union branch": single_field_file(["null", "double"], [b"\x01" + bytes(8)]),
        "bad enum index": single_field_file(ENUM, [b"\x02", b"\x08"]),
        "boolean byte 2": single_field_file("boolean", [b"\x01", b"\x02", b"\x00"]),
        "int beyond 32 bits": single_field_file("int", [b"\x02", b"\x80\x80\x80\x80\x10"]),
        "timestamp beyond year 9999": single_field_file(
            {"type": "long", "logicalType": "timestamp-millis"}, [_encode_long(2**62)]
        ),
        "date before year 1": single_field_file(
            {"type": "int", "logicalType": "date"}, [_encode_long(-800_000)]
        ),
        "invalid UTF-8": single_field_file("string", [b"\x04\xff\xfe"]),
        "non-canonical varint": single_field_file("long", [b"\x82\x00", b"\x04"]),
        "array in two blocks": single_field_file(
            {"type": "array", "items": "long"}, [b"\x02\x02\x02\x04\x00", b"\x00"]
        ),
        "array with byte-size block": single_field_file(
            {"type": "array", "items": "long"}, [b"\x03\x04\x02\x04\x00"]
        ),
        "string longer than its block": single_field_file("string", [b"\x7e\x61"]),
    }


@pytest.mark.parametrize("name", sorted(corrupt_files()))
@pytest.mark.parametrize("chunk_size", [3, 1000])
def test_odd_and_corrupt_files_read_as_fastavro_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, chunk_size: int
) -> None:
    path = tmp_path / "odd.avro"
    path.write_bytes(corrupt_files()[name])
    want = slow_outcome(monkeypatch, path, chunk_size)
    assert outcome(path, chunk_size) == want


def test_corrupt_blocks_report_the_file_and_byte(tmp_path: Path) -> None:
    files = corrupt_files()
    messages = {}
    for name in ("truncated final block", "wrong sync marker", "size past the end"):
        path = tmp_path / f"{name}.avro"
        path.write_bytes(files[name])
        with pytest.raises(ReadWriteError) as exc:
            batches(path, 10)
        messages[name] = str(exc.value)
        assert str(path) in messages[name] and "(byte " in messages[name]
    assert "truncated Avro block" in messages["truncated final block"]
    path = tmp_path / "left.avro"
    path.write_bytes(files["block count too small"])
    with pytest.raises(ReadWriteError, match=r"corrupt Avro block at byte \d+ .*left over"):
        batches(path, 10)
    path = tmp_path / "enum.avro"
    path.write_bytes(files["bad enum index"])
    with pytest.raises(ReadWriteError, match="corrupt Avro record 2: bad union or enum index"):
        batches(path, 10)
    path = tmp_path / "int.avro"
    path.write_bytes(files["int beyond 32 bits"])
    with pytest.raises(DataError, match="records 1-2 do not fit"):
        batches(path, 10)


def test_rows_before_a_corrupt_block_come_out_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = two_field_bytes(3000, "deflate", 500)
    late = blocks_of(data)[-5]
    path = tmp_path / "late.avro"
    marker = late.offset + late.size - 1  # the last byte of its sync marker, flipped
    path.write_bytes(patch_byte(data, marker, data[marker] ^ 0xFF))
    calls = Calls(monkeypatch)
    got, error = outcome(path, 64)
    assert error is not None and f"(byte {late.offset})" in error
    assert len(got) > 10 and all(len(rows) == 64 for _, rows in got)
    assert calls.polars > 0 and calls.fastavro == 0 and calls.fallbacks == 0
    assert (got, error) == slow_outcome(monkeypatch, path, 64)


@pytest.mark.parametrize(
    ("count", "size"), [(2**31, 9), (2**62, 9), (1, 2**31), (1, 2**62), (-1, 9), (1, -9)]
)
@pytest.mark.parametrize("stdin", [False, True])
def test_block_counts_and_sizes_out_of_range_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, size: int, stdin: bool
) -> None:
    out = io.BytesIO()
    fastavro.writer(out, TWO_FIELDS, [])
    header = out.getvalue()
    data = header + _encode_long(count) + _encode_long(size) + bytes(9) + header[-16:]
    path = tmp_path / "huge.avro"
    path.write_bytes(data)

    class FakeStdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    with pytest.raises(ReadWriteError) as exc:
        batches("-" if stdin else path, 10)
    assert str(exc.value) == (
        f"{'-' if stdin else path}: corrupt or truncated Avro block after record 0 "
        f"(byte {len(header)}): block count {count} or size {size} out of range"
    )


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_blocks_are_decompressed_to_at_most_max_record_bytes(tmp_path: Path, codec: str) -> None:
    rows = [{"x": 0.0, "label": "a" * 100}] * 200  # 110 bytes each, in one block
    path = write(tmp_path / "b.avro", TWO_FIELDS, rows, codec, sync_interval=10**6)
    (block,) = blocks_of(path.read_bytes())

    def read(limit: int) -> list[pa.RecordBatch]:
        options = ReadOptions(chunk_size=1000, max_record_bytes=limit)
        return list(AvroReader(str(path), options).iter_batches())

    assert sum(batch.num_rows for batch in read(200 * 110)) == 200
    with pytest.raises(ReadWriteError) as exc:
        read(200 * 110 - 1)
    assert str(exc.value) == (
        f"{path}: corrupt or truncated Avro block after record 0 (byte {block.offset}): "
        "block decompresses to more than --max_record_bytes (21999 bytes): corrupt, or too "
        "large to read"
    )


def test_a_union_branch_index_out_of_range_is_read_as_the_value_by_polars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one corruption the polars path does not report: polars reads any union branch
    index other than the null's as the value's (the bytes are framed as if it were), where
    fastavro refuses it. Unions fastavro reads (top-level, of several types) report it."""
    path = tmp_path / "union.avro"
    path.write_bytes(
        single_field_file(["null", "double"], [b"\x02" + bytes(8), b"\x04" + bytes(8)])
    )
    assert outcome(path, 10)[1] is None
    assert pa.Table.from_batches(batches(path, 10)).column("v").to_pylist() == [0.0, 0.0]
    assert slow_outcome(monkeypatch, path, 10)[1] == (
        f"ReadWriteError: {path}: corrupt Avro record 2: bad union or enum index"
    )
    out = io.BytesIO()
    fastavro.writer(out, ["null", "double"], [])
    header = out.getvalue()
    path.write_bytes(header + b"\x02\x12\x04" + bytes(8) + header[-16:])
    with pytest.raises(ReadWriteError, match="corrupt Avro record 1: bad union or enum index"):
        batches(path, 10)


@pytest.mark.parametrize("name", ["block count too large", "block count too small"])
def test_wrong_block_counts_do_not_make_polars_panic(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    # polars panics (printing to stderr) when it reads past a block; the padding prevents it.
    path = tmp_path / "count.avro"
    path.write_bytes(corrupt_files()[name])
    with pytest.raises(ReadWriteError):
        batches(path, 1000)
    assert "panicked" not in capfd.readouterr().err


def mutations(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """Files with one random corruption each (a flipped, changed, dropped or added byte, a
    cut, a changed block count or size, bytes appended)."""
    rnd = random.Random(seed)
    schemas: list[tuple[Any, Callable[[int], Any]]] = [
        (TWO_FIELDS, lambda i: {"x": i / 2, "label": f"row{i}"}),
        (NUMERIC, lambda i: {"id": i, **{f"f{j}": i + j for j in range(30)}}),
        (record([("a", "double"), ("b", "float")]), lambda i: {"a": i, "b": -i}),
        (
            record([("n", ["null", "long"]), ("m", ["int", "null"]), ("b", "boolean")]),
            lambda i: {"n": None if i % 3 else i, "m": None if i % 2 else i, "b": i % 2 == 0},
        ),
        (
            record(
                [
                    ("l", {"type": "array", "items": ["null", "double"]}),
                    ("t", {"type": "long", "logicalType": "timestamp-millis"}),
                    ("d", {"type": "int", "logicalType": "date"}),
                ]
            ),
            lambda i: {
                "l": [None if j % 3 == 0 else j * 1.5 for j in range(i % 5)],
                "t": dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=i),
                "d": dt.date(2000, 1, 1) + dt.timedelta(days=i),
            },
        ),
    ]
    for number in range(count):
        schema, make = rnd.choice(schemas)
        codec = rnd.choice(CODECS)
        out = io.BytesIO()
        rows = [make(i) for i in range(rnd.randrange(1, 60))]
        fastavro.writer(out, schema, rows, codec=codec, sync_interval=rnd.choice([1, 60, 300]))
        data = bytearray(out.getvalue())
        starts = [block.offset for block in blocks_of(bytes(data))]
        first = starts[0]
        how = rnd.randrange(8)
        if how == 0:
            data[rnd.randrange(first, len(data))] ^= 1 << rnd.randrange(8)
        elif how == 1:
            del data[rnd.randrange(first, len(data)) :]
        elif how == 2:
            block = rnd.choice(starts)
            data[block] = (data[block] + rnd.choice([-4, -2, 2, 4])) % 128
        elif how == 3:
            data += rnd.choice([b"\n", b"x", bytes(5), bytes(40)])
        elif how == 4:
            data[rnd.randrange(first, len(data))] = rnd.randrange(256)
        elif how == 5:
            block = rnd.choice(starts)
            data[block + 1] = (data[block + 1] + rnd.choice([-2, 2, 4])) % 128
        elif how == 6:
            del data[rnd.randrange(first, len(data))]
        else:
            data.insert(rnd.randrange(first, len(data)), rnd.randrange(256))
        yield f"{number}-{codec}-{how}", bytes(data)


def test_randomly_corrupted_files_read_as_fastavro_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mutant.avro"
    differences = []
    for name, data in mutations(seed=20240601, count=150):
        path.write_bytes(data)
        for chunk_size in (4, 100):
            want = slow_outcome(monkeypatch, path, chunk_size)
            if outcome(path, chunk_size) != want:
                differences.append((name, chunk_size))
    assert differences == []


def test_importing_the_reader_leaves_fastavro_as_it_was() -> None:
    code = (
        "import fastavro, fastavro._write, fastavro.read\n"
        "before = (dict(fastavro.read.BLOCK_READERS), dict(fastavro._write.BLOCK_WRITERS))\n"
        "import batchpredict.formats.registry\n"
        "after = (dict(fastavro.read.BLOCK_READERS), dict(fastavro._write.BLOCK_WRITERS))\n"
        "assert after == before, 'fastavro was patched'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
