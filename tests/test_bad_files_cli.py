"""Bad files, end to end: a documented exit code and one log line naming the file.

Every bad file of the third-party corpora (../shared/corpora, see its README "Known facts")
and a few made here must make `batchpredict predict` exit 65 (data), 66 (missing or empty)
or 74 (corrupt or truncated) with one JSON log line that names the file, without a Python
traceback, a crash or an output file.

TensorFlow takes seconds to start, so only a representative few files run through the
installed command; the full lists run through `batchpredict.cli.main` in ONE subprocess
(DRIVER below), which reports each file's exit code and stderr as it goes, so a crash still
names the file that caused it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Completed

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
HAVE_CORPORA = CORPORA.is_dir()

pytestmark = pytest.mark.slow
needs_corpora = pytest.mark.skipif(not HAVE_CORPORA, reason=f"no corpora folder at {CORPORA}")

DOCUMENTED = {65, 66, 74}


@dataclass(frozen=True)
class Expect:
    """What a bad file must give: one of `codes`, and a message holding each of `says`."""

    codes: frozenset[int]
    says: tuple[str, ...] = ()
    input_format: str | None = None

    @property
    def args(self) -> list[str]:
        return ["--input_format", self.input_format] if self.input_format else []


def expect(*codes: int, says: tuple[str, ...] = (), input_format: str | None = None) -> Expect:
    return Expect(frozenset(codes), says, input_format)


# -- the corpora's bad files (paths relative to CORPORA) ---------------------------------
CORRUPT_PARQUET = expect(74, says=("Parquet",))
CORRUPT_AVRO = expect(74, says=("Avro",))
NAMED_CORPUS_FILES: dict[str, Expect] = {
    "avro/lang/c/tests/avro-1238-truncated.avro": expect(74, says=("truncated Avro block",)),
    "avro/lang/c/tests/avro-1237-bad-union-discriminant.avro": expect(74, says=("union",)),
    "avro/share/test/data/test.avro12": expect(74, says=("not an Avro",), input_format="avro"),
    # Raw Avro datums without the object container header.
    "tensorflow-io/tests/test_avro/weather.avro": expect(74, says=("not an Avro",)),
    # A 4-field row under a 3-column header.
    "csvkit/examples/bad.csv": expect(65, says=("row 1", "expected 3 fields, got 4")),
    "csvkit/examples/test_latin1.csv": expect(65, says=("line 3", "UTF-8")),
    "csvkit/examples/test_utf16_big.csv": expect(65, says=("UTF-16",)),
    "csvkit/examples/test_utf16_little.csv": expect(65, says=("UTF-16",)),
    "csvkit/examples/empty.csv": expect(66, says=("empty",)),
}
#: Messages more specific than "a data error" for some JSONTestSuite n_ files.
JSON_SAYS: dict[str, tuple[str, ...]] = {
    "n_structure_100000_opening_arrays.json": ("nested too deeply",),
    "n_string_invalid_utf8_after_escape.json": ("invalid UTF-8",),
    "n_structure_UTF8_BOM_no_data.json": ("empty",),
}


def corpus_bad_files() -> dict[str, Expect]:
    """Every bad file of the corpora, by path relative to CORPORA (empty without corpora)."""
    if not HAVE_CORPORA:
        return {}
    found: dict[str, Expect] = {}
    # ARROW-GH-43605 is the one bad_data file that pyarrow now reads.
    for path in sorted((CORPORA / "parquet-testing" / "bad_data").glob("*.parquet")):
        if "43605" not in path.name:
            found[str(path.relative_to(CORPORA))] = CORRUPT_PARQUET
    found.update(NAMED_CORPUS_FILES)
    # Every n_ file must be rejected; the three empty ones are "empty input" (66).
    for path in sorted((CORPORA / "JSONTestSuite" / "test_parsing").glob("n_*.json")):
        found[str(path.relative_to(CORPORA))] = expect(65, 66, says=JSON_SAYS.get(path.name, ()))
    return found


#: Run through the installed command: different failure kinds of each corpus.
CLI_CORPUS_FILES = [
    "parquet-testing/bad_data/PARQUET-1481.parquet",  # corrupt schema in the footer
    "parquet-testing/bad_data/ARROW-GH-41321.parquet",  # corrupt page
    "parquet-testing/bad_data/ARROW-GH-41317.parquet",  # columns of different lengths
    "avro/lang/c/tests/avro-1238-truncated.avro",
    "avro/lang/c/tests/avro-1237-bad-union-discriminant.avro",
    "avro/share/test/data/test.avro12",
    "tensorflow-io/tests/test_avro/weather.avro",
    "csvkit/examples/bad.csv",
    "csvkit/examples/test_latin1.csv",
    "csvkit/examples/test_utf16_little.csv",
    "csvkit/examples/empty.csv",
    "JSONTestSuite/test_parsing/n_structure_100000_opening_arrays.json",
    "JSONTestSuite/test_parsing/n_object_trailing_comma.json",
    "JSONTestSuite/test_parsing/n_string_invalid_utf8_after_escape.json",
    "JSONTestSuite/test_parsing/n_structure_UTF8_BOM_no_data.json",
]
#: Without the corpora the in-process sweep covers the files made here only.
CORPUS_EXPECT = {**corpus_bad_files(), **(NAMED_CORPUS_FILES if HAVE_CORPORA else {})}


# -- bad files made here ------------------------------------------------------------------
def _parquet_bytes(rows: int, row_group_size: int) -> bytes:
    table = pa.table(
        {"x": np.arange(rows, dtype=np.float64), "label": [f"row{i}" for i in range(rows)]}
    )
    sink = io.BytesIO()
    pq.write_table(
        table, sink, row_group_size=row_group_size, compression="none", write_page_checksum=True
    )
    return sink.getvalue()


def _corrupt_last_row_group(data: bytes) -> bytes:
    """Flip one bit in the middle of column x's pages in the last row group (CRC-checked)."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    column = meta.row_group(meta.num_row_groups - 1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    corrupt = bytearray(data)
    corrupt[start + column.total_compressed_size * 3 // 4] ^= 1
    return bytes(corrupt)


def _avro_bytes(rows: int, codec: str) -> bytes:
    import fastavro

    schema = {
        "type": "record",
        "name": "Row",
        "fields": [{"name": "x", "type": "double"}, {"name": "label", "type": "string"}],
    }
    records = [{"x": float(i), "label": f"row{i}"} for i in range(rows)]
    sink = io.BytesIO()
    fastavro.writer(sink, schema, records, codec=codec)
    return sink.getvalue()


def _avro_block_count_too_small() -> bytes:
    """10 records in a block whose header says 9: fastavro silently drops the last one."""
    import fastavro

    data = bytearray(_avro_bytes(10, "null"))
    block = next(iter(fastavro.block_reader(io.BytesIO(bytes(data)))))
    assert data[block.offset] == 20  # zig-zag 10
    data[block.offset] = 18  # zig-zag 9
    return bytes(data)


def _csv_rows(rows: int) -> bytes:
    return ("x,label\n" + "".join(f"{i}.5,row{i}\n" for i in range(rows))).encode()


def synthetic_bad_files() -> dict[str, tuple[Callable[[], bytes], Expect]]:
    """File name -> (its content, what it must give)."""
    deep = 50_000
    return {
        "zero_bytes.csv": (lambda: b"", expect(66, says=("empty",))),
        "header_only.csv": (lambda: b"x,label\n", expect(66, says=("holds no data rows",))),
        "header_only_no_newline.csv": (lambda: b"x,label", expect(66, says=("no data rows",))),
        "blank_lines.jsonl": (lambda: b"\n  \n\n", expect(66, says=("empty",))),
        # Over 1 MB, so that the bad byte is past the block used for type inference.
        "latin1_late.csv": (
            lambda: _csv_rows(120_000) + "9.5,caf\xe9\n".encode("latin1"),
            expect(65, says=("invalid UTF-8",)),
        ),
        "truncated.csv.gz": (
            lambda: gzip.compress(_csv_rows(5000))[:-100],
            expect(74, says=("Truncated",)),
        ),
        # Arrow's JSON parser crashed the process (segfault) on this.
        "deep_nesting.jsonl": (
            lambda: (
                b'{"x": 1}\n{"x": 2, "deep": ' + b'{"a": ' * deep + b"1" + b"}" * (deep + 1) + b"\n"
            ),
            expect(65, says=("line 2", "nested too deeply")),
        ),
        "truncated.parquet": (
            lambda: _parquet_bytes(1000, 1000)[:-30],
            expect(74, says=("not a readable Parquet file",)),
        ),
        "corrupt_last_row_group.parquet": (
            lambda: _corrupt_last_row_group(_parquet_bytes(20_000, 5000)),
            expect(74, says=("row group 4 of 4 (rows 15001-20000)", "column 'x'", "CRC")),
        ),
        "truncated_deflate.avro": (
            lambda: _avro_bytes(2000, "deflate")[:-40],
            expect(74, says=("truncated Avro block",)),
        ),
        "block_count_too_small.avro": (
            _avro_block_count_too_small,
            expect(74, says=("records 1-9", "left over")),
        ),
    }


SYNTHETIC = synthetic_bad_files()
CLI_SYNTHETIC_FILES = ["header_only.csv", "deep_nesting.jsonl", "block_count_too_small.avro"]


# -- checks -------------------------------------------------------------------------------
def problems_with(path: Path, code: Any, stderr: str, wanted: Expect) -> list[str]:
    """What is wrong with a failed run on `path`; empty when it failed as documented."""
    problems = []
    if code not in wanted.codes:
        problems.append(f"exit code {code}, expected one of {sorted(wanted.codes)}")
    if code not in DOCUMENTED:
        problems.append(f"exit code {code} is not a documented data/input/I-O code")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    records = []
    for line in stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            problems.append(f"a stderr line that is not a JSON log line: {line[:120]!r}")
    failures = [r for r in records if r.get("event") == "run failed"]
    if len(failures) != 1:
        problems.append(f"{len(failures)} 'run failed' log lines instead of one")
    for failure in failures:
        message = str(failure.get("error", ""))
        if "traceback" in failure:
            problems.append("the failure log line carries a traceback")
        if failure.get("exit_code") != code:
            problems.append(f"logged exit_code {failure.get('exit_code')} but exited {code}")
        if str(path) not in message:
            problems.append(f"the message does not name the file: {message!r}")
        if "\n" in message:
            problems.append("the message spans several lines")
        problems.extend(f"no {s!r} in {message!r}" for s in wanted.says if s not in message)
    return problems


def leftovers(folder: Path, inputs: set[str]) -> list[str]:
    """Files in `folder` that are not inputs: outputs, temporary or partial files."""
    return sorted(p.name for p in folder.iterdir() if p.name not in inputs)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def x_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras model with one float32 input `x` of shape [None, 1]."""
    import keras

    inputs = keras.Input(shape=(1,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="y")(inputs))
    path = tmp_path_factory.mktemp("bad_files_model") / "x.keras"
    model.save(path)
    return path


def _copy_corpus_file(relative: str, folder: Path) -> Path:
    """A writable copy of a corpus file (outputs would go beside it; the corpora are
    read-only), in a folder of its own named after the corpus path."""
    target = folder / relative.replace("/", "__")
    target.mkdir(parents=True)
    copy = target / Path(relative).name
    shutil.copyfile(CORPORA / relative, copy)
    return copy


def mapping_args(path: Path) -> list[str]:
    """`--features` naming a column the file has, so that the one-input model's column
    mapping (planned from a Parquet footer or a CSV header before any row is read) fits,
    and what is tested is how the file's damage is reported."""
    column: str | None = None
    if path.suffix == ".parquet":
        try:
            column = pq.read_schema(path).names[0]
        except (pa.ArrowException, OSError, IndexError):
            return []  # a damaged footer is the error to report
    elif path.suffix == ".csv":
        try:
            with path.open(encoding="utf-8") as handle:
                column = handle.readline().strip().split(",")[0] or None
        except UnicodeDecodeError:
            return []  # text that is not UTF-8 is the error to report
    return ["--features", column] if column and "\x00" not in column else []


# -- through the installed command ---------------------------------------------------------
def _run_and_check(
    run_cli: Callable[..., Completed], model: Path, path: Path, wanted: Expect, *extra: str
) -> None:
    before = {p.name for p in path.parent.iterdir()}
    result = run_cli(
        "predict",
        "--model",
        str(model),
        "--input_file",
        str(path),
        *wanted.args,
        *mapping_args(path),
        *extra,
    )
    problems = problems_with(path, result.returncode, result.stderr, wanted)
    assert not problems, f"{path.name}: {problems}\nstderr:\n{result.stderr[-3000:]}"
    assert result.stdout == ""
    assert leftovers(path.parent, before) == []


@pytest.mark.corpora
@needs_corpora
@pytest.mark.parametrize("relative", CLI_CORPUS_FILES, ids=lambda r: Path(r).name)
def test_bad_corpus_file_through_installed_command(
    relative: str, run_cli: Callable[..., Completed], x_model: Path, tmp_path: Path
) -> None:
    path = _copy_corpus_file(relative, tmp_path)
    _run_and_check(run_cli, x_model, path, CORPUS_EXPECT[relative])


@pytest.mark.parametrize("name", CLI_SYNTHETIC_FILES)
def test_bad_made_file_through_installed_command(
    name: str, run_cli: Callable[..., Completed], x_model: Path, tmp_path: Path
) -> None:
    content, wanted = SYNTHETIC[name]
    path = tmp_path / name
    path.write_bytes(content())
    _run_and_check(run_cli, x_model, path, wanted)


def test_corrupt_page_after_written_chunks_leaves_no_output(
    run_cli: Callable[..., Completed], x_model: Path, tmp_path: Path
) -> None:
    # Small chunks: rows 1-15000 are predicted and written to the temporary output before
    # the corrupt page of the last row group is read.
    content, wanted = SYNTHETIC["corrupt_last_row_group.parquet"]
    path = tmp_path / "in" / "corrupt_last_row_group.parquet"
    path.parent.mkdir()
    path.write_bytes(content())
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    options = ("--output_file", str(output), "--chunk_size", "1000", "--batch_size", "250")
    _run_and_check(run_cli, x_model, path, wanted, *options)
    assert list(output.parent.iterdir()) == []

    # The same file before the corruption predicts every row: the model and the options
    # are fine, the corrupt page is what failed.
    path.write_bytes(_parquet_bytes(20_000, 5000))
    result = run_cli("predict", "--model", str(x_model), "--input_file", str(path), *options)
    assert result.returncode == 0, result.stderr[-2000:]
    assert pq.read_metadata(path).num_rows == 20_000
    assert len(output.read_text().splitlines()) == 20_001


# -- every file, in one process ------------------------------------------------------------
DRIVER = r"""
import io, json, sys
from batchpredict.cli import main

model, jobs_file = sys.argv[1], sys.argv[2]
with open(jobs_file, encoding="utf-8") as handle:
    jobs = json.load(handle)
real_stderr = sys.stderr
for job in jobs:
    print(json.dumps({"started": job["path"]}), flush=True)
    captured = io.StringIO()
    sys.stderr = captured  # batchpredict's log lines go to sys.stderr as it is at the run
    try:
        code = main(["predict", "--model", model, "--input_file", job["path"], *job["args"]])
    except BaseException as exc:  # escaping main at all is a bug to report
        code = f"{type(exc).__name__} escaped main: {exc}"
    finally:
        sys.stderr = real_stderr
    result = {"path": job["path"], "code": code, "stderr": captured.getvalue()}
    print(json.dumps(result), flush=True)
"""


@dataclass(frozen=True)
class InProcess:
    """One file's outcome in the driver."""

    path: Path
    wanted: Expect
    code: Any
    stderr: str


@pytest.fixture(scope="session")
def in_process_results(
    x_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, InProcess]:
    """Every bad file (corpora and made here) through `cli.main` in one subprocess,
    keyed by corpus-relative path or made-file name; checks that nothing is left behind."""
    folder = tmp_path_factory.mktemp("bad_files_in_process")
    files: dict[str, tuple[Path, Expect]] = {}
    for relative, wanted in CORPUS_EXPECT.items():
        files[relative] = (_copy_corpus_file(relative, folder / "corpora"), wanted)
    made = folder / "made"
    made.mkdir()
    for name, (content, wanted) in SYNTHETIC.items():
        (made / name).write_bytes(content())
        files[name] = (made / name, wanted)
    before = {str(p) for p in folder.rglob("*")}

    jobs = [
        {"path": str(path), "args": [*wanted.args, *mapping_args(path)]}
        for path, wanted in files.values()
    ]
    jobs_file = folder / "jobs.json"
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(x_model), str(jobs_file)],
        capture_output=True,
        env=env,
        timeout=900,
        check=False,
    )
    outcomes: dict[str, dict[str, Any]] = {}
    started = None
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "started" in record:
                started = record["started"]
            else:
                outcomes[record["path"]] = record
                started = None
    if started is not None or proc.returncode != 0:
        pytest.fail(
            f"the driver died (return code {proc.returncode}) while running {started}:\n"
            + proc.stderr.decode("utf-8", "replace")[-3000:]
        )
    after = {str(p) for p in folder.rglob("*")}
    assert sorted(after - before - {str(jobs_file)}) == [], "outputs or temporary files left"

    results = {}
    for key, (path, wanted) in files.items():
        outcome = outcomes[str(path)]
        results[key] = InProcess(path, wanted, outcome["code"], outcome["stderr"])
    return results


