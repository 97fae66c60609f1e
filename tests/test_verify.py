"""`batchpredict verify`: an output folder's files against its manifest's records (size,
SHA-256, rows), with 0 when they match, 65 naming each output that does not, 66 without a
manifest. Real outputs of in-process runs on inputs written by pandas and pyarrow."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import batchpredict
from batchpredict.verification import OutputCheck, VerifyReport, failure_message
from conftest import Completed, make_frame, write_with_library
from stores import Store

RunMain = Callable[..., Completed]
#: The outputs of `scored`, one per input format (the output format follows the input's).
OUTPUTS = ("a.csv", "b.parquet", "c.jsonl")


@pytest.fixture
def scored(tmp_path: Path, mlp_model: Path, run_main: RunMain) -> Path:
    """An --output_dir with a CSV, a Parquet and a JSON lines output, fresh from a run."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for rows, name in zip((30, 41, 12), OUTPUTS, strict=True):
        fmt = name.rsplit(".", 1)[1]
        frame = make_frame(rows, seed=rows)
        frame.loc[2, "segment"] = "12"  # a text column whose first values look numeric
        write_with_library(frame, inputs / name, fmt)
    out = tmp_path / "out"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(inputs), "--output_dir",
        str(out), "--keep_columns", "id,segment", "--no_progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def verify(run_main: RunMain, path: Path | str, code: int, env: dict[str, str] | None = None
           ) -> Completed:  # fmt: skip
    result = run_main("verify", str(path), "--log_format", "json", env=env)
    assert result.returncode == code, (result.stdout, result.stderr)
    return result


def manifest_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "_manifest.json").read_text())
    return data


