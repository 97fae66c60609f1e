"""Hostile inputs: huge lines and rows, footers that lie, decompression bombs.

Each must end in seconds, with bounded memory and a documented exit code. The slow tests
run the CLI in a child process that reports its own peak memory (`VmHWM`); the files
are built here, streamed to disk, never held whole in memory.
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fastavro
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import Completed

MIB = 1 << 20
#: What a hostile file may cost at most: the model and TensorFlow take ~0.7 GB of it.
MAX_RSS_BYTES = 1500 * MIB
MAX_SECONDS = 60
FEATURES = "f0,f1,f2,f3"
GOOD_LINE = b'{"id":1,"f0":1,"f1":2,"f2":3,"f3":4,"segment":"a"}\n'

# VmHWM, the high-water mark of this process's own memory: ru_maxrss would also count the
# parent's, which Linux carries into a child started by vfork and exec (a test worker
# grown to 1.5 GB by earlier tests then reads as a 1.5 GB child).
_DRIVER = """
import os, sys
from batchpredict import cli
code = cli.main(sys.argv[1:])
sys.stdout.flush()
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
sys.stderr.write(f"\\npeak_rss_kib={peak}\\n")
sys.stderr.flush()
os._exit(code)
"""


@dataclass
class Measured:
    returncode: int
    stderr: str
    seconds: float
    peak_rss: int


def run_measured(*args: str, env: dict[str, str] | None = None) -> Measured:
    """`batchpredict ARGS` in a child process (the environment without BATCHPREDICT_
    variables, plus `env`): exit code, stderr, wall time, peak RSS."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    env = {**inherited, **(env or {})}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, *args, "--no_progress", "--log_format", "console"],
        capture_output=True,
        text=True,
        env=env,
        timeout=MAX_SECONDS * 2,
    )
    seconds = time.monotonic() - started
    marker = done.stderr.rpartition("peak_rss_kib=")[2].strip()
    assert marker.isdigit(), done.stderr[-2000:]
    return Measured(done.returncode, done.stderr, seconds, int(marker) * 1024)


def assert_bounded(result: Measured, code: int) -> None:
    """The run ended with `code`, in time and within the memory bound."""
    assert result.returncode == code, result.stderr[-2000:]
    assert result.seconds < MAX_SECONDS
    assert result.peak_rss < MAX_RSS_BYTES, f"peak RSS {result.peak_rss / MIB:.0f} MiB"


def write_long_line_json(path: Path, mebibytes: int, opener: Callable[..., io.IOBase]) -> None:
    """JSON lines: a good line, one `mebibytes` long line (a valid record), a good line."""
    chunk = b"x" * MIB
    with opener(path, "wb") as out:
        out.write(GOOD_LINE)
        out.write(b'{"id":2,"f0":1,"f1":2,"f2":3,"f3":4,"segment":"')
        for _ in range(mebibytes):
            out.write(chunk)
        out.write(b'"}\n')
        out.write(GOOD_LINE)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def line_200_mib(hostile_dir: Path) -> Path:
    path = hostile_dir / "line200.jsonl"
    write_long_line_json(path, 200, open)
    return path


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> bytes:
    return _varint((value << 1) ^ (value >> 63))


def parquet_claiming_rows(path: Path, claimed: int) -> None:
    """A 3-row Parquet file whose footer (file and row group `num_rows`) claims `claimed`
    rows; the column chunks still say 3 values.

    In Thrift's compact encoding both counts are an i64 field following the previous
    field (header byte 0x16) holding zigzag(3) = 0x06, as is each chunk's `num_values`:
    the occurrences replaced are those that give the wanted metadata.
    """
    table = pa.table({name: [1.0, 2.0, 3.0] for name in FEATURES.split(",")})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none", write_statistics=False)
    data = sink.getvalue()
    length = struct.unpack("<I", data[-8:-4])[0]
    body, footer = data[: -8 - length], data[-8 - length : -8]
    old, new = b"\x16" + _zigzag(3), b"\x16" + _zigzag(claimed)
    spots = [i for i in range(len(footer)) if footer.startswith(old, i)]
    for chosen in itertools.combinations(spots, 2):
        patched = bytearray(footer)
        for at in sorted(chosen, reverse=True):
            patched[at : at + len(old)] = new
        candidate = body + bytes(patched) + struct.pack("<I", len(patched)) + b"PAR1"
        try:
            metadata = pq.read_metadata(io.BytesIO(candidate))
        except (pa.ArrowException, OSError):
            continue
        group = metadata.row_group(0)
        if metadata.num_rows == claimed == group.num_rows and group.column(0).num_values == 3:
            path.write_bytes(candidate)
            return
    raise AssertionError("the footer's num_rows fields were not found")


