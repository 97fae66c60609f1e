"""metrics.py: the job's own Prometheus textfile (`--metrics_file`), read back with
prometheus_client's parser as node_exporter's textfile collector would read it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import parser as prometheus_parser

from batchpredict.errors import OutputError, ReadWriteError
from batchpredict.metrics import write_metrics
from conftest import make_frame, write_with_library

GAUGES = [
    "batchpredict_last_run_timestamp_seconds",
    "batchpredict_last_success_timestamp_seconds",
    "batchpredict_last_run_rows",
    "batchpredict_last_run_rejected_rows",
    "batchpredict_duration_seconds",
    "batchpredict_last_exit_code",
]
#: Counter families as prometheus_client's parser names them; their series end in _total.
COUNTERS = ["batchpredict_rows", "batchpredict_rejected_rows"]


def read_metrics(path: Path) -> dict[str, Any]:
    """name -> family, parsed by prometheus_client (which rejects malformed exposition)."""
    text = path.read_text()
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}


def values(path: Path, job: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in read_metrics(path).values()
        for sample in family.samples
        if sample.labels.get("job") == job
    }


def run(
    path: Path,
    job: str = "nightly",
    *,
    succeeded: bool = True,
    at: float = 1.7e9,
    rows: int | None = None,
) -> None:
    write_metrics(
        str(path),
        job=job,
        succeeded=succeeded,
        finished_at=at,
        duration_seconds=12.5,
        rows=(1000 if succeeded else 10) if rows is None else rows,
        rejected_rows=3,
        exit_code=0 if succeeded else 65,
    )


def assert_types_follow_the_names(families: dict[str, Any]) -> None:
    """Counters where a name says _total, and only there (Prometheus reserves it)."""
    for family in families.values():
        assert family.documentation
        for sample in family.samples:
            assert sample.name.endswith("_total") == (family.type == "counter"), sample.name
            assert sample.timestamp is None  # the textfile collector takes none


def test_metrics_success(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, at=1712345678.25)
    families = read_metrics(path)
    assert list(families) == GAUGES + COUNTERS
    assert {name: f.type for name, f in families.items()} == {
        **dict.fromkeys(GAUGES, "gauge"),
        **dict.fromkeys(COUNTERS, "counter"),
    }
    assert_types_follow_the_names(families)
    assert all([s.labels for s in f.samples] == [{"job": "nightly"}] for f in families.values())
    assert values(path, "nightly") == {
        "batchpredict_last_run_timestamp_seconds": 1712345678.25,
        "batchpredict_last_success_timestamp_seconds": 1712345678.25,
        "batchpredict_last_run_rows": 1000,
        "batchpredict_last_run_rejected_rows": 3,
        "batchpredict_duration_seconds": 12.5,
        "batchpredict_last_exit_code": 0,
        "batchpredict_rows_total": 1000,
        "batchpredict_rejected_rows_total": 3,
    }
    text = path.read_text()
    assert text.endswith("\n")
    assert text.count("# HELP ") == text.count("# TYPE ") == len(families)
    assert "_created" not in text  # no series beyond those documented


def test_metrics_failure_keeps_the_last_success(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, at=1000.0)
    run(path, succeeded=False, at=2000.0)
    got = values(path, "nightly")
    assert got["batchpredict_last_run_timestamp_seconds"] == 2000.0
    assert got["batchpredict_last_success_timestamp_seconds"] == 1000.0
    assert got["batchpredict_last_exit_code"] == 65
    assert got["batchpredict_last_run_rows"] == 10
    run(path, succeeded=False, at=3000.0)  # still carried over
    assert values(path, "nightly")["batchpredict_last_success_timestamp_seconds"] == 1000.0
    run(path, at=4000.0)
    assert values(path, "nightly")["batchpredict_last_success_timestamp_seconds"] == 4000.0


def test_metrics_failure_without_a_previous_success(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, succeeded=False)
    families = read_metrics(path)
    assert "batchpredict_last_success_timestamp_seconds" not in families
    assert list(families) == [*GAUGES[:1], *GAUGES[2:], *COUNTERS]
    assert values(path, "nightly")["batchpredict_last_exit_code"] == 65
    run(path, succeeded=False)
    assert "batchpredict_last_success_timestamp_seconds" not in read_metrics(path)


def test_metrics_counters_add_up_every_run_and_gauges_show_the_last(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, rows=1000)
    run(path, succeeded=False, rows=10)  # a failed run's rows were read too
    run(path, succeeded=False, rows=0)  # as a run refused by the lock (75) reports
    got = values(path, "nightly")
    assert got["batchpredict_rows_total"] == 1010
    assert got["batchpredict_rejected_rows_total"] == 9
    assert got["batchpredict_last_run_rows"] == 0
    assert got["batchpredict_last_run_rejected_rows"] == 3
    assert_types_follow_the_names(read_metrics(path))


def test_metrics_jobs_sharing_a_directory_are_told_apart_by_their_files(tmp_path: Path) -> None:
    """node_exporter's textfile collector reads every *.prom file in its folder: one file
    per job, each series labelled with its job."""
    run(tmp_path / "a.prom", "a", at=100.0)
    run(tmp_path / "b.prom", "b", succeeded=False, at=200.0)
    run(tmp_path / "a.prom", "a", succeeded=False, at=300.0)
    assert sorted(os.listdir(tmp_path)) == ["a.prom", "b.prom"]
    assert values(tmp_path / "a.prom", "a")["batchpredict_last_success_timestamp_seconds"] == 100
    assert "batchpredict_last_success_timestamp_seconds" not in values(tmp_path / "b.prom", "b")
    scraped = "".join(p.read_text() for p in sorted(tmp_path.glob("*.prom")))
    rows = [
        sample
        for family in prometheus_parser.text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "batchpredict_rows_total"
    ]
    assert [(s.labels["job"], s.value) for s in rows] == [("a", 1010), ("b", 10)]


def test_metrics_of_an_older_version_carry_the_last_success_not_the_counters(
    tmp_path: Path,
) -> None:
    """Before prometheus_client wrote the file, the rows of the last run were gauges named
    *_total: such a file is this job's, but its gauge does not start the counter."""
    path = tmp_path / "batchpredict.prom"
    path.write_text(
        "# HELP batchpredict_rows_total Rows read by the last run of the job.\n"
        "# TYPE batchpredict_rows_total gauge\n"
        'batchpredict_rows_total{job="nightly"} 500\n'
        "# HELP batchpredict_last_success_timestamp_seconds Unix time.\n"
        "# TYPE batchpredict_last_success_timestamp_seconds gauge\n"
        'batchpredict_last_success_timestamp_seconds{job="nightly"} 99\n'
    )
    run(path, succeeded=False, at=500.0, rows=10)
    got = values(path, "nightly")
    assert got["batchpredict_last_success_timestamp_seconds"] == 99
    assert got["batchpredict_rows_total"] == 10
    assert read_metrics(path)["batchpredict_rows"].type == "counter"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('batchpredict_rows_total{job="other"} 42\n', "rows_total{job='other'}, not job='nightly'"),
        ("batchpredict_rows_total 42\n", "holds batchpredict_rows_total{}, not job='nightly'"),
        (
            'batchpredict_rows_total{job="nightly",host="a"} 42\n',
            "holds batchpredict_rows_total{host='a',job='nightly'}",
        ),
        (
            "# TYPE other_latency_seconds histogram\n"
            'other_latency_seconds_bucket{le="+Inf"} 3\n'
            "other_latency_seconds_sum 4.5\nother_latency_seconds_count 3\n",
            "it holds other_latency_seconds, not batchpredict's",
        ),
        ("this line is not exposition format\n", "not in the Prometheus text format"),
        ("#" * (1 << 20) + "\n", "larger than a job's metrics file"),
    ],
    ids=["another-job", "no-job", "more-labels", "foreign-metric", "garbage", "huge"],
)
def test_metrics_refuse_a_file_that_is_not_the_jobs_own(
    tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "shared.prom"
    path.write_text(content)
    with pytest.raises(OutputError, match="refusing the metrics file") as refused:
        run(path)
    assert str(refused.value).startswith(f"{path}: refusing the metrics file: ")
    assert says in str(refused.value)
    assert path.read_text() == content  # neither merged nor replaced
    assert os.listdir(tmp_path) == ["shared.prom"]


def test_metrics_escape_label_values(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    job = 'we"ird\\job\nname'
    run(path, job, at=100.0)
    run(path, job, succeeded=False, at=200.0)  # the escaped value is read back as the job
    got = values(path, job)
    assert got["batchpredict_last_run_timestamp_seconds"] == 200.0
    assert got["batchpredict_last_success_timestamp_seconds"] == 100.0
    assert got["batchpredict_rows_total"] == 1010


def test_metrics_replace_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, at=100.0)
    before = path.stat().st_ino
    with path.open() as reader:  # a reader mid-way keeps the complete old file
        run(path, at=200.0)
        assert "100" in reader.read()
    assert path.stat().st_ino != before
    assert os.listdir(tmp_path) == ["batchpredict.prom"]  # no temporary files left


def test_metrics_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, at=100.0)
    old = path.read_text()

    def fail(descriptor: int) -> None:  # the disk fills as the new file is flushed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ReadWriteError, match="cannot write metrics"):
        run(path, at=200.0)
    assert path.read_text() == old
    assert os.listdir(tmp_path) == ["batchpredict.prom"]


