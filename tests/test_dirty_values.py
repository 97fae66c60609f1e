"""Dirty values in the model's numeric columns of text inputs (CSV, TSV, JSON lines, JSON
arrays): parsed value by value wherever they sit in the file; a value that does not parse is
a bad row naming the file, row, column and value; `--null_values` and `--delimiter`.

Files are written by pyarrow and pandas (or, for the dirty cells, as plain text replacing
library-written cells); the oracle for predictions is the model called directly.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchpredict.config import RunConfig, parse_delimiter
from batchpredict.errors import DataError, UsageError
from batchpredict.formats import csv_io, json_io, json_model
from batchpredict.formats.base import BadRecord, ReadOptions
from batchpredict.formats.registry import reader_for
from conftest import N_FEATURES, Completed, make_frame, reference_predictions

RunMain = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]
#: Dirty cells (0-based data row offset, column, text as written) placed near the top of
#: a file and again far beyond its first (4 MiB) block.
DIRT = [(2, "f1", "N/A?"), (4, "f2", "abc"), (7, "f0", '"1,5"')]
FAR = 100_000


def write_csv(frame: pd.DataFrame, path: Path, delimiter: str = ",") -> Path:
    """`frame` as CSV written by pyarrow, unquoted (as most exports are)."""
    options = pacsv.WriteOptions(delimiter=delimiter, quoting_style="none")
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path, write_options=options)
    return path


def put_cells(path: Path, cells: list[tuple[int, str, str]], delimiter: str = ",") -> None:
    """Replace cells (0-based data row, column, raw text) of a CSV written by `write_csv`."""
    lines = path.read_text(encoding="utf-8").split("\n")
    names = [name.strip('"') for name in lines[0].split(delimiter)]
    for row, column, text in cells:
        fields = lines[row + 1].split(delimiter)
        fields[names.index(column)] = text
        lines[row + 1] = delimiter.join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def predict(run_main: RunMain, model: Path, source: Path, *extra: str) -> Completed:
    """`predict` of the 4-feature MLP over `source`, keeping `id`, JSON log lines."""
    return run_main(
        "predict", "--model", str(model), "--input_file", str(source),
        "--features", ",".join(FEATURES), "--keep_columns", "id", "--log_format", "json",
        "--no_progress", *extra,
    )  # fmt: skip


def error_of(result: Completed) -> str:
    """The error of a failed run, from its JSON log lines."""
    return next(str(line["error"]) for line in result.log_lines() if line["event"] == "run failed")


def assert_scored(model: Path, output: Path, frame: pd.DataFrame) -> None:
    """`output` (CSV) holds `frame`'s ids in order and the model's own predictions."""
    out = pacsv.read_csv(output).to_pandas()
    assert out["id"].tolist() == frame["id"].tolist()
    expected = reference_predictions(model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)


# -- CSV: the same bad values near the top and far beyond the first block ------------------
@pytest.fixture(scope="module")
def big_frame() -> pd.DataFrame:
    return make_frame(FAR + 20_000, seed=11)


@pytest.mark.parametrize("offset", [0, FAR], ids=["top", "far"])
def test_csv_bad_values_fail_naming_file_row_column_and_value(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, big_frame: pd.DataFrame, offset: int
) -> None:
    source = write_csv(big_frame, tmp_path / "d.csv")
    put_cells(source, [(offset + row, column, text) for row, column, text in DIRT])
    if offset:  # no quote in the first block: read by the multithreaded reader
        assert b'"' not in source.read_bytes()[: 4 << 20].split(b"\n", 1)[1]

    result = predict(run_main, mlp_model, source)

    assert result.returncode == 65, result.stderr
    message = f"{source}: row {offset + 3}, column 'f1': value 'N/A?' is not a number"
    assert message in error_of(result)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


@pytest.mark.parametrize("offset", [0, FAR], ids=["top", "far"])
def test_csv_bad_values_are_rejected_row_by_row_and_the_rest_scored(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, big_frame: pd.DataFrame, offset: int
) -> None:
    source = write_csv(big_frame, tmp_path / "d.csv")
    put_cells(source, [(offset + row, column, text) for row, column, text in DIRT])

    result = predict(
        run_main,
        mlp_model,
        source,
        "--on_error",
        "skip",
        "--rejects_file",
        str(tmp_path / "r.jsonl"),
    )

    assert result.returncode == 0, result.stderr
    rejects = rejects_of(tmp_path / "r.jsonl")
    assert [(r["row"], r["column"], r["value"]) for r in rejects] == [
        (offset + 3, "f1", "N/A?"),
        (offset + 5, "f2", "abc"),
        (offset + 8, "f0", "1,5"),
    ]
    assert all(r["source"] == str(source) for r in rejects)
    assert rejects[0]["reason"] == "value 'N/A?' is not a number, which the model needs"
    assert rejects[2]["text"].startswith(f'{offset + 8},"1,5",')
    good = big_frame.drop(index=[offset + row for row, _, _ in DIRT]).reset_index(drop=True)
    assert_scored(mlp_model, tmp_path / "d.predictions.csv", good)
    finished = next(line for line in result.log_lines() if line["event"] == "run finished")
    assert (finished["rows_in"], finished["rows_rejected"]) == (len(big_frame), 3)


def test_gzipped_csv_with_bad_values(tmp_path: Path, mlp_model: Path, run_main: RunMain) -> None:
    frame = make_frame(3000, seed=12)
    plain = write_csv(frame, tmp_path / "plain.csv")
    put_cells(plain, DIRT)
    source = tmp_path / "d.csv.gz"
    source.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()

    result = predict(run_main, mlp_model, source, "--on_error", "skip")

    assert result.returncode == 0, result.stderr
    rejects = rejects_of(tmp_path / "d.predictions.csv.gz.rejects.jsonl")
    assert [(r["row"], r["value"]) for r in rejects] == [(3, "N/A?"), (5, "abc"), (8, "1,5")]
    out = tmp_path / "d.predictions.csv"
    out.write_bytes(gzip.decompress((tmp_path / "d.predictions.csv.gz").read_bytes()))
    assert_scored(mlp_model, out, frame.drop(index=[2, 4, 7]).reset_index(drop=True))


def test_stdin_csv_bad_values_can_be_skipped(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    # Stdin cannot be read twice: the model's columns are converted as text from the start.
    frame = make_frame(500, seed=13)
    source = write_csv(frame, tmp_path / "d.csv")
    put_cells(source, DIRT)
    out = tmp_path / "out.csv"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "-", "--input_format", "csv",
        "--output_file", str(out), "--features", ",".join(FEATURES), "--keep_columns", "id",
        "--on_error", "skip", "--rejects_file", str(tmp_path / "r.jsonl"), "--no_progress",
        input=source.read_bytes(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["row"] for r in rejects_of(tmp_path / "r.jsonl")] == [3, 5, 8]
    assert_scored(mlp_model, out, frame.drop(index=[2, 4, 7]).reset_index(drop=True))


def test_integer_column_reads_a_later_fraction_for_a_float_input(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    # f0 holds integers for 40,000 rows (a first block of 1 MiB at --chunk_size 1000, so
    # Arrow alone would call it int64), then 1.5.
    frame = make_frame(45_000, seed=14)
    frame["f0"] = (np.arange(len(frame)) % 7).astype(float)
    frame.loc[40_000, "f0"] = 1.5
    source = write_csv(frame, tmp_path / "d.csv")
    put_cells(source, [(i, "f0", str(i % 7)) for i in range(40_000)])
    assert source.read_text().split("\n")[1].split(",")[1] == "0"

    result = predict(run_main, mlp_model, source, "--chunk_size", "1000")

    assert result.returncode == 0, result.stderr
    assert_scored(mlp_model, tmp_path / "d.predictions.csv", frame)


def test_null_values_replace_the_default_markers(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(200, seed=15)
    source = write_csv(frame, tmp_path / "d.csv")
    put_cells(source, [(3, "f1", "missing"), (6, "f2", "NA"), (9, "f3", "")])
    rejects = tmp_path / "r.jsonl"
    skip = ["--on_error", "skip", "--max_error_rate", "0.1", "--rejects_file", str(rejects)]

    # Default markers: NA and the empty field are null; "missing" is not a number.
    result = predict(run_main, mlp_model, source, *skip)
    assert result.returncode == 0, result.stderr
    # Bad values are reported by the reader, nulls after: sorted, as the file has no order.
    found = sorted((r["row"], r["column"], r["reason"]) for r in rejects_of(rejects))
    assert found == [
        (4, "f1", "value 'missing' is not a number, which the model needs"),
        (7, "f2", "value is null"),
        (10, "f3", "value is null"),
    ]

    # --null_values missing: then NA is a bad value, and the empty field is still null.
    result = predict(run_main, mlp_model, source, *skip, "--null_values", "missing")
    assert result.returncode == 0, result.stderr
    found = sorted((r["row"], r["reason"]) for r in rejects_of(rejects))
    assert found == [
        (4, "value is null"),
        (7, "value 'NA' is not a number, which the model needs"),
        (10, "value is null"),
    ]

    # With --fill_value, the nulls are filled and only NA is bad.
    result = predict(
        run_main, mlp_model, source, *skip, "--null_values", " missing , none ", "--fill_value", "0"
    )
    assert result.returncode == 0, result.stderr
    assert [r["row"] for r in rejects_of(rejects)] == [7]
    filled = frame.copy()
    filled.loc[3, "f1"] = 0.0
    filled.loc[9, "f3"] = 0.0
    assert_scored(mlp_model, tmp_path / "d.predictions.csv", filled.drop(index=[6]))


def test_semicolon_csv_with_delimiter_and_a_decimal_comma(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(300, seed=16)
    source = write_csv(frame, tmp_path / "export.csv", delimiter=";")
    put_cells(source, [(20, "f2", "1,5")], delimiter=";")  # a decimal comma: not guessed

    result = predict(
        run_main, mlp_model, source, "--delimiter", ";", "--on_error", "skip",
        "--rejects_file", str(tmp_path / "r.jsonl"),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    rejects = rejects_of(tmp_path / "r.jsonl")
    assert [(r["row"], r["column"], r["value"]) for r in rejects] == [(21, "f2", "1,5")]
    assert rejects[0]["text"].startswith("21;")
    assert_scored(mlp_model, tmp_path / "export.predictions.csv", frame.drop(index=[20]))

    # Without --delimiter the header is one column: the mapping fails before any row is
    # read, and says what the separator looks like.
    result = predict(run_main, mlp_model, source)
    assert result.returncode == 65
    assert "names missing column(s): id" in error_of(result)
    assert "is the file separated by ';'? see --delimiter" in error_of(result)


def test_tab_delimiter_spellings(tmp_path: Path, mlp_model: Path, run_main: RunMain) -> None:
    frame = make_frame(50, seed=17)
    source = write_csv(frame, tmp_path / "tabs.csv", delimiter="\t")
    for spelling in ("\\t", "tab", "\t"):
        result = predict(run_main, mlp_model, source, "--delimiter", spelling)
        assert result.returncode == 0, result.stderr
        assert_scored(mlp_model, tmp_path / "tabs.predictions.csv", frame)


@pytest.mark.parametrize(
    ("name", "delimiter", "message"),
    [
        ("d.csv", ";;", "--delimiter must be one character"),
        ("d.csv", '"', "--delimiter must be one character"),
        ("d.csv", "x", "--delimiter must be one character"),
        ("d.tsv", ";", "--delimiter is for CSV input, and this is tsv"),
        ("d.jsonl", ",", "--delimiter is for CSV input, and this is jsonl"),
    ],
)
def test_delimiter_refused_with_exit_2(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, name: str, delimiter: str, message: str
) -> None:
    source = tmp_path / name
    source.write_text("id,f0\n1,2\n" if name != "d.jsonl" else '{"id": 1}\n')
    result = predict(run_main, mlp_model, source, "--delimiter", delimiter)
    assert result.returncode == 2
    assert message in error_of(result)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"delimiter": ""}, "--delimiter must be one character"),
        ({"delimiter": "\n"}, "--delimiter must be one character"),
        ({"delimiter": "é"}, "--delimiter must be one character"),
        ({"delimiter": "."}, "--delimiter must be one character"),
        ({"delimiter": ";", "input_format": "tsv"}, "not --input_format tsv"),
        ({"delimiter": ";", "input_format": "json"}, "not --input_format json"),
        ({"null_values": ("NA", "")}, "--null_values: '' is not a value"),
        ({"null_values": ("a\nb",)}, "--null_values: 'a\\nb' is not a value"),
        ({"null_values": ("x" * 65,)}, "is not a value"),
        ({"null_values": tuple(map(str, range(65)))}, "at most 64 values"),
    ],
)
def test_reading_options_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        RunConfig(model="m.keras", input_files=("d.csv",), **changes)


@pytest.mark.parametrize("delimiter", [";", "|", "\t", " ", ":"])
def test_delimiters_accepted(delimiter: str) -> None:
    config = RunConfig(model="m.keras", input_files=("d.csv",), delimiter=delimiter)
    assert config.delimiter == delimiter
    assert parse_delimiter("\\t") == parse_delimiter("TAB") == "\t"


def test_tsv_bad_values(tmp_path: Path, mlp_model: Path, run_main: RunMain) -> None:
    frame = make_frame(400, seed=18)
    source = write_csv(frame, tmp_path / "d.tsv", delimiter="\t")
    put_cells(source, [(1, "f3", "oops"), (50, "f0", "1,5")], delimiter="\t")

    result = predict(run_main, mlp_model, source, "--on_error", "skip")

    assert result.returncode == 0, result.stderr
    rejects = rejects_of(tmp_path / "d.predictions.tsv.rejects.jsonl")
    assert [(r["row"], r["column"], r["value"]) for r in rejects] == [
        (2, "f3", "oops"),
        (51, "f0", "1,5"),
    ]
    out = pacsv.read_csv(
        tmp_path / "d.predictions.tsv", parse_options=pacsv.ParseOptions(delimiter="\t")
    ).to_pandas()
    good = frame.drop(index=[1, 50]).reset_index(drop=True)
    expected = reference_predictions(mlp_model, good[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)


def test_typed_formats_keep_refusing_text_for_numbers(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(20, seed=19).astype({"f1": str})
    source = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source)
    result = predict(run_main, mlp_model, source, "--on_error", "skip")
    assert result.returncode == 65
    assert "column 'f1' has type large_string" in error_of(result)


# -- JSON lines and arrays with the two-input model -------------------------------------------
@pytest.fixture
def block_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which way the JSON-lines reader took for each block with the model's columns:
    "fast" (Arrow parsed it whole), "patched" (Arrow parsed it whole once the lines with
    a value written another way were patched) or "fallback" (decoded line by line)."""
    taken: list[str] = []
    columns = json_model.ModelColumns
    fast, fallback = columns.finish, columns.parse_lines

    def spy_fast(self: json_model.ModelColumns, *args: Any) -> Any:
        taken.append("patched" if len(args) > 6 and args[6] else "fast")
        return fast(self, *args)

    def spy_fallback(self: json_model.ModelColumns, *args: Any) -> Any:
        taken.append("fallback")
        return fallback(self, *args)

    monkeypatch.setattr(columns, "finish", spy_fast)
    monkeypatch.setattr(columns, "parse_lines", spy_fallback)
    return taken


