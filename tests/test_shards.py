"""Shards (`--shard_index I --shard_count N`): one job's inputs over N independent
processes, each writing its outputs and a manifest part; the last to finish merges the
parts into `_manifest.json` and creates `_SUCCESS`, exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchpredict import shards
from batchpredict.errors import UsageError
from batchpredict.sources import InputFile
from conftest import Completed, batchpredict_command, make_frame, write_with_library

FILES = 6
ROWS = 40
COMMON = ("--features", "f0,f1,f2,f3", "--keep_columns", "id", "--no_progress")


def listing(count: int) -> list[InputFile]:
    """Whole files (CSV: never split), not read by the plan."""
    return [InputFile(f"/d/part-{k}.csv", "csv", f"part-{k}.csv") for k in range(count)]


def write_inputs(folder: Path, rows: int = ROWS, files: int = FILES) -> set[int]:
    """`files` Parquet files of `rows` rows each, ids distinct across files; all the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids: set[int] = set()
    for k in range(files):
        frame = make_frame(rows, seed=k)
        frame["id"] += 1_000_000 * k
        write_with_library(frame, folder / f"part-{k}.parquet", "parquet")
        ids.update(frame["id"].tolist())
    return ids


def shard_args(model: Path, inputs: Path | str, out: Path | str, index: int | str) -> list[str]:
    return [
        "predict",
        "--model",
        str(model),
        "--input_file",
        str(inputs),
        "--output_dir",
        str(out),
        "--shard_index",
        str(index),
        "--shard_count",
        "3",
        *COMMON,
    ]


def output_ids(out: Path) -> list[int]:
    frames = [pd.read_parquet(path) for path in sorted(out.glob("part-*.parquet"))]
    return sorted(pd.concat(frames)["id"].tolist())


def fingerprints(out: Path, names: list[str]) -> dict[str, tuple[int, str]]:
    return {
        name: (
            (out / name).stat().st_mtime_ns,
            hashlib.sha256((out / name).read_bytes()).hexdigest(),
        )
        for name in names
    }


def marked(results: list[Completed]) -> int:
    """How many of the runs created `_SUCCESS`."""
    return sum(
        line.get("event") == "all shards finished, folder marked complete"
        for result in results
        for line in result.log_lines()
    )


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 7, 10])
def test_every_input_goes_to_exactly_one_shard(count: int) -> None:
    listed = listing(FILES)
    taken = [shards.take(listed, shards.Shard(i, count)) for i in range(count)]
    flat = [item.path for share in taken for item in share]
    assert sorted(flat) == sorted(item.path for item in listed)
    assert len(flat) == len(set(flat))
    # Round-robin: shares differ by at most one input.
    assert max(map(len, taken)) - min(map(len, taken)) <= 1
    # Deterministic: the same listing gives every shard the same plan.
    assert taken == [shards.take(listing(FILES), shards.Shard(i, count)) for i in range(count)]


def write_row_groups(path: Path, rows: int, group_rows: int, first_id: int) -> set[int]:
    frame = make_frame(rows, seed=first_id)
    frame["id"] += first_id
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=group_rows
    )
    return set(frame["id"].tolist())


@pytest.mark.parametrize(("files", "count"), [(1, 3), (1, 5), (2, 3), (2, 5), (1, 9)])
def test_fewer_files_than_shards_split_parquet_row_groups(
    tmp_path: Path, files: int, count: int
) -> None:
    """Every row group goes to exactly one shard, in contiguous ranges; a range's rows
    are read with their file row numbers."""
    listed = []
    for k in range(files):
        path = tmp_path / f"part-{k}.parquet"
        write_row_groups(path, 60, 10, 1000 * k)  # 6 row groups
        listed.append(InputFile(str(path), "parquet", path.name))
    listed.append(InputFile(str(tmp_path / "x.csv"), "csv", "x.csv"))  # stays whole
    taken = [shards.take(listed, shards.Shard(i, count)) for i in range(count)]
    groups: list[tuple[str, int]] = []
    for share in taken:
        for item in share:
            if item.format == "csv":
                groups.append((item.path, -1))
                continue
            part = item.row_groups
            if part is None:  # not split: the whole file
                groups += [(item.path, g) for g in range(6)]
                continue
            assert item.relative_path.endswith(f".rowgroups-{part.first}-{part.last}.parquet")
            assert part.rows_before == 10 * part.first
            groups += [(item.path, g) for g in range(part.first, part.last + 1)]
    expected = [(i.path, g) for i in listed if i.format == "parquet" for g in range(6)]
    assert sorted(groups) == sorted([*expected, (str(tmp_path / "x.csv"), -1)])
    assert sum(1 for share in taken if share) == min(count, len(expected) + 1)


