"""Small JSON lines inputs read together: plain files are parsed by one Arrow call and
split back per file, anything else is read file by file; either way each file yields the
table, rows, errors and rejects it yields read alone. Small JSON lines outputs are encoded
by one polars call and cut back per output, byte for byte as written one by one.

Files written by pandas (and by hand for the odd shapes), a real Keras model
(`mlp_model`), the CLI called in-process."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import conftest
from batchpredict import reading
from batchpredict.formats.base import ReadOptions
from batchpredict.formats.json_group import read_group, small_file
from batchpredict.formats.json_io import JsonLinesReader
from batchpredict.formats.json_writer import JsonLinesWriter, encode_together
from conftest import N_FEATURES, Completed, make_frame, read_with_library

RunMain = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def write_parts(folder: Path, count: int, rows: int) -> list[Path]:
    """`count` JSON lines files of `rows` rows in `folder`, ids running on across files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        frame = make_frame(rows, seed=i)
        frame["id"] += i * 1000
        paths.append(conftest.write_with_library(frame, folder / f"part-{i:02d}.jsonl", "jsonl"))
    return paths


def read_alone(path: Path) -> pa.Table:
    """The file as its reader yields it read alone."""
    return pa.Table.from_batches(list(JsonLinesReader(str(path), ReadOptions()).iter_batches()))


def read_together(paths: Sequence[Path]) -> list[pa.Table] | None:
    """The files as `read_group` yields them (None where it declines)."""
    files = [small_file(str(p), p.read_bytes(), ReadOptions()) for p in paths]
    if any(f is None for f in files):
        return None
    return read_group([f for f in files if f is not None], ReadOptions())