def _report(results: list[InProcess]) -> list[str]:
    return [
        f"{r.path.name}: {'; '.join(found)}"
        for r in results
        if (found := problems_with(r.path, r.code, r.stderr, r.wanted))
    ]


@pytest.mark.corpora
@needs_corpora
def test_every_bad_corpus_file_fails_as_documented(
    in_process_results: dict[str, InProcess],
) -> None:
    corpus = [r for key, r in in_process_results.items() if key in CORPUS_EXPECT]
    # 7 parquet bad_data files, 4 Avro, 5 csvkit, 188 JSONTestSuite n_ files.
    assert len(corpus) >= 200
    problems = _report(corpus)
    assert not problems, "\n".join(problems)


def test_every_bad_made_file_fails_as_documented(
    in_process_results: dict[str, InProcess],
) -> None:
    made = [in_process_results[name] for name in SYNTHETIC]
    problems = _report(made)
    assert not problems, "\n".join(problems)


def test_exit_codes_per_corpus(in_process_results: dict[str, InProcess]) -> None:
    """The distribution is pinned: corrupt containers are I/O errors (74), never 65."""
    by_corpus: dict[str, dict[Any, int]] = {}
    for key, result in in_process_results.items():
        corpus = key.split("/")[0] if key in CORPUS_EXPECT else "made"
        counts = by_corpus.setdefault(corpus, {})
        counts[result.code] = counts.get(result.code, 0) + 1
    if HAVE_CORPORA:
        assert by_corpus["parquet-testing"] == {74: 7}
        assert by_corpus["avro"] == {74: 3}
        assert by_corpus["tensorflow-io"] == {74: 1}
        assert by_corpus["csvkit"] == {65: 4, 66: 1}
        assert by_corpus["JSONTestSuite"] == {65: 185, 66: 3}
    assert set(by_corpus["made"]) <= DOCUMENTED