def test_a_row_group_range_is_read_alone(tmp_path: Path) -> None:
    from batchpredict.formats.base import ReadOptions, RowGroups
    from batchpredict.formats.parquet_io import ParquetReader

    path = tmp_path / "p.parquet"
    ids = sorted(write_row_groups(path, 60, 10, 0))
    reader = ParquetReader(str(path), ReadOptions(row_groups=RowGroups(2, 3, 20)))
    assert reader.total_rows() == 20
    read = [i for b in reader.iter_batches() for i in b.column("id").to_pylist()]
    assert read == ids[20:40]


def test_the_listing_digest_changes_with_the_inputs_and_the_shard_count() -> None:
    digest = shards.listing_digest(listing(6), shards.Shard(0, 3))
    assert digest == shards.listing_digest(listing(6), shards.Shard(2, 3))
    assert digest != shards.listing_digest(listing(5), shards.Shard(0, 3))
    assert digest != shards.listing_digest(listing(6), shards.Shard(0, 4))


@pytest.mark.parametrize(
    ("env", "count", "expected"),
    [
        ({"JOB_COMPLETION_INDEX": "2"}, 3, (2, 3)),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, None, (1, 4)),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, 2, (1, 2)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "0"}, 5, (0, 5)),
    ],
)
def test_auto_reads_the_schedulers_variables(
    env: dict[str, str], count: int | None, expected: tuple[int, int]
) -> None:
    assert shards.resolve("auto", count, env) == shards.Shard(*expected)