def avro_deflate_bomb(path: Path, inflated: int) -> None:
    """An Avro file (deflate) whose one block inflates to `inflated` zero bytes."""
    schema = {
        "type": "record",
        "name": "row",
        "fields": [{"name": name, "type": "double"} for name in FEATURES.split(",")],
    }
    sync = b"S" * 16
    head = io.BytesIO()
    fastavro.writer(head, schema, [], codec="deflate", sync_marker=sync)
    header = head.getvalue()
    header = header[: header.index(sync) + len(sync)]
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    zeros = bytes(4 * MIB)
    parts = [deflate.compress(zeros) for _ in range(inflated // len(zeros))]
    payload = b"".join([*parts, deflate.flush()])
    with path.open("wb") as out:
        out.write(header)
        out.write(_zigzag(inflated // 32) + _zigzag(len(payload)))
        out.write(payload)
        out.write(sync)


def gzip_bomb_csv(path: Path, gibibytes: int) -> None:
    """A .csv.gz of `gibibytes` GiB of good rows: one 16 MiB gzip member, repeated."""
    row = b"1,0.5,1.5,2.5,3.5,a\n"
    member = gzip.compress(row * (16 * MIB // len(row)), compresslevel=9)
    with path.open("wb") as out:
        out.write(gzip.compress(b"id,f0,f1,f2,f3,segment\n"))
        for _ in range(gibibytes * 64):
            out.write(member)


def temporaries(directory: Path) -> Iterator[Path]:
    return (p for p in directory.rglob(".*") if p.name.endswith(".tmp"))


# -- JSON lines ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_17_mib_json_line_is_read(hostile_dir: Path, mlp_model: Path) -> None:
    """Longer than a block but within --max_record_bytes: read, in linear time."""
    path = hostile_dir / "line17.jsonl"
    write_long_line_json(path, 17, open)
    out = hostile_dir / "out17"
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(out), "--features", FEATURES,
    )  # fmt: skip
    assert_bounded(result, 0)
    assert len((out / "line17.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_200_mib_json_line_fails_naming_its_line(
    line_200_mib: Path, hostile_dir: Path, mlp_model: Path
) -> None:
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(line_200_mib),
        "--output_dir", str(hostile_dir / "out200"), "--features", FEATURES,
    )  # fmt: skip
    assert_bounded(result, 65)
    assert (
        f"{line_200_mib}: row 2 (line 2, byte {len(GOOD_LINE)}): line longer than "
        f"--max_record_bytes ({64 * MIB} bytes)"
    ) in result.stderr


@pytest.mark.slow
def test_a_200_mib_gzip_json_line_is_rejected_with_skip(hostile_dir: Path, mlp_model: Path) -> None:
    path = hostile_dir / "line200.jsonl.gz"
    write_long_line_json(path, 200, functools.partial(gzip.open, compresslevel=1))
    out = hostile_dir / "out200gz"
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(out), "--features", FEATURES,
        "--on_error", "skip", "--max_error_rate", "0.5",
    )  # fmt: skip
    assert_bounded(result, 0)
    rejects = (out / "_rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1
    assert len(rejects[0]) < 5000  # the text is cut, not 200 MiB
    assert "--max_record_bytes" in rejects[0]
    with gzip.open(out / "line200.jsonl.gz", "rt") as predicted:
        assert len(predicted.read().splitlines()) == 2


def test_a_json_line_over_the_limit_is_a_bad_row(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Completed]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD_LINE * 3 + b'{"id":4,"segment":"' + b"y" * 5000 + b'"}\n' + GOOD_LINE)
    args = ["predict", "--model", str(mlp_model), "--input_file", str(path)]
    args += ["--features", FEATURES, "--max_record_bytes", "1000"]
    failed = run_main(*args, "--output_dir", str(tmp_path / "a"))
    assert failed.returncode == 65
    assert f"row 4 (line 4, byte {3 * len(GOOD_LINE)}): line longer than" in failed.stderr
    skipped = run_main(
        *args, "--output_dir", str(tmp_path / "b"), "--on_error", "skip", "--max_error_rate", "1"
    )
    assert skipped.returncode == 0, skipped.stderr
    assert len((tmp_path / "b" / "in.jsonl").read_text().splitlines()) == 4


def test_a_json_array_element_over_the_limit_fails(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Completed]
) -> None:
    path = tmp_path / "in.json"
    big = b'{"f0":1,"f1":2,"f2":3,"f3":4,"s":"' + b"y" * 5000 + b'"}'
    path.write_bytes(b'[{"f0":1,"f1":2,"f2":3,"f3":4,"s":"a"},\n' + big + b"]")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(tmp_path / "out"), "--features", FEATURES,
        "--max_record_bytes", "1000",
    )  # fmt: skip
    assert result.returncode == 65
    assert "line 2: array element longer than --max_record_bytes (1000)" in result.stderr


# -- CSV, Parquet, Avro ----------------------------------------------------------------
@pytest.fixture(scope="module")
def row_200_mib(hostile_dir: Path) -> Path:
    """CSV: a good row, one 200 MiB row (valid but for its length), a good row."""
    path = hostile_dir / "row200.csv"
    chunk = b"x" * MIB
    with path.open("wb") as out:
        out.write(b"id,f0,f1,f2,f3,segment\n1,1,2,3,4,a\n2,1,2,3,4,")
        for _ in range(200):
            out.write(chunk)
        out.write(b"\n3,1,2,3,4,c\n")
    return path


@pytest.mark.slow
def test_a_200_mib_csv_row_fails_naming_its_row(
    row_200_mib: Path, hostile_dir: Path, mlp_model: Path
) -> None:
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(row_200_mib),
        "--output_dir", str(hostile_dir / "outcsv"), "--features", FEATURES,
    )  # fmt: skip
    assert_bounded(result, 65)
    assert f"{row_200_mib}: row 2: row longer than --max_record_bytes (67108864 bytes)" in (
        result.stderr
    )
    assert not (hostile_dir / "outcsv").exists() or not any((hostile_dir / "outcsv").iterdir())


@pytest.mark.slow
def test_a_200_mib_csv_row_is_rejected_with_skip(
    row_200_mib: Path, hostile_dir: Path, mlp_model: Path
) -> None:
    out = hostile_dir / "outcsv_skip"
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(row_200_mib),
        "--output_dir", str(out), "--features", FEATURES,
        "--on_error", "skip", "--max_error_rate", "1",
    )  # fmt: skip
    assert_bounded(result, 0)
    rejects = (out / "_rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and len(rejects[0]) < 5000  # the text is cut, not 200 MiB
    assert '"row": 2' in rejects[0] and "--max_record_bytes" in rejects[0]
    assert len((out / "row200.csv").read_text().splitlines()) == 3  # header and two rows


@pytest.mark.slow
def test_a_parquet_footer_claiming_2_40_rows_fails(hostile_dir: Path, mlp_model: Path) -> None:
    path = hostile_dir / "claims.parquet"
    parquet_claiming_rows(path, 1 << 40)
    assert path.stat().st_size < 2000
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(hostile_dir / "outpq"),
    )  # fmt: skip
    assert_bounded(result, 74)
    assert (
        f"{path}: corrupt Parquet footer: row group 1 of 1 (after row 0) claims {1 << 40} "
        "rows, but column 'f0' holds 3 values"
    ) in result.stderr


