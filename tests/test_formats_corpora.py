"""Conformance of the readers against files written by other projects' tools.

The corpora live outside the repository (see ../shared/corpora/README.md, "Known facts");
these tests skip when the folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from batchpredict.errors import BatchPredictError, DataError, InputMissingError, ReadWriteError
from batchpredict.formats import ReadOptions, reader_for

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"

pytestmark = [
    pytest.mark.corpora,
    pytest.mark.skipif(not CORPORA.is_dir(), reason=f"no corpora folder at {CORPORA}"),
]

AVRO_DATA = CORPORA / "avro" / "share" / "test" / "data"
PARQUET = CORPORA / "parquet-testing"
SPECTRUM = CORPORA / "csv-spectrum"
CSVKIT = CORPORA / "csvkit" / "examples"
JSON_SUITE = CORPORA / "JSONTestSuite" / "test_parsing"


def read(path: Path, fmt: str | None = None, chunk_size: int = 1000) -> pa.Table:
    """The whole file through our reader, as one table."""
    reader = reader_for(str(path), fmt, ReadOptions(chunk_size=chunk_size))
    batches = list(reader.iter_batches())
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches)


def names(folder: Path, pattern: str) -> list[str]:
    """File names in a corpus folder (empty when the corpora are absent)."""
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []


# -- Avro --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["weather.avro", "weather-deflate.avro", "weather-snappy.avro", "weather-zstd.avro"]
)
def test_avro_weather_files_hold_weather_json(name: str) -> None:
    lines = (AVRO_DATA / "weather.json").read_text(encoding="utf-8").splitlines()
    expected = [json.loads(line) for line in lines]
    table = read(AVRO_DATA / name, chunk_size=2)
    assert table.to_pylist() == expected
    assert table.schema.field("time").type == pa.int64()


@pytest.mark.parametrize(
    "path",
    [
        "avro/lang/c/tests/avro-1238-truncated.avro",
        "avro/lang/c/tests/avro-1237-bad-union-discriminant.avro",
        "avro/share/test/data/test.avro12",
        "tensorflow-io/tests/test_avro/weather.avro",
    ],
)
def test_bad_avro_files_fail_clearly(path: str) -> None:
    file = CORPORA / path
    with pytest.raises(ReadWriteError) as exc:
        read(file, fmt="avro")
    message = str(exc.value)
    assert str(file) in message
    assert "\n" not in message


def test_avro_good_twins_of_the_bad_files_read() -> None:
    # Same schema as the bad files (a top-level union, read as column "value").
    for name in ("avro-1237-good.avro", "avro-1238-good.avro"):
        table = read(CORPORA / "avro" / "lang" / "c" / "tests" / name)
        assert table.column_names == ["value"]
        assert table.num_rows > 0


def test_avro_trailing_newline_after_last_block_is_tolerated() -> None:
    folder = CORPORA / "avro" / "lang" / "js" / "test" / "dat"
    plain = read(folder / "person-10.no-codec.avro")
    assert plain.num_rows == 10
    assert plain.to_pylist() == read(folder / "person-10.avro").to_pylist()


def test_avro_union_of_several_types_is_a_clear_error() -> None:
    path = AVRO_DATA / "schemas" / "withUnion" / "data.avro"
    with pytest.raises(DataError, match="union"):
        read(path)


# -- Parquet -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "delta_binary_packed",
        "delta_byte_array",
        "delta_encoding_optional_column",
        "delta_encoding_required_column",
    ],
)
def test_parquet_files_match_their_expected_csv(name: str) -> None:
    ours = read(PARQUET / "data" / f"{name}.parquet", chunk_size=64)
    expected = pacsv.read_csv(
        PARQUET / "data" / f"{name}_expect.csv",
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(
                pacsv.read_csv(PARQUET / "data" / f"{name}_expect.csv").column_names,
                pa.string(),
            ),
            strings_can_be_null=True,
        ),
    )
    assert ours.num_rows == expected.num_rows
    assert ours.num_columns == expected.num_columns
    for got, want in zip(ours.columns, expected.columns, strict=True):
        assert got.to_pylist() == want.cast(got.type).to_pylist()


def test_parquet_int96_timestamps_from_spark() -> None:
    # Microseconds keep years up to 9999 right; pyarrow still garbles year 290000 (row 6),
    # which must be an error, not a silent wrong value.
    reader = reader_for(str(PARQUET / "data" / "int96_from_spark.parquet"), None, ReadOptions(4))
    batches = reader.iter_batches()
    first = next(batches)
    assert first.column("a").cast(pa.int64()).to_pylist() == [
        1704141296123456,
        1704070800000000,
        253402225200000000,
        1735599600000000,
    ]
    with pytest.raises(DataError, match=r"row 6, column 'a'"):
        next(batches)


@pytest.mark.parametrize(
    "name",
    ["datapage_v1-corrupt-checksum.parquet", "rle-dict-uncompressed-corrupt-checksum.parquet"],
)
def test_parquet_corrupt_checksums_are_detected(name: str) -> None:
    with pytest.raises(ReadWriteError, match=r"checksum|CRC"):
        read(PARQUET / "data" / name)


@pytest.mark.parametrize(
    "name", [n for n in names(PARQUET / "bad_data", "*.parquet") if "43605" not in n]
)
def test_parquet_bad_data_fails_clearly(name: str) -> None:
    path = PARQUET / "bad_data" / name
    with pytest.raises(ReadWriteError) as exc:
        read(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_parquet_gh_43605_now_reads() -> None:
    assert read(PARQUET / "bad_data" / "ARROW-GH-43605.parquet").num_rows > 0


def test_encrypted_parquet_fails_clearly() -> None:
    with pytest.raises(ReadWriteError):
        read(PARQUET / "data" / "uniform_encryption.parquet.encrypted", fmt="parquet")


# -- CSV ---------------------------------------------------------------------------------
def _as_text(value: Any) -> Any:
    """A value as csv-spectrum spells it: integers without a decimal point."""
    return None if value is None else str(value)


@pytest.mark.parametrize(
    "name",
    [n.removesuffix(".csv") for n in names(SPECTRUM / "csvs", "*.csv")]
    if SPECTRUM.is_dir()
    else [],
)
def test_csv_spectrum_matches_its_json(name: str) -> None:
    if name == "location_coordinates":
        pytest.skip("the expected JSON is wrong upstream (phone number and encoding differ)")
    table = read(SPECTRUM / "csvs" / f"{name}.csv")
    expected = json.loads((SPECTRUM / "json" / f"{name}.json").read_text(encoding="utf-8"))
    assert table.column_names == list(expected[0])
    assert table.num_rows == len(expected)
    for column in table.column_names:
        kind = table.schema.field(column).type
        want = [row[column] for row in expected]
        if pa.types.is_string(kind):
            assert table.column(column).to_pylist() == want
        else:
            # Inferred types: the expected text must parse to the same values ("" is null).
            parsed = pa.array([w or None for w in want]).cast(kind)
            assert table.column(column).to_pylist() == parsed.to_pylist()


def test_csvkit_bad_csv_is_a_data_error_with_the_row() -> None:
    path = CSVKIT / "bad.csv"
    with pytest.raises(DataError) as exc:
        read(path)
    assert "row 1" in str(exc.value)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("name", ["test_latin1.csv", "test_utf16_big.csv", "test_utf16_little.csv"])
def test_csvkit_non_utf8_files_are_data_errors(name: str) -> None:
    with pytest.raises(DataError, match="UTF"):
        read(CSVKIT / name)


def test_csvkit_bom_mac_newlines_and_compressed() -> None:
    assert read(CSVKIT / "test_utf8_bom.csv").column_names == ["foo", "bar", "baz"]
    assert read(CSVKIT / "mac_newlines.csv").to_pylist() == [
        {"a": "1", "b": 2, "c": 3},
        {"a": "Once upon\ra time", "b": 5, "c": 6},
    ]
    plain = read(CSVKIT / "dummy.csv").to_pylist()
    assert read(CSVKIT / "dummy.csv.gz").to_pylist() == plain
    assert read(CSVKIT / "dummy.csv.bz2").to_pylist() == plain
    assert read(CSVKIT / "dummy.tsv").to_pylist() == plain


def test_csvkit_empty_file_is_missing_input() -> None:
    with pytest.raises(InputMissingError):
        read(CSVKIT / "empty.csv")


# -- JSON --------------------------------------------------------------------------------
def test_json_test_suite_never_crashes_and_rejects_every_n_file() -> None:
    # Our reader takes JSON lines of objects or one array of objects, so most y_ files
    # (scalars, nested arrays) are refused too; but nothing may escape unwrapped, and
    # no n_ file may read.
    read_ok = []
    for path in sorted(JSON_SUITE.glob("*.json")):
        try:
            read(path, fmt="jsonl")
        except (DataError, InputMissingError) as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        except BatchPredictError as exc:  # pragma: no cover - reported by the assert
            raise AssertionError(f"{path.name}: unexpected {type(exc).__name__}") from exc
        else:
            read_ok.append(path.name)
    assert read_ok, "the object files must read"
    assert [name for name in read_ok if name.startswith("n_")] == []
    assert "y_object_basic.json" in read_ok


def test_json_deep_nesting_is_an_error() -> None:
    with pytest.raises(DataError, match="deep"):
        read(JSON_SUITE / "n_structure_100000_opening_arrays.json", fmt="jsonl")


def test_spark_people_json() -> None:
    table = read(CORPORA / "spark-examples" / "people.json")
    assert table.column("name").to_pylist() == [
        "Michael",
        "Rachel",
        "Andy",
        "Justin",
        "Sarah",
        "Melissa",
    ]
    assert table.column("age").to_pylist() == [None, None, 30, 19, 22, 34]