def lines(*rows: dict[str, Any]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


PLAIN = lines({"id": 1, "x": 0.5, "s": "a"}, {"id": 2, "x": 1.25, "s": "b"})
#: Each differs from PLAIN in a way that makes the file alone infer other columns or types,
#: or (a null, a missing field) in a way that is not worth telling apart.
ODD_SHAPES = {
    "whole numbers in a float column": lines({"id": 3, "x": 1, "s": "c"}),
    "a field missing": lines({"id": 3, "x": 0.5, "s": "c"}, {"id": 4, "s": "d"}),
    "a null": lines({"id": 3, "x": None, "s": "c"}),
    "other key order": lines({"x": 0.5, "id": 3, "s": "c"}),
    "dates as text": lines({"id": 3, "x": 0.5, "s": "2024-01-02"}),
    "a list": lines({"id": 3, "x": 0.5, "s": "c", "l": [1, 2]}),
}


def test_plain_files_read_together_are_each_the_table_read_alone(tmp_path: Path) -> None:
    paths = write_parts(tmp_path, 5, 7)
    (tmp_path / "crlf.jsonl").write_bytes(paths[0].read_bytes().replace(b"\n", b"\r\n"))
    (tmp_path / "no_last_newline.jsonl").write_bytes(paths[1].read_bytes().rstrip(b"\n"))
    paths += [tmp_path / "crlf.jsonl", tmp_path / "no_last_newline.jsonl"]
    tables = read_together(paths)
    assert tables is not None  # grouped
    for path, table in zip(paths, tables, strict=True):
        alone = read_alone(path)
        assert table.schema == alone.schema, path.name
        assert table.equals(alone), path.name


@pytest.mark.parametrize("shape", sorted(ODD_SHAPES))
def test_a_file_that_may_infer_other_columns_alone_is_never_read_together(
    tmp_path: Path, shape: str
) -> None:
    paths = []
    for i, text in enumerate([PLAIN, PLAIN, ODD_SHAPES[shape], PLAIN]):
        paths.append(tmp_path / f"{i}.jsonl")
        paths[-1].write_text(text)
    assert read_together(paths) is None
    if shape != "a field missing" and shape != "a null":
        assert read_alone(paths[2]).schema != read_alone(paths[0]).schema


@pytest.mark.parametrize(
    "text",
    ["\ufeff" + PLAIN, " " + PLAIN, PLAIN + "\n" + PLAIN, PLAIN + "  \n", "[" + PLAIN + "]", ""],
    ids=["bom", "leading blank", "blank line", "blank last line", "array", "empty"],
)
def test_files_of_other_shapes_are_left_to_their_reader(text: str) -> None:
    assert small_file("f.jsonl", text.encode(), ReadOptions()) is None


def test_files_longer_than_the_record_bound_are_left_to_their_reader() -> None:
    data = PLAIN.encode()
    assert small_file("f.jsonl", data, ReadOptions(max_record_bytes=len(data))) is not None
    assert small_file("f.jsonl", data, ReadOptions(max_record_bytes=len(data) - 1)) is None


@pytest.fixture
def groups_read(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each group of files `read_group` was given during a run: how many, and whether it
    parsed them together."""
    found: list[tuple[int, bool]] = []

    def spy(files: Sequence[Any], options: ReadOptions) -> list[pa.Table] | None:
        tables = read_group(files, options)
        found.append((len(files), tables is not None))
        return tables

    monkeypatch.setattr(reading, "read_group", spy)
    return found


def predict(run_main: RunMain, inputs: Path, out: Path, model: Path, *extra: str) -> Completed:
    return run_main(
        "predict", "--model", str(model), "--input_file", str(inputs / "*.jsonl"),
        "--output_dir", str(out), "--features", ",".join(FEATURES), "--keep_columns", "id",
        "--log_format", "json", "--no_progress", *extra,
    )  # fmt: skip


def set_value(path: Path, row: int, column: str, value: Any) -> None:
    """Rewrite data row `row` (1-based) of a JSON lines file with `column` set to `value`."""
    rows = path.read_text().splitlines()
    decoded = json.loads(rows[row - 1])
    decoded[column] = value
    rows[row - 1] = json.dumps(decoded)
    path.write_text("\n".join(rows) + "\n")


def test_a_bad_row_in_the_7th_of_50_small_files_names_that_file_and_its_own_row(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, groups_read: list[tuple[int, bool]]
) -> None:
    paths = write_parts(tmp_path / "in", 50, 6)
    set_value(paths[6], 4, "f1", None)
    out = tmp_path / "out"
    result = predict(run_main, tmp_path / "in", out, mlp_model)
    assert result.returncode == 65, result.stderr
    assert f"{paths[6]}: row 4, column 'f1': value is null" in result.stderr
    assert groups_read == [(50, False)]  # the group had a null: each file read alone
    committed = json.loads((out / "_manifest.json").read_text())["outputs"]
    assert [e["output"] for e in committed] == [f"part-{i:02d}.jsonl" for i in range(6)]


def test_bad_rows_of_small_files_read_together_are_rejected_per_file(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, groups_read: list[tuple[int, bool]]
) -> None:
    paths = write_parts(tmp_path / "in", 50, 6)
    set_value(paths[6], 4, "f1", None)
    set_value(paths[22], 1, "f2", "not a number")
    with paths[40].open("a") as tail:
        tail.write('{"id": 40099, "f0": \n')  # a line that is not JSON, as row 7
    out = tmp_path / "out"
    result = predict(run_main, tmp_path / "in", out, mlp_model, "--on_error", "skip",
                     "--max_error_rate", "0.5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert groups_read == [(50, False)]  # not parsed together: each file read alone

    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["row"], r["column"]) for r in rejects] == [
        (str(paths[6]), 4, "f1"),
        (str(paths[22]), 1, "f2"),
        (str(paths[40]), 7, None),
    ]
    bad = {6: 4, 22: 1}
    for i, path in enumerate(paths):
        source = make_frame(6, seed=i).assign(id=lambda f, i=i: f.id + i * 1000)
        if i in bad:
            source = source.drop(index=bad[i] - 1)
        output = read_with_library(out / path.name, "jsonl")
        assert output["id"].tolist() == source["id"].tolist(), path.name
        expected = conftest.reference_predictions(mlp_model, source[FEATURES].to_numpy())
        np.testing.assert_allclose(output["prediction"], expected.reshape(-1), rtol=1e-5, atol=1e-6)
    recorded = json.loads((out / "_manifest.json").read_text())["outputs"]
    assert [(e["rows"], e["rejected_rows"]) for e in recorded] == [
        (6 - (i in bad), int(i in (*bad, 40))) for i in range(50)
    ]


def test_plain_small_files_read_together_give_each_output_its_rows_and_predictions(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, groups_read: list[tuple[int, bool]]
) -> None:
    paths = write_parts(tmp_path / "in", 70, 5)
    out = tmp_path / "out"
    result = predict(run_main, tmp_path / "in", out, mlp_model, "--on_error", "skip")
    assert result.returncode == 0, result.stderr
    assert sorted(groups_read) == [(6, True), (64, True)]  # read on two threads
    for i, path in enumerate(paths):
        source = make_frame(5, seed=i)
        output = read_with_library(out / path.name, "jsonl")
        assert output["id"].tolist() == (source["id"] + i * 1000).tolist(), path.name
        expected = conftest.reference_predictions(mlp_model, source[FEATURES].to_numpy())
        np.testing.assert_allclose(output["prediction"], expected.reshape(-1), rtol=1e-5, atol=1e-6)
    recorded = json.loads((out / "_manifest.json").read_text())["outputs"]
    assert [(e["output"], e["rows"], e["rejected_rows"]) for e in recorded] == [
        (path.name, 5, 0) for path in paths
    ]
    assert (out / "_SUCCESS").exists() and (out / "_rejects.jsonl").read_text() == ""


def test_auto_batch_size_is_timed_on_a_chunk_of_several_small_inputs(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    write_parts(tmp_path / "in", 30, 40)
    result = predict(run_main, tmp_path / "in", tmp_path / "out", mlp_model, "--chunk_size", "1024")
    assert result.returncode == 0, result.stderr
    [chosen] = [line for line in result.log_lines() if line["event"] == "batch size chosen"]
    # Sizes above one input's 40 rows were timed: 1,024 rows of 26 inputs.
    assert set(chosen["rows_per_second"]) == {"256", "1024"}


def test_an_output_encoded_with_others_that_cannot_be_written_leaves_no_temporary_file(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    paths = write_parts(tmp_path / "in", 6, 10)
    conftest.write_with_library(make_frame(300, seed=3), paths[3], "jsonl")  # too large
    out = tmp_path / "out"
    result = predict(run_main, tmp_path / "in", out, mlp_model, "--max_output_bytes", "4000")
    assert result.returncode == 74, result.stderr
    assert "--max_output_bytes" in result.stderr
    left = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    done = {f"part-0{i}.jsonl" for i in range(3)}
    # Outputs after part-03 were committed beside it, concurrently: each may be in place
    # (and then may be recorded) or not; part-03 never is, and nothing else is left.
    later = {"part-04.jsonl", "part-05.jsonl"}
    assert left - later == {"_manifest.json", *done}
    recorded = {e["output"] for e in json.loads((out / "_manifest.json").read_text())["outputs"]}
    assert done <= recorded <= done | (later & left)


def test_outputs_encoded_together_are_byte_for_byte_as_written_one_by_one(
    tmp_path: Path,
) -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "text": ["plain", "line\nend", 'quote " and \\', "ünïcode ✓", "", "tab\t"],
            "score": [0.1, float("nan"), float("inf"), -2.5e-300, None, 1e20],
            "flag": [True, False, None, True, False, True],
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column("probs", pa.array([[0.25, 0.75]] * 6, pa.list_(pa.float32())))
    batch = table.combine_chunks().to_batches()[0]
    batches = [batch.slice(0, 2), batch.slice(2, 0), batch.slice(2, 3), batch.slice(5, 1)]
    encoded = encode_together(batches)
    assert encoded is not None
    for i, (batch, text) in enumerate(zip(batches, encoded, strict=True)):
        writer = JsonLinesWriter(str(tmp_path / f"{i}.jsonl"))
        writer.open(batch.schema)
        writer.write(batch)
        writer.commit()
        assert (tmp_path / f"{i}.jsonl").read_bytes() == text, i
    assert encode_together([batches[0], batches[0].select(["id"])]) is None  # two schemas