def test_a_parquet_row_group_with_fewer_rows_than_claimed_is_read_in_chunks(
    tmp_path: Path,
) -> None:
    """Even when the chunks' value counts lie too, finding the bad column streams it."""
    from batchpredict.errors import ReadWriteError
    from batchpredict.formats.base import ReadOptions
    from batchpredict.formats.parquet_io import ParquetReader

    path = tmp_path / "lies.parquet"
    table = pa.table({"f0": [1.0, 2.0, 3.0]})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none", write_statistics=False)
    data = sink.getvalue()
    length = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - length : -8].replace(b"\x16" + _zigzag(3), b"\x16" + _zigzag(1 << 40))
    path.write_bytes(data[: -8 - length] + footer + struct.pack("<I", len(footer)) + b"PAR1")
    assert pq.read_metadata(path).row_group(0).column(0).num_values == 1 << 40
    with pytest.raises(ReadWriteError, match=r"column 'f0': 3 of its 1099511627776 rows"):
        list(ParquetReader(str(path), ReadOptions()).iter_batches())


@pytest.mark.slow
def test_an_avro_deflate_bomb_fails(hostile_dir: Path, mlp_model: Path) -> None:
    path = hostile_dir / "bomb.avro"
    avro_deflate_bomb(path, 1 << 30)
    assert path.stat().st_size < 8 * MIB
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(hostile_dir / "outavro"), "--features", FEATURES,
    )  # fmt: skip
    assert_bounded(result, 74)
    assert f"block decompresses to more than --max_record_bytes ({64 * MIB} bytes)" in (
        result.stderr
    )