def test_metrics_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "collector" / "job.prom"
    run(path)
    assert values(path, "nightly")["batchpredict_last_run_rows"] == 1000


def test_metrics_runs_of_one_job_finishing_together_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    threads = [threading.Thread(target=run, args=(path,), kwargs={"rows": 1}) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values(path, "nightly")["batchpredict_rows_total"] == 8
    assert os.listdir(tmp_path) == ["batchpredict.prom"]


def test_metrics_file_from_a_real_run(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Any]
) -> None:
    """Types and values as node_exporter would read them, after two runs of one job."""
    source = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    prom = tmp_path / "textfile" / "nightly.prom"
    args = (
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_file", str(tmp_path / "out.csv"), "--keep_columns", "id,segment",
        "--metrics_file", str(prom), "--job_name", "nightly",
    )  # fmt: skip
    assert run_main(*args).returncode == 0
    first = values(prom, "nightly")
    result = run_main(*args)
    assert result.returncode == 0, result.stderr
    families = read_metrics(prom)
    assert {name: f.type for name, f in families.items()} == {
        **dict.fromkeys(GAUGES, "gauge"),
        **dict.fromkeys(COUNTERS, "counter"),
    }
    assert_types_follow_the_names(families)
    got = values(prom, "nightly")
    assert got["batchpredict_rows_total"] == 40 and got["batchpredict_last_run_rows"] == 20
    assert (
        got["batchpredict_rejected_rows_total"] == got["batchpredict_last_run_rejected_rows"] == 0
    )
    assert got["batchpredict_last_exit_code"] == 0 and got["batchpredict_duration_seconds"] > 0
    assert (
        got["batchpredict_last_success_timestamp_seconds"]
        == got["batchpredict_last_run_timestamp_seconds"]
        >= first["batchpredict_last_run_timestamp_seconds"]
    )


def test_another_jobs_metrics_file_is_refused_before_any_work(
    tmp_path: Path, mlp_model: Path, run_main: Callable[..., Any]
) -> None:
    source = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    prom = tmp_path / "batchpredict.prom"
    args = (
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_file", str(tmp_path / "out.csv"), "--keep_columns", "id,segment",
        "--metrics_file", str(prom),
    )  # fmt: skip
    assert run_main(*args, "--job_name", "hourly").returncode == 0
    (tmp_path / "out.csv").unlink()
    written = prom.read_text()
    result = run_main(*args, "--job_name", "nightly")
    assert result.returncode == 73, result.stderr
    assert f"{prom}: refusing the metrics file: it holds" in result.stderr
    assert "give each job its own file" in result.stderr
    assert prom.read_text() == written and not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_help_does_not_import_prometheus_client() -> None:
    code = (
        "import sys\n"
        "from batchpredict.cli import main\n"
        "assert main(['predict', '--help']) == 0\n"
        "assert 'prometheus_client' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