def two_input_reference(model: Path, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The `score` output of the two-input model, called directly."""
    import keras

    loaded = keras.saving.load_model(model, compile=False)
    inputs = {"a": a.reshape(-1, 1).astype(np.float32), "b": b.reshape(-1, 1).astype(np.float32)}
    return keras.ops.convert_to_numpy(loaded(inputs, training=False)["score"]).reshape(-1)


def json_records(count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": i + 1, "a": float(rng.normal()), "b": int(rng.integers(0, 9)), "note": f"n{i}"}
        for i in range(count)
    ]


#: Dirt for JSON records by 0-based position: field -> raw JSON text of the value, or None
#: to leave the field out. Quoted numbers parse; the rest are bad rows.
JSON_DIRT: dict[int, tuple[str, str | None]] = {
    3: ("a", '"2.5"'),
    5: ("b", '"abc"'),
    8: ("a", None),
    9: ("b", "null"),
    12: ("b", '"7"'),
    14: ("a", "[1]"),
}
JSON_REJECTS = {
    6: ("b", "value 'abc' is not a number, which the model needs", "abc"),
    9: ("a", "field 'a' is missing", None),
    10: ("b", "value is null", None),
    15: ("a", "value '[1]' is not a number, which the model needs", "[1]"),
}


def json_line(record: dict[str, Any], dirt: tuple[str, str | None] | None) -> str:
    """A record as one JSON line (by `json.dumps`), its `dirt` field replaced as raw text."""
    if dirt is None:
        return json.dumps(record)
    field, raw = dirt
    record = {k: v for k, v in record.items() if k != field}
    text = json.dumps(record)
    return text if raw is None else text[:-1] + f', "{field}": {raw}}}'


def dirty_jsonl(path: Path, records: list[dict[str, Any]], starts: list[int]) -> set[int]:
    """`records` as JSON lines with `JSON_DIRT` repeated from each of `starts`; the 0-based
    positions of the records rejected."""
    dirt = {start + k: v for start in starts for k, v in JSON_DIRT.items()}
    path.write_text("\n".join(json_line(r, dirt.get(i)) for i, r in enumerate(records)) + "\n")
    return {start + row - 1 for start in starts for row in JSON_REJECTS}


def json_value(record: dict[str, Any], position: int, field: str, starts: list[int]) -> float:
    """The value the model gets for `field`: the quoted numbers of `JSON_DIRT` parsed."""
    for start in starts:
        if position - start in JSON_DIRT and JSON_DIRT[position - start][0] == field:
            return float(json.loads(JSON_DIRT[position - start][1] or "null"))
    return float(record[field])


def test_jsonl_values_parsed_one_by_one_in_fast_and_fallback_blocks(
    tmp_path: Path,
    two_in_two_out_model: Path,
    run_main: RunMain,
    monkeypatch: pytest.MonkeyPatch,
    block_paths: list[str],
) -> None:
    # Blocks of about 1,000 lines (a 64 KiB sample, --chunk_size 1000): dirt in the first
    # block and in a later one (Arrow parses them once the dirty lines are patched), and a
    # block with only a null and a missing field, which Arrow parses as it is.
    monkeypatch.setattr(json_io, "_SAMPLE_BYTES", 64 << 10)
    records = json_records(6000, seed=20)
    starts = [0, 3000]
    source = tmp_path / "d.jsonl"
    rejected = dirty_jsonl(source, records, starts)
    lines = source.read_text().split("\n")
    lines[4500] = json_line(records[4500], ("a", None))
    lines[4502] = json_line(records[4502], ("b", "null"))
    source.write_text("\n".join(lines))
    rejected |= {4500, 4502}
    rejects_file = tmp_path / "r.jsonl"

    result = run_main(
        "predict", "--model", str(two_in_two_out_model), "--input_file", str(source),
        "--keep_columns", "id", "--chunk_size", "1000", "--on_error", "skip",
        "--rejects_file", str(rejects_file), "--output_file", str(tmp_path / "out.parquet"),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert block_paths.count("patched") == 2 and block_paths.count("fast") >= 4
    expected = [(start + row, *why) for start in starts for row, why in JSON_REJECTS.items()]
    expected += [(4501, "a", "field 'a' is missing", None), (4503, "b", "value is null", None)]
    found = [(r["row"], r["column"], r["reason"], r["value"]) for r in rejects_of(rejects_file)]
    assert found == sorted(expected)
    assert json.loads(rejects_of(rejects_file)[0]["text"])["id"] == 6
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    kept = [i for i in range(len(records)) if i not in rejected]
    assert out["id"].tolist() == [records[i]["id"] for i in kept]
    a = np.array([json_value(records[i], i, "a", starts) for i in kept])
    b = np.array([json_value(records[i], i, "b", starts) for i in kept])
    assert a[kept.index(3)] == 2.5 and b[kept.index(3012)] == 7.0
    np.testing.assert_allclose(
        out["score"], two_input_reference(two_in_two_out_model, a, b), rtol=1e-5, atol=1e-6
    )


def test_jsonl_fail_mode_and_fill_value(
    tmp_path: Path, two_in_two_out_model: Path, run_main: RunMain
) -> None:
    records = json_records(50, seed=21)
    source = tmp_path / "d.jsonl"
    dirty_jsonl(source, records, [0])
    common = ["--model", str(two_in_two_out_model), "--input_file", str(source)]

    result = run_main("predict", *common)
    assert result.returncode == 65
    assert f"{source}: row 6, column 'b': value 'abc' is not a number" in error_of(result)

    # Without the bad values, --fill_value fills the missing field and the null.
    lines = source.read_text().split("\n")
    lines[5] = json.dumps(records[5])
    lines[14] = json.dumps(records[14])
    source.write_text("\n".join(lines))
    out = tmp_path / "out.parquet"
    result = run_main("predict", *common, "--fill_value", "0", "--output_file", str(out))
    assert result.returncode == 0, result.stderr
    a = np.array([r["a"] for r in records])
    b = np.array([float(r["b"]) for r in records])
    a[3], a[8], b[9], b[12] = 2.5, 0.0, 0.0, 7.0
    scores = pq.read_table(out).column("score").to_numpy()
    np.testing.assert_allclose(
        scores, two_input_reference(two_in_two_out_model, a, b), rtol=1e-5, atol=1e-6
    )


def test_json_array_values_parsed_one_by_one(
    tmp_path: Path, two_in_two_out_model: Path, run_main: RunMain
) -> None:
    records = json_records(30, seed=22)
    dirt = JSON_DIRT
    elements = [json_line(r, dirt.get(i)) for i, r in enumerate(records)]
    source = tmp_path / "d.json"
    source.write_text("[\n" + ",\n".join(elements) + "\n]\n")
    common = ["--model", str(two_in_two_out_model), "--input_file", str(source)]

    result = run_main("predict", *common)
    assert result.returncode == 65
    assert f"{source}: row 6 (line 7), column 'b': value 'abc' is not a number" in error_of(result)

    rejects_file = tmp_path / "r.jsonl"
    out = tmp_path / "out.parquet"
    result = run_main(
        "predict", *common, "--on_error", "skip", "--max_error_rate", "0.5",
        "--rejects_file", str(rejects_file), "--output_file", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = [(r["row"], r["column"], r["reason"], r["value"]) for r in rejects_of(rejects_file)]
    assert found == [(row, *reason) for row, reason in JSON_REJECTS.items()]
    kept = [i for i in range(len(records)) if i + 1 not in JSON_REJECTS]
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [records[i]["id"] for i in kept]
    a = np.array([json_value(records[i], i, "a", [0]) for i in kept])
    b = np.array([json_value(records[i], i, "b", [0]) for i in kept])
    np.testing.assert_allclose(
        table.column("score").to_numpy(),
        two_input_reference(two_in_two_out_model, a, b),
        rtol=1e-5,
        atol=1e-6,
    )


# -- reader level ------------------------------------------------------------------------------
def read(
    path: Path, types: dict[str, pa.DataType], skip: bool = True, **options: Any
) -> tuple[pa.Table, list[BadRecord]]:
    """The table and the bad records of `path` read with the model's column types."""
    bad: list[BadRecord] = []
    read_options = ReadOptions(
        column_types=lambda _schema: types, on_bad_record=bad.append if skip else None, **options
    )
    batches = list(reader_for(str(path), None, read_options).iter_batches())
    return pa.Table.from_batches(batches), bad


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 256 bytes, so that small files span many blocks."""
    for module in (csv_io, json_io):
        monkeypatch.setattr(module, "_SAMPLE_BYTES", 256)
        monkeypatch.setattr(module, "_MIN_BLOCK", 256)
    monkeypatch.setattr(csv_io, "_MAX_BLOCK", 256)


@pytest.mark.parametrize("position", [1, 150])
def test_csv_reader_same_reports_in_the_first_block_or_later(
    tmp_path: Path, small_blocks: None, position: int
) -> None:
    lines = [f"{i},{i}" for i in range(200)]
    lines[position] = f"{position},N/A?"
    lines[position + 3] = f"{position + 3},1.5"  # an integer column: 1.5 is a number
    path = tmp_path / "d.csv"
    path.write_text("id,x\n" + "\n".join(lines) + "\n")

    table, bad = read(path, {"x": pa.float64()})

    assert [(b.row, b.column, b.value) for b in bad] == [(position + 1, "x", "N/A?")]
    assert table.schema.field("x").type == pa.float64()
    assert table.schema.field("id").type == pa.int64()
    assert table.column("x").to_pylist()[position + 2] == 1.5
    assert table.num_rows == 199
    with pytest.raises(DataError, match=rf"row {position + 1}, column 'x': value 'N/A\?'"):
        read(path, {"x": pa.float64()}, skip=False)


def test_csv_reader_types_booleans_and_integers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("flag,n,x\ntrue,1,1\nfalse,2,0\ntrue,1.5,x\n")
    table, bad = read(path, {"flag": pa.float64(), "n": pa.int64(), "x": pa.bool_()})
    # A true/false column feeds a float input as 1 and 0, as a typed boolean column would.
    assert table.to_pylist() == [
        {"flag": 1.0, "n": 1, "x": True},
        {"flag": 0.0, "n": 2, "x": False},
    ]
    assert [(b.row, b.column, b.reason) for b in bad] == [
        (3, "n", "value '1.5' is not an integer, which the model needs")
    ]


def test_csv_reader_long_value_is_shortened_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    long = "x" * 100
    path.write_text(f"a\n1\n{long}\n")
    with pytest.raises(DataError) as failure:
        read(path, {"a": pa.float64()}, skip=False)
    assert f"value '{'x' * 37}...' is not a number" in str(failure.value)
    _, bad = read(path, {"a": pa.float64()})
    assert bad[0].value == long


def test_jsonl_reader_takes_the_fast_path_for_clean_and_quoted_blocks(
    tmp_path: Path, small_blocks: None, block_paths: list[str]
) -> None:
    # Every number quoted (some exporters do): parsed as text, converted after.
    path = tmp_path / "quoted.jsonl"
    path.write_text("".join(json.dumps({"x": str(i + 0.5), "y": i}) + "\n" for i in range(100)))
    table, bad = read(path, {"x": pa.float64(), "y": pa.float64()}, chunk_size=4)
    assert bad == [] and set(block_paths) == {"fast"} and len(block_paths) > 5
    assert table.column("x").to_pylist() == [i + 0.5 for i in range(100)]
    assert table.schema == pa.schema([("x", pa.float64()), ("y", pa.float64())])

    # A string among numbers in the first block: numbers are still the usual kind, so the
    # later clean blocks take the fast path.
    path = tmp_path / "mixed.jsonl"
    rows = [{"x": i + 0.5} for i in range(100)]
    rows[0] = {"x": "N/A?"}
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    block_paths.clear()
    table, bad = read(path, {"x": pa.float64()}, chunk_size=4)
    assert [(b.row, b.value) for b in bad] == [(1, "N/A?")]
    assert table.column("x").to_pylist() == [i + 0.5 for i in range(1, 100)]
    assert block_paths.count("patched") == 1  # the first block only
    assert set(block_paths) == {"fast", "patched"}


def test_jsonl_reader_lines_that_fail_other_ways_in_a_dirty_block(
    tmp_path: Path, small_blocks: None, block_paths: list[str]
) -> None:
    clean = [json.dumps({"id": i, "x": i}) for i in range(20)]  # the first block and more
    dirty = [
        '{"id": 101, "x": "2"}',
        '{"id": 102, "x": 3} {"id": 4, "x": 4}',  # two documents
        '{"id": "five", "x": 5}',  # another column does not fit
        '{"id": 104, "x": 1.5}',  # not an integer
        '{"id": 105, "x": 7, "new": 1}',
        '{"id": 106, "x": 8',  # cut short
        '{"id": 107, "x": 9, "x": 10}',
        '{"id": 108, "x": 99999999999999999999}',
        "",
        '{"id": 109, "x": true}',
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(clean + dirty) + "\n")
    table, bad = read(path, {"x": pa.int64()}, chunk_size=4)
    assert "fallback" in block_paths
    assert table.to_pylist()[20:] == [{"id": 101, "x": 2}, {"id": 109, "x": 1}]
    assert table.column("id").to_pylist()[:20] == list(range(20))
    reasons = {b.row - 20: b.reason for b in bad}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert reasons[2] == "more than one JSON value on the line"
    assert "column 'id'" in reasons[3]
    assert reasons[4] == "value '1.5' is not an integer, which the model needs"
    assert reasons[5].startswith("new fields ['new']")
    assert reasons[7] == "field 'x' appears twice"
    assert reasons[8].startswith("value '99999999999999999999' is not an integer")
    with pytest.raises(DataError, match=r"line 22: more than one JSON value on the line"):
        read(path, {"x": pa.int64()}, skip=False, chunk_size=4)


def test_jsonl_reader_escaped_key_is_decoded_line_by_line(
    tmp_path: Path, small_blocks: None, block_paths: list[str]
) -> None:
    # The patch looks for keys as plainly written; Arrow then fails again on this one.
    lines = [json.dumps({"x": i + 0.5}) for i in range(30)] + ['{"\\u0078": "2.5"}']
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    table, bad = read(path, {"x": pa.float64()}, chunk_size=4)
    assert bad == [] and table.column("x").to_pylist()[-1] == 2.5
    assert block_paths[-1] == "fallback"


def test_jsonl_reader_fail_mode_reports_the_first_bad_line_of_either_kind(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"x": 1}\n{"x": 2\n{"x": "abc"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: "):
        read(path, {"x": pa.float64()}, skip=False)
    path.write_text('{"x": 1}\n{"x": "abc"}\n{"x": 2\n')
    with pytest.raises(DataError, match=r"d\.jsonl: row 2, column 'x': value 'abc'"):
        read(path, {"x": pa.float64()}, skip=False)


@pytest.mark.parametrize("marker", ['"n/a"', "null"], ids=["fallback", "fast"])
def test_jsonl_reader_nulls_pass_unless_rejected(tmp_path: Path, marker: str) -> None:
    # With a string in the block, it is decoded line by line; without, Arrow parses it
    # whole and only the lines with nulls are looked at again.
    path = tmp_path / "d.jsonl"
    path.write_text(
        f'{{"x": 1, "y": 1}}\n{{"y": 2}}\n{{"x": null, "y": 3}}\n{{"x": {marker}, "y": 4}}\n'
    )
    table, bad = read(path, {"x": pa.float64()})
    assert table.column("x").to_pylist() == [1.0, None, None, None] and bad == []
    table, bad = read(path, {"x": pa.float64()}, reject_nulls=True)
    assert table.column("y").to_pylist() == [1]
    assert [(b.row, b.reason, b.value) for b in bad] == [
        (2, "field 'x' is missing", None),
        (3, "value is null", None),
        (4, "value is null", "n/a" if marker != "null" else None),
    ]
    with pytest.raises(DataError, match=r"row 2, column 'x': field 'x' is missing"):
        read(path, {"x": pa.float64()}, skip=False, reject_nulls=True)