# -- output size -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_gzip_bomb_stops_at_max_output_bytes(hostile_dir: Path, mlp_model: Path) -> None:
    path = hostile_dir / "bomb.csv.gz"
    gzip_bomb_csv(path, 5)
    out = hostile_dir / "outgz"
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_file", str(out / "bomb.csv"), "--features", FEATURES,
        "--max_output_bytes", str(8 * MIB),
    )  # fmt: skip
    assert_bounded(result, 74)
    assert f"output would grow beyond --max_output_bytes ({8 * MIB} bytes)" in result.stderr
    assert not (out / "bomb.csv").exists()
    assert not list(temporaries(out))


def test_max_output_bytes_is_validated(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Completed]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD_LINE)
    args = ["predict", "--model", str(mlp_model), "--input_file", str(path)]
    result = run_main(*args, "--output_file", "s3://bucket/x.jsonl", "--max_output_bytes", "10")
    assert result.returncode == 2
    assert "--max_output_bytes is for local outputs" in result.stderr
    result = run_main(*args, "--max_output_bytes", "0")
    assert result.returncode == 2


def test_a_first_line_longer_than_the_block_is_read_in_linear_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading went on a byte at a time, copying the line each time, once a line
    outgrew the block: hours for a 4 MiB line in 64 KiB blocks."""
    from batchpredict.formats import json_io
    from batchpredict.formats.base import ReadOptions

    monkeypatch.setattr(json_io, "_MAX_BLOCK", 64 << 10)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"s":"' + b"x" * (4 * MIB) + b'"}\n{"s":"y"}\n')
    started = time.monotonic()
    batches = list(json_io.JsonLinesReader(str(path), ReadOptions()).iter_batches())
    assert time.monotonic() - started < 10
    assert [len(s) for s in pa.Table.from_batches(batches).column("s").to_pylist()] == [
        4 * MIB,
        1,
    ]


@pytest.mark.parametrize("skipping", [False, True])
def test_a_csv_row_longer_than_the_parallel_blocks_is_read(tmp_path: Path, skipping: bool) -> None:
    """A 3 MiB row: `--on_error fail` read it as "cannot read the rows after row 1000"."""
    from batchpredict.formats.base import BadRecord, ReadOptions
    from batchpredict.formats.csv_io import CsvReader

    path = tmp_path / "in.csv"
    long_row = b"2,1," + b"x" * (3 * MIB) + b"\n"
    path.write_bytes(b"id,f0,segment\n" + b"1,1,a\n" * 1000 + long_row + b"3,1,c\n" * 1000)
    bad: list[BadRecord] = []
    options = ReadOptions(on_bad_record=bad.append if skipping else None)
    table = pa.Table.from_batches(list(CsvReader(str(path), options).iter_batches()))
    assert table.num_rows == 2001 and not bad
    assert len(table.column("segment")[1000].as_py()) == 3 * MIB


def _csv_with_long_rows(path: Path, newline: str = "\n", delimiter: str = ",") -> list[int]:
    """CSV rows, some quoted over several lines, rows 4 and 54 about 500 bytes long (in
    quotes, across a line end); the data row numbers of those two."""
    rows = ["id,f0,f1,f2,f3,segment".replace(",", delimiter)]
    for number in range(1, 101):
        segment = f'"multi{newline}line {number}, ""q"""' if number % 7 == 0 else f"s{number}"
        if number in (4, 54):
            segment = '"' + "L" * 500 + newline + 'more"'
        rows.append(f"{number},1,2,3,4,{segment}".replace(",", delimiter))
    path.write_bytes((newline.join(rows) + newline).encode())
    return [4, 54]


@pytest.mark.parametrize(
    ("name", "newline", "delimiter"),
    [("in.csv", "\n", ","), ("in.csv", "\r\n", ","), ("in.tsv", "\n", "\t")],
)
def test_a_csv_row_over_the_limit_is_a_bad_row(
    tmp_path: Path,
    mlp_model: Path,
    run_main: Callable[..., Completed],
    name: str,
    newline: str,
    delimiter: str,
) -> None:
    path = tmp_path / name
    long_rows = _csv_with_long_rows(path, newline, delimiter)
    args = ["predict", "--model", str(mlp_model), "--input_file", str(path)]
    args += ["--features", FEATURES, "--keep_columns", "id,segment", "--max_record_bytes", "300"]
    failed = run_main(*args, "--output_dir", str(tmp_path / "a"))
    assert failed.returncode == 65
    text = path.read_bytes()
    offset = text.index(b"4" + delimiter.encode() + b"1" + delimiter.encode() + b"2")
    assert f"{path}: row 4: row longer than --max_record_bytes (300 bytes): " in failed.stderr
    assert f"bytes from byte {offset}" in failed.stderr
    skipped = run_main(
        *args, "--output_dir", str(tmp_path / "b"), "--on_error", "skip", "--max_error_rate", "1"
    )
    assert skipped.returncode == 0, skipped.stderr
    rejects = [json.loads(line) for line in (tmp_path / "b" / "_rejects.jsonl").open()]
    assert [reject["row"] for reject in rejects] == long_rows
    assert all(
        reject["text"].startswith(f"{row}{delimiter}1")
        for row, reject in zip(long_rows, rejects, strict=True)
    )
    assert all(len(reject["text"]) <= 200 for reject in rejects)
    kept = pacsv.read_csv(
        tmp_path / "b" / name, parse_options=pacsv.ParseOptions(delimiter=delimiter)
    )
    assert kept.column("id").to_pylist() == [n for n in range(1, 101) if n not in long_rows]
    seventh = kept.column("segment")[5].as_py()  # rows 1-3 and 5-7 kept
    assert seventh.startswith("multi") and seventh.endswith(f'line 7{delimiter} "q"')