@pytest.mark.parametrize(
    ("index", "count", "env", "message"),
    [
        ("auto", None, {}, "none of JOB_COMPLETION_INDEX"),
        ("auto", None, {"JOB_COMPLETION_INDEX": "1"}, "give --shard_count"),
        ("auto", None, {"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, "give --shard_count"),
        ("auto", 2, {"JOB_COMPLETION_INDEX": "2"}, "from 0 to 1"),
        ("auto", 2, {"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX must be a whole"),
        ("1", None, {}, "needs --shard_count"),
        (None, 3, {}, "needs --shard_index"),
        ("3", 3, {}, "from 0 to 2"),
        ("-1", 3, {}, "from 0 to 2"),
        ("one", 3, {}, "--shard_index must be a whole number"),
    ],
)
def test_shard_options_that_cannot_work_are_refused(
    index: str | None, count: int | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        shards.resolve(index, count, env)


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--shard_index", "0", "--shard_count", "2"], {}, "need --output_dir"),
        (["--output_dir", "OUT", "--shard_index", "0"], {}, "needs --shard_count"),
        (["--output_dir", "OUT", "--shard_index", "auto"], {}, "none of"),
        (
            ["--output_dir", "OUT", "--shard_index", "auto"],
            {"JOB_COMPLETION_INDEX": "0"},
            "give --shard_count",
        ),
        (
            ["--output_dir", "OUT", "--shard_index", "0", "--shard_count", "2", "--engine", "ray"],
            {},
            "local engine",
        ),
        (
            [
                "--output_dir",
                "OUT",
                "--shard_index",
                "0",
                "--shard_count",
                "2",
                "--stats_file",
                "x",
            ],
            {},
            "--stats_file cannot be used with shards",
        ),
        (
            [
                "--output_dir",
                "OUT",
                "--shard_index",
                "0",
                "--shard_count",
                "2",
                "--output_format",
                "delta",
            ],
            {},
            "--output_format delta cannot be used with shards",
        ),
    ],
)
def test_usage_errors_exit_2(
    run_main: Callable[..., Completed],
    tmp_path: Path,
    mlp_model: Path,
    extra: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    write_inputs(tmp_path / "in", files=1)
    args = [str(tmp_path / "OUT") if a == "OUT" else a for a in extra]
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "in"), *args, env=env
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "OUT").exists()


def test_stdin_cannot_be_sharded(run_main: Callable[..., Completed], mlp_model: Path) -> None:
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "-", "--input_format", "csv",
        "--output_file", "-", "--shard_index", "0", "--shard_count", "2",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--output_dir" in result.stderr or "stdin" in result.stderr


def test_three_shards_score_every_row_once_and_the_last_marks_the_folder(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    ids = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    results = []
    for index in (2, 0, 1):  # in any order: the last to finish marks the folder
        assert not (out / "_SUCCESS").exists()
        summary = tmp_path / f"summary-{index}.json"
        args = shard_args(mlp_model, tmp_path / "in", out, index)
        result = run_main(*args, "--summary_file", str(summary))
        assert json.loads(summary.read_text())["shard"] == {"index": index, "count": 3}
        assert result.returncode == 0, result.stderr
        results.append(result)
    assert (out / "_SUCCESS").exists()
    assert marked(results) == 1
    assert output_ids(out) == sorted(ids)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sorted(o["output"] for o in manifest["outputs"]) == [
        f"part-{k}.parquet" for k in range(FILES)
    ]
    assert manifest["shards"]["count"] == 3
    verified = run_main("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    planned = [line for line in results[1].log_lines() if line["event"] == "shard planned"]
    assert planned[0]["shard_index"] == 0
    assert planned[0]["inputs"] == [str(tmp_path / "in" / f"part-{k}.parquet") for k in (0, 3)]


def test_a_shard_rerun_with_skip_existing_changes_nothing_else(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    for index in range(3):
        assert run_main(*shard_args(mlp_model, tmp_path / "in", out, index)).returncode == 0
    everything = sorted(p.name for p in out.iterdir() if p.name.startswith("part-"))
    before = fingerprints(out, everything)
    merged_before = json.loads((out / "_manifest.json").read_text())["outputs"]
    result = run_main(*shard_args(mlp_model, tmp_path / "in", out, 1), "--skip_existing")
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.log_lines() if "skipped" in str(line.get("event"))]
    assert len(skipped) == 2
    assert fingerprints(out, everything) == before
    assert (out / "_SUCCESS").exists()
    assert marked([result]) == 1  # the rerun removed the marker, and put it back
    merged = json.loads((out / "_manifest.json").read_text())["outputs"]
    assert sorted(merged, key=str) == sorted(merged_before, key=str)


def test_shards_over_one_parquet_file_split_its_row_groups(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    (tmp_path / "in").mkdir()
    ids = write_row_groups(tmp_path / "in" / "big.parquet", 90, 10, 0)  # 9 row groups
    out = tmp_path / "out"
    for index in range(3):
        result = run_main(*shard_args(mlp_model, tmp_path / "in", out, index))
        assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names == [f"big.rowgroups-{a}-{b}.parquet" for a, b in ((0, 2), (3, 5), (6, 8))]
    frames = [pd.read_parquet(out / name) for name in names]
    assert sorted(pd.concat(frames)["id"].tolist()) == sorted(ids)
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sorted(o["output"] for o in manifest["outputs"]) == names


def test_a_bad_row_in_a_row_group_range_is_named_by_its_row_in_the_file(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    (tmp_path / "in").mkdir()
    frame = make_frame(60, seed=3)
    frame.loc[34, "f0"] = None  # file row 35, in row group 3 (0-based), shard 1's range
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, tmp_path / "in" / "p.parquet", row_group_size=10)
    out = tmp_path / "out"
    result = run_main(
        *shard_args(mlp_model, tmp_path / "in", out, 1), "--on_error", "skip",
        "--max_error_rate", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "p.rowgroups-2-3.parquet").exists()
    rejected = [json.loads(line) for line in (out / "_rejects.shard-1-of-3.jsonl").open()]
    assert [r["row"] for r in rejected] == [35]
    assert sorted(pd.read_parquet(out / "p.rowgroups-2-3.parquet")["id"]) == [
        i for i in range(21, 41) if i != 35
    ]


@pytest.mark.parametrize(
    ("env", "count_args", "expected"),
    [
        ({"JOB_COMPLETION_INDEX": "1"}, ["--shard_count", "3"], (1, 3)),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, [], (2, 3)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "0"}, ["--shard_count", "3"], (0, 3)),
    ],
)
def test_auto_takes_the_shard_from_the_scheduler(
    run_main: Callable[..., Completed],
    tmp_path: Path,
    mlp_model: Path,
    env: dict[str, str],
    count_args: list[str],
    expected: tuple[int, int],
) -> None:
    write_inputs(tmp_path / "in")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "in"),
        "--output_dir", str(tmp_path / "out"), "--shard_index", "auto", *count_args, *COMMON,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    planned = next(line for line in result.log_lines() if line["event"] == "shard planned")
    assert (planned["shard_index"], planned["shard_count"]) == expected
    index, count = expected
    assert (tmp_path / "out" / f"_manifest.shard-{index}-of-{count}.json").exists()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == [
        f"part-{k}.parquet" for k in range(FILES) if k % count == index
    ]


def test_the_library_takes_shards_too(
    tmp_path: Path, mlp_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchpredict

    write_inputs(tmp_path / "in")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    summary = batchpredict.predict(
        str(mlp_model), str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
        features="f0,f1,f2,f3", keep_columns="id", progress=False,
        shard_index="auto", shard_count=3,
    )  # fmt: skip
    assert summary.shard == {"index": 2, "count": 3}
    assert [Path(p).name for p in summary.outputs] == ["part-2.parquet", "part-5.parquet"]
    with pytest.raises(UsageError, match="--shard_index must be from 0 to 2"):
        batchpredict.predict(
            str(mlp_model), str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
            shard_index=3, shard_count=3,
        )  # fmt: skip


def test_a_shard_with_nothing_to_do_still_writes_its_part(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    """One CSV file (never split) over three shards: two have no input."""
    (tmp_path / "in").mkdir()
    write_with_library(make_frame(30), tmp_path / "in" / "only.csv", "csv")
    out = tmp_path / "out"
    results = [run_main(*shard_args(mlp_model, tmp_path / "in", out, i)) for i in (1, 2, 0)]
    assert [r.returncode for r in results] == [0, 0, 0], results[0].stderr
    assert marked(results) == 1
    assert sorted(pd.read_csv(out / "only.csv")["id"]) == list(range(1, 31))
    assert json.loads((out / "_manifest.shard-1-of-3.json").read_text())["outputs"] == []


def test_a_failed_shard_does_not_let_the_others_mark_the_folder(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    """Shard 2 fails on its second input (a feature column missing) after committing its
    first; its part records that one and says the shard did not finish, so the others,
    finishing after it, do not mark the folder; rerun once the input is fixed, it does."""
    ids = write_inputs(tmp_path / "in")
    broken = make_frame(ROWS, seed=5).drop(columns=["f3"])
    write_with_library(broken, tmp_path / "in" / "part-5.parquet", "parquet")
    out = tmp_path / "out"
    failed = run_main(*shard_args(mlp_model, tmp_path / "in", out, 2))
    assert failed.returncode == 65, failed.stderr
    part = json.loads((out / "_manifest.shard-2-of-3.json").read_text())
    assert part["shard"]["complete"] is False
    assert [o["output"] for o in part["outputs"]] == ["part-2.parquet"]
    results = [run_main(*shard_args(mlp_model, tmp_path / "in", out, i)) for i in (0, 1)]
    assert [r.returncode for r in results] == [0, 0]
    assert not (out / "_SUCCESS").exists()
    assert marked(results) == 0
    write_inputs(tmp_path / "in")  # fixed
    rerun = run_main(*shard_args(mlp_model, tmp_path / "in", out, 2), "--skip_existing")
    assert rerun.returncode == 0, rerun.stderr
    assert marked([rerun]) == 1
    assert output_ids(out) == sorted(ids)


def test_parts_of_another_plan_do_not_mark_the_folder(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    """A part left by a job over other inputs (here: one file fewer) is not this job's."""
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    for index in (0, 1):
        assert run_main(*shard_args(mlp_model, tmp_path / "in", out, index)).returncode == 0
    (tmp_path / "in" / "part-5.parquet").unlink()
    result = run_main(*shard_args(mlp_model, tmp_path / "in", out, 2))
    assert result.returncode == 0, result.stderr
    assert not (out / "_SUCCESS").exists()
    assert "another plan" in result.stderr


def test_the_marker_is_created_once_locally(tmp_path: Path) -> None:
    marker = str(tmp_path / "_SUCCESS")
    assert shards.create_if_absent(marker) is True
    assert shards.create_if_absent(marker) is False


# --------------------------------------------------------------------------- real processes


def start_shard(
    args: list[str], log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    env["BATCHPREDICT_LOG_FORMAT"] = "json"
    env.update(extra_env or {})
    with log.open("wb") as handle:
        return subprocess.Popen(
            [*batchpredict_command(), *args], stdout=handle, stderr=handle, env=env
        )


def log_of(path: Path) -> Completed:
    return Completed(0, "", path.read_text())


@pytest.mark.slow
def test_concurrent_shards_and_a_killed_one_rerun(
    run_main: Callable[..., Completed], tmp_path: Path, mlp_model: Path
) -> None:
    """Three shards started together; shard 2, whose second input is large, is killed
    (SIGKILL) once it has committed its first output; its rerun (`--skip_existing`)
    completes the folder and changes none of the other shards' files."""
    inputs = tmp_path / "in"
    ids = write_inputs(inputs)
    large = make_frame(1_500_000, seed=5)  # shard 2's second: long enough to be killed in
    large["id"] += 5_000_000
    write_with_library(large, inputs / "part-5.parquet", "parquet")
    ids = {i for i in ids if not 5_000_000 <= i < 6_000_000} | set(large["id"].tolist())
    out = tmp_path / "out"
    slow = ["--chunk_size", "4096", "--batch_size", "256"]
    procs = {
        index: start_shard(
            [*shard_args(mlp_model, inputs, out, index), *slow], tmp_path / f"{index}.log"
        )
        for index in range(3)
    }
    deadline = time.monotonic() + 240
    while not (out / "part-2.parquet").exists():
        assert procs[2].poll() is None, (tmp_path / "2.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    procs[2].send_signal(signal.SIGKILL)
    assert procs[2].wait() == -signal.SIGKILL
    assert not (out / "part-5.parquet").exists()  # killed in the middle of its work
    assert procs[0].wait(timeout=240) == 0, (tmp_path / "0.log").read_text()
    assert procs[1].wait(timeout=240) == 0, (tmp_path / "1.log").read_text()
    assert not (out / "_manifest.shard-2-of-3.json").exists()
    assert not (out / "_SUCCESS").exists()
    others = [f"part-{k}.parquet" for k in (0, 1, 3, 4)] + [
        f"_manifest.shard-{i}-of-3.json" for i in (0, 1)
    ]
    before = fingerprints(out, others)

    rerun = run_main(*shard_args(mlp_model, inputs, out, 2), "--skip_existing", *slow)
    assert rerun.returncode == 0, rerun.stderr
    assert fingerprints(out, others) == before
    assert (out / "_SUCCESS").exists()
    logs = [log_of(tmp_path / f"{i}.log") for i in (0, 1)]
    assert marked([*logs, rerun]) == 1
    assert output_ids(out) == sorted(ids)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(manifest["outputs"]) == FILES


@pytest.mark.slow
def test_concurrent_shards_mark_the_folder_exactly_once(tmp_path: Path, mlp_model: Path) -> None:
    inputs = tmp_path / "in"
    ids = write_inputs(inputs)
    out = tmp_path / "out"
    procs = [
        start_shard(shard_args(mlp_model, inputs, out, i), tmp_path / f"{i}.log") for i in range(3)
    ]
    for index, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{index}.log").read_text()
    assert marked([log_of(tmp_path / f"{i}.log") for i in range(3)]) == 1
    assert (out / "_SUCCESS").exists()
    assert output_ids(out) == sorted(ids)
    assert len(json.loads((out / "_manifest.json").read_text())["outputs"]) == FILES


# --------------------------------------------------------------------------- S3


def s3_etags(client: Any, bucket: str, prefix: str) -> dict[str, tuple[str, Any]]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed if not o["Key"].endswith("/")}


@pytest.mark.slow
def test_concurrent_shards_on_s3_mark_the_folder_exactly_once(
    tmp_path: Path, mlp_model: Path, s3_env: dict[str, str], bucket: Any
) -> None:
    """Three processes at once against the S3 server: every row once, `_SUCCESS` created
    by one of them (a conditional put)."""
    client, name = bucket
    ids = write_inputs(tmp_path / "in")
    for path in sorted((tmp_path / "in").iterdir()):
        client.upload_file(str(path), name, f"in/{path.name}")
    inputs, out = f"s3://{name}/in/", f"s3://{name}/out"
    procs = [
        start_shard(shard_args(mlp_model, inputs, out, i), tmp_path / f"{i}.log", s3_env)
        for i in range(3)
    ]
    for index, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{index}.log").read_text()
    assert marked([log_of(tmp_path / f"{i}.log") for i in range(3)]) == 1
    got = []
    for k in range(FILES):
        body = client.get_object(Bucket=name, Key=f"out/part-{k}.parquet")["Body"].read()
        (tmp_path / f"o{k}.parquet").write_bytes(body)
        got += pq.read_table(tmp_path / f"o{k}.parquet").column("id").to_pylist()
    assert sorted(got) == sorted(ids)
    assert "out/_SUCCESS" in s3_etags(client, name, "out/")


def test_shards_on_s3(
    run_main: Callable[..., Completed],
    tmp_path: Path,
    mlp_model: Path,
    s3_env: dict[str, str],
    bucket: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, name = bucket
    ids = write_inputs(tmp_path / "in")
    for path in sorted((tmp_path / "in").iterdir()):
        client.upload_file(str(path), name, f"in/{path.name}")
    inputs, out = f"s3://{name}/in/", f"s3://{name}/out"
    results = []
    for index in (1, 2, 0):
        result = run_main(*shard_args(mlp_model, inputs, out, index), env=s3_env)
        assert result.returncode == 0, result.stderr
        results.append(result)
    assert marked(results) == 1
    keys = s3_etags(client, name, "out/")
    assert "out/_SUCCESS" in keys
    assert not [k for k in keys if "journal" in k]
    got = []
    for k in range(FILES):
        body = client.get_object(Bucket=name, Key=f"out/part-{k}.parquet")["Body"].read()
        (tmp_path / f"o{k}.parquet").write_bytes(body)
        got += pq.read_table(tmp_path / f"o{k}.parquet").column("id").to_pylist()
    assert sorted(got) == sorted(ids)
    manifest = json.loads(client.get_object(Bucket=name, Key="out/_manifest.json")["Body"].read())
    assert len(manifest["outputs"]) == FILES

    # A rerun of one shard: the other shards' objects are untouched, the marker back once.
    shard_0 = ("_SUCCESS", "_manifest.json", "shard-0-of-3.json", "-0.parquet", "-3.parquet")
    others = {k: v for k, v in keys.items() if not k.endswith(shard_0)}
    assert len(others) == 6  # 4 outputs, 2 parts
    rerun = run_main(*shard_args(mlp_model, inputs, out, 0), "--skip_existing", env=s3_env)
    assert rerun.returncode == 0, rerun.stderr
    assert marked([rerun]) == 1
    after = s3_etags(client, name, "out/")
    assert {k: after[k] for k in others} == others

    # The conditional put: the marker exists, so a second create is refused by the store.
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    assert shards.create_if_absent(f"s3://{name}/out/_SUCCESS") is False
    assert shards.create_if_absent(f"s3://{name}/out/_OTHER") is True
    assert shards.create_if_absent(f"s3://{name}/out/_OTHER") is False