def test_the_manifest_records_versions_and_each_outputs_checksum(scored: Path) -> None:
    manifest = manifest_of(scored)
    assert manifest["manifest_version"] == 3 and manifest["engine"] == "local"
    versions = manifest["versions"]
    assert set(versions) == {"batchpredict", "tensorflow", "keras", "pyarrow", "numpy", "python"}
    assert versions["batchpredict"] == batchpredict.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    import pyarrow

    assert versions["pyarrow"] == pyarrow.__version__
    [made_with] = manifest["made_with"].values()
    assert made_with["versions"] == versions
    records = {record["output"]: record for record in manifest["outputs"]}
    assert sorted(records) == sorted(OUTPUTS)
    for name, rows in zip(OUTPUTS, (30, 41, 12), strict=True):
        data = (scored / name).read_bytes()
        assert records[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert records[name]["bytes"] == len(data) == records[name]["output_size"]
        assert records[name]["rows"] == rows


def test_a_fresh_folder_verifies(scored: Path, run_main: RunMain) -> None:
    result = verify(run_main, scored, 0)
    assert result.stdout.splitlines() == [
        f"verified 3 output(s) in {scored} against {scored}/_manifest.json: 83 rows, "
        f"{sum((scored / n).stat().st_size for n in OUTPUTS)} bytes, all as recorded"
    ]
    report = batchpredict.verify(str(scored))
    assert report.ok and [c.rows for c in report.outputs] == [30, 41, 12]


@pytest.mark.parametrize("name", ["d.tsv", "d.avro", "d.csv.gz"])
def test_other_formats_and_compressed_outputs_verify(
    name: str, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(23, seed=3)
    frame.loc[1, "segment"] = 'two\nlines, "quoted"'  # one row over two lines of text
    inputs = tmp_path / "in"
    inputs.mkdir()
    fmt = name.split(".")[1]
    plain = write_with_library(frame, tmp_path / f"d.{fmt}", fmt)
    data = plain.read_bytes()
    (inputs / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(inputs), "--output_dir",
        str(tmp_path / "out"), "--keep_columns", "id,segment", "--no_progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert verify(run_main, tmp_path / "out", 0).stdout.startswith("verified 1 output(s)")
    [check] = batchpredict.verify(str(tmp_path / "out" / name)).outputs
    assert (check.output, check.rows, check.problem) == (name, 23, None)


def test_the_error_names_ten_problems_and_counts_the_rest(tmp_path: Path) -> None:
    checks = tuple(
        OutputCheck(f"o{i}.csv", str(tmp_path / f"o{i}.csv"), None, None, "missing")
        for i in range(12)
    )
    report = VerifyReport(str(tmp_path), "m", complete=True, single=False, outputs=checks)
    message = failure_message(report)
    assert message.startswith("o0.csv: missing; o1.csv: missing;")
    assert "o9.csv: missing; and 2 more (listed on stdout)" in message
    assert "o10.csv" not in message


def test_a_truncated_output_fails_with_65_naming_it(scored: Path, run_main: RunMain) -> None:
    data = (scored / "a.csv").read_bytes()
    (scored / "a.csv").write_bytes(data[:-40])
    result = verify(run_main, scored, 65)
    problem = f"a.csv: truncated: {len(data) - 40} bytes, recorded {len(data)}"
    assert f"problem: {problem}" in result.stdout.splitlines()
    [failed] = [line for line in result.log_lines() if line["event"] == "run failed"]
    assert failed["error"] == problem and failed["exit_code"] == 65


def test_an_output_altered_at_the_same_size_fails(scored: Path, run_main: RunMain) -> None:
    data = bytearray((scored / "b.parquet").read_bytes())
    data[len(data) // 2] ^= 0x01
    (scored / "b.parquet").write_bytes(bytes(data))
    result = verify(run_main, scored, 65)
    assert "problem: b.parquet: altered: sha256 differs" in result.stdout.splitlines()
    assert "a.csv" not in result.stdout and "c.jsonl" not in result.stdout


def test_a_deleted_output_and_a_grown_one_are_both_named(scored: Path, run_main: RunMain) -> None:
    (scored / "c.jsonl").unlink()
    size = (scored / "a.csv").stat().st_size
    with (scored / "a.csv").open("a") as handle:
        handle.write("99,x,0.5\n")
    result = verify(run_main, scored, 65)
    assert result.stdout.splitlines() == [
        f"problem: a.csv: altered: {size + 9} bytes, recorded {size}",
        "problem: c.jsonl: missing",
        f"{scored}: 2 of 3 output(s) differ from {scored}/_manifest.json",
    ]


def test_a_record_whose_rows_differ_from_the_file_fails(scored: Path, run_main: RunMain) -> None:
    manifest = manifest_of(scored)
    manifest["outputs"][0]["rows"] += 1
    (scored / "_manifest.json").write_text(json.dumps(manifest))
    result = verify(run_main, scored, 65)
    assert "problem: a.csv: rows: 30, recorded 31" in result.stdout.splitlines()


def test_a_folder_without_success_is_not_verified(scored: Path, run_main: RunMain) -> None:
    (scored / "_SUCCESS").unlink()
    result = verify(run_main, scored, 65)
    assert result.stdout.startswith(f"problem: {scored}: incomplete: no _SUCCESS")
    # One output file is verified against its record all the same.
    verify(run_main, scored / "b.parquet", 0)


def test_one_output_file_is_verified_alone(scored: Path, run_main: RunMain) -> None:
    (scored / "a.csv").write_text("id\n")
    result = verify(run_main, scored / "b.parquet", 0)
    assert result.stdout.startswith(f"verified 1 output(s) in {scored}/b.parquet")
    result = verify(run_main, scored / "a.csv", 65)
    assert "problem: a.csv: truncated" in result.stdout
    (scored / "stray.csv").write_text("id\n1\n")
    result = verify(run_main, scored / "stray.csv", 65)
    assert f"{scored}/stray.csv: not recorded in {scored}/_manifest.json" in result.stderr


def test_no_manifest_exits_66(tmp_path: Path, run_main: RunMain) -> None:
    (tmp_path / "a.csv").write_text("id\n1\n")
    result = verify(run_main, tmp_path, 66)
    assert f"{tmp_path}: no _manifest.json" in result.stderr
    result = verify(run_main, tmp_path / "a.csv", 66)
    assert f"{tmp_path}/a.csv: no _manifest.json in the folders above it" in result.stderr
    verify(run_main, tmp_path / "nothing", 66)


def test_an_unreadable_manifest_exits_74(scored: Path, run_main: RunMain) -> None:
    (scored / "_manifest.json").write_text('{"outputs": [')
    result = verify(run_main, scored, 74)
    assert f"{scored}/_manifest.json: cannot read the manifest" in result.stderr


def test_a_bucket_folder_verifies_and_an_overwritten_object_fails(
    store: Store, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    name = store.new_bucket()
    local = write_with_library(make_frame(25, seed=4), tmp_path / "d.parquet", "parquet")
    store.upload(name, "in/d.parquet", local)
    scored = store.uri(name, "scored")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", store.uri(name, "in/d.parquet"),
        "--output_dir", scored, "--keep_columns", "id,segment", "--no_progress", env=store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = verify(run_main, scored, 0, env=store.env)
    assert result.stdout.startswith(f"verified 1 output(s) in {scored}")
    body = store.get(name, "scored/d.parquet")
    store.put(name, "scored/d.parquet", body[:-1] + b"X")
    result = verify(run_main, store.uri(name, "scored/d.parquet"), 65, env=store.env)
    assert "problem: d.parquet: altered: sha256 differs" in result.stdout


@pytest.mark.slow
def test_verify_imports_no_tensorflow(scored: Path) -> None:
    code = (
        "import sys, batchpredict; "
        f"assert batchpredict.verify({str(scored)!r}).ok; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