@pytest.mark.parametrize("skipping", [False, True])
def test_a_quoted_csv_row_longer_than_the_blocks_is_read(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Completed], skipping: bool
) -> None:
    """A 10 MiB quoted row, within --max_record_bytes: read, in both modes."""
    path = tmp_path / "in.csv"
    long_row = b'2,1,2,3,4,"' + b"x" * (10 * MIB) + b'"\n'
    path.write_bytes(
        b"id,f0,f1,f2,f3,segment\n" + b'1,1,2,3,4,"a, b"\n' * 1000 + long_row + b"3,1,2,3,4,c\n"
    )
    args = ["predict", "--model", str(mlp_model), "--input_file", str(path)]
    args += ["--features", FEATURES, "--keep_columns", "id,segment"]
    args += ["--output_dir", str(tmp_path / "out")] + (["--on_error", "skip"] if skipping else [])
    result = run_main(*args)
    assert result.returncode == 0, result.stderr
    table = pacsv.read_csv(
        tmp_path / "out" / "in.csv", read_options=pacsv.ReadOptions(block_size=32 * MIB)
    )
    assert table.num_rows == 1002
    assert len(table.column("segment")[1000].as_py()) == 10 * MIB


def test_a_csv_header_over_the_limit_fails(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Completed]
) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,f0,f1,f2,f3," + "s" * 400 + "\n1,1,2,3,4,a\n")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(tmp_path / "out"), "--features", FEATURES,
        "--max_record_bytes", "300",
    )  # fmt: skip
    assert result.returncode == 65
    assert f"{path}: the header row is longer than --max_record_bytes (300 bytes)" in (
        result.stderr
    )


def test_max_output_bytes_bounds_the_rejects_file(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Completed]
) -> None:
    """A file of bad rows (a small .gz could hold gigabytes of them) fills the rejects
    file, not the disk: the run ends with 74 at the limit and nothing is committed."""
    path = tmp_path / "bad.csv"
    path.write_text("id,f0,f1,f2,f3\n" + "".join(f"{n},x,2,3,4\n" for n in range(20_000)))
    out = tmp_path / "out"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(path),
        "--output_dir", str(out), "--features", FEATURES, "--on_error", "skip",
        "--max_error_rate", "1", "--max_output_bytes", str(100_000),
    )  # fmt: skip
    assert result.returncode == 74, result.stderr
    assert "_rejects.jsonl: output would grow beyond --max_output_bytes (100000 bytes)" in (
        result.stderr
    )
    assert (sorted(out.iterdir()) if out.exists() else []) == []  # no temporary left either


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_a_csv_row_longer_than_the_blocks_from_stdin_says_to_read_a_file(
    mlp_model: Path, run_main: Callable[..., Completed], tmp_path: Path, mode: str
) -> None:
    """Stdin is read once: a quoted row longer than the reader's blocks (within the limit)
    cannot be read again with larger blocks, and the error says what to do."""
    rows = "".join(f'{n},1,2,3,4,"s, {n}"\n' for n in range(20_000))
    text = "id,f0,f1,f2,f3,segment\n" + rows + '0,1,2,3,4,"' + "y" * (20 * MIB) + '"\n'
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "-", "--input_format", "csv",
        "--features", FEATURES, "--keep_columns", "id,segment", "--on_error", mode,
        "--output_file", str(tmp_path / "out.csv"), input=text.encode(),
    )  # fmt: skip
    assert result.returncode == 65, result.stderr
    assert "read the input from a file" in result.stderr
    assert not (tmp_path / "out.csv").exists()
