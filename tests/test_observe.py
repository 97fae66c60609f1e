"""observe.py: progress lines and bar, the Prometheus metrics file, the summary file, run ids."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from batchpredict import observe
from batchpredict.errors import ReadWriteError
from batchpredict.observe import (
    Progress,
    bind_run_id,
    configure_logging,
    new_run_id,
    unbind_run_id,
    write_metrics,
    write_summary,
)

prometheus_parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures structlog itself; leave no configuration or run id behind."""
    yield
    unbind_run_id()
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    observe._to_stderr = None


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CapturingLog:
    """Stands in for the structlog logger: records (event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- Progress -----------------------------------------------------------------------------


def test_progress_off_tty_logs_at_most_every_interval(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json")
    clock = FakeClock()
    stream = io.StringIO()
    with Progress(1000, every_seconds=10, stream=stream, clock=clock) as progress:
        for _ in range(9):  # 9 seconds: nothing due yet
            clock.now += 1
            progress.update(10)
        assert json_lines(capsys.readouterr().err) == []
        clock.now += 1  # 10 s, 100 rows
        progress.update(10)
        for _ in range(5):  # due again only at 20 s
            clock.now += 1
            progress.update(10)
    lines = json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["progress"]
    (line,) = lines
    assert line["level"] == "info"
    assert line["rows"] == 100
    assert line["rows_per_second"] == 10.0
    assert line["elapsed_seconds"] == 10.0
    assert line["percent"] == 10.0
    assert line["eta_seconds"] == 90.0
    assert stream.getvalue() == ""  # off a TTY nothing goes to the stream: no bar, no "\r"


def test_progress_interval_counts_from_the_last_line() -> None:
    log = CapturingLog()
    clock = FakeClock(0.0)
    progress = Progress(None, every_seconds=30, stream=io.StringIO(), log=log, clock=clock)
    times = [5, 29.9, 30, 31, 59.9, 60, 200, 201, 229, 230]
    for now in times:
        clock.now = now
        progress.update(1)
    progress.close()
    # A stall (60 -> 200) gives one line, not a burst of catch-up lines.
    assert [fields["elapsed_seconds"] for _, fields in log.lines] == [30.0, 60.0, 200.0, 230.0]
    assert [fields["rows"] for _, fields in log.lines] == [3, 6, 7, 10]
    for event, fields in log.lines:
        assert event == "progress"
        assert "percent" not in fields and "eta_seconds" not in fields  # total unknown
        assert fields["rows_per_second"] == round(fields["rows"] / fields["elapsed_seconds"], 1)


def test_progress_close_logs_nothing_more() -> None:
    log = CapturingLog()
    clock = FakeClock()
    progress = Progress(10, every_seconds=5, stream=io.StringIO(), log=log, clock=clock)
    progress.update(10)
    clock.now += 4
    progress.close()
    progress.close()
    clock.now += 100
    progress.update(1)  # after close: counted, never logged
    assert log.lines == []
    assert progress.rows == 11


def test_progress_percent_and_eta_are_bounded() -> None:
    log = CapturingLog()
    clock = FakeClock()
    with Progress(50, every_seconds=1, stream=io.StringIO(), log=log, clock=clock) as progress:
        clock.now += 1
        progress.update(0)  # nothing done yet: no rate, so no ETA
        clock.now += 1
        progress.update(80)  # the total was an estimate
    (_, first), (_, second) = log.lines
    assert first["percent"] == 0.0 and first["eta_seconds"] is None
    assert second["percent"] == 100.0 and second["eta_seconds"] == 0.0


def test_progress_on_a_tty_draws_a_tqdm_bar_on_that_stream() -> None:
    log = CapturingLog()
    tty = FakeTTY()
    with Progress(200, stream=tty, log=log) as progress:
        for _ in range(4):
            progress.update(50)
    text = tty.getvalue()
    assert "100%" in text
    assert "200/200" in text
    assert "rows" in text
    assert log.lines == []


def test_progress_on_a_tty_without_total_counts_rows() -> None:
    tty = FakeTTY()
    with Progress(None, stream=tty, log=CapturingLog()) as progress:
        progress.update(1500)
    assert "1.50krows" in tty.getvalue()


def test_progress_disabled_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json")
    clock = FakeClock()
    for stream in (io.StringIO(), FakeTTY()):
        with Progress(100, enabled=False, every_seconds=1, stream=stream, clock=clock) as p:
            for _ in range(10):
                clock.now += 5
                p.update(10)
        assert stream.getvalue() == ""
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    # Under capsys stderr is no TTY: progress is a log line, the stream stays clean.
    configure_logging(log_format="json")
    clock = FakeClock()
    with Progress(None, every_seconds=1, clock=clock) as progress:
        clock.now += 1
        progress.update(3)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line["rows"] for line in json_lines(err)] == [3]


@pytest.mark.parametrize("every", [0, -1, float("nan")])
def test_progress_rejects_a_non_positive_interval(every: float) -> None:
    with pytest.raises(ValueError, match="every_seconds"):
        Progress(10, every_seconds=every, stream=io.StringIO())


# --- write_metrics ------------------------------------------------------------------------

ALL_METRICS = [
    "batchpredict_last_run_timestamp_seconds",
    "batchpredict_last_success_timestamp_seconds",
    "batchpredict_rows_total",
    "batchpredict_rejected_rows_total",
    "batchpredict_duration_seconds",
    "batchpredict_last_exit_code",
]


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


def run(path: Path, job: str = "nightly", *, succeeded: bool = True, at: float = 1.7e9) -> None:
    write_metrics(
        str(path),
        job=job,
        succeeded=succeeded,
        finished_at=at,
        duration_seconds=12.5,
        rows=1000 if succeeded else 10,
        rejected_rows=3,
        exit_code=0 if succeeded else 65,
    )


def test_metrics_success(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, at=1712345678.25)
    families = read_metrics(path)
    assert list(families) == ALL_METRICS
    for family in families.values():
        assert family.type == "gauge"
        assert family.documentation
        assert [s.labels for s in family.samples] == [{"job": "nightly"}]
        assert all(s.timestamp is None for s in family.samples)  # textfile collector: none
    assert values(path, "nightly") == {
        "batchpredict_last_run_timestamp_seconds": 1712345678.25,
        "batchpredict_last_success_timestamp_seconds": 1712345678.25,
        "batchpredict_rows_total": 1000,
        "batchpredict_rejected_rows_total": 3,
        "batchpredict_duration_seconds": 12.5,
        "batchpredict_last_exit_code": 0,
    }
    text = path.read_text()
    assert text.endswith("\n")
    assert text.count("# HELP ") == text.count("# TYPE ") == len(ALL_METRICS)


def test_metrics_failure_keeps_the_last_success(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, at=1000.0)
    run(path, succeeded=False, at=2000.0)
    got = values(path, "nightly")
    assert got["batchpredict_last_run_timestamp_seconds"] == 2000.0
    assert got["batchpredict_last_success_timestamp_seconds"] == 1000.0
    assert got["batchpredict_last_exit_code"] == 65
    assert got["batchpredict_rows_total"] == 10
    run(path, succeeded=False, at=3000.0)  # still carried over
    assert values(path, "nightly")["batchpredict_last_success_timestamp_seconds"] == 1000.0
    run(path, at=4000.0)
    assert values(path, "nightly")["batchpredict_last_success_timestamp_seconds"] == 4000.0


def test_metrics_failure_without_a_previous_success(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    run(path, succeeded=False)
    families = read_metrics(path)
    assert "batchpredict_last_success_timestamp_seconds" not in families
    assert set(families) == set(ALL_METRICS) - {"batchpredict_last_success_timestamp_seconds"}
    assert values(path, "nightly")["batchpredict_last_exit_code"] == 65
    # Another job's success is not this job's.
    run(path, "other", at=500.0)
    run(path, "nightly", succeeded=False)
    assert "batchpredict_last_success_timestamp_seconds" not in values(path, "nightly")


def test_metrics_keep_other_jobs(tmp_path: Path) -> None:
    path = tmp_path / "shared.prom"
    run(path, "a", at=100.0)
    run(path, "b", succeeded=False, at=200.0)
    run(path, "a", succeeded=False, at=300.0)
    families = read_metrics(path)
    assert list(families) == ALL_METRICS
    assert values(path, "a")["batchpredict_last_run_timestamp_seconds"] == 300.0
    assert values(path, "a")["batchpredict_last_success_timestamp_seconds"] == 100.0
    assert values(path, "b")["batchpredict_last_run_timestamp_seconds"] == 200.0
    assert "batchpredict_last_success_timestamp_seconds" not in values(path, "b")
    rows = families["batchpredict_rows_total"].samples
    assert sorted(s.labels["job"] for s in rows) == ["a", "b"]


def test_metrics_keep_foreign_metrics_and_skip_garbage(tmp_path: Path) -> None:
    path = tmp_path / "shared.prom"
    path.write_text(
        "# HELP other_latency_seconds Someone else's histogram.\n"
        "# TYPE other_latency_seconds histogram\n"
        'other_latency_seconds_bucket{le="1"} 2\n'
        'other_latency_seconds_bucket{le="+Inf"} 3\n'
        "other_latency_seconds_sum 4.5\n"
        "other_latency_seconds_count 3\n"
        "this line is not exposition format\n"
        'batchpredict_rows_total{job="old" 7\n'  # broken labels: skipped
        'batchpredict_rows_total{job="kept"} 42\n'  # no HELP/TYPE: still a known metric
        'batchpredict_last_success_timestamp_seconds{job="nightly"} 99 1700000000000\n'
    )
    run(path, succeeded=False, at=500.0)
    families = read_metrics(path)
    histogram = families["other_latency_seconds"]
    assert histogram.type == "histogram"
    assert histogram.documentation == "Someone else's histogram."
    assert len(histogram.samples) == 4
    assert values(path, "kept") == {"batchpredict_rows_total": 42}
    assert values(path, "nightly")["batchpredict_last_success_timestamp_seconds"] == 99
    assert "old" not in path.read_text()


def test_metrics_escape_label_values(tmp_path: Path) -> None:
    path = tmp_path / "batchpredict.prom"
    job = 'we"ird\\job\nname'
    run(path, job, at=100.0)
    run(path, "plain", at=150.0)
    run(path, job, succeeded=False, at=200.0)  # the escaped value is read back correctly
    got = values(path, job)
    assert got["batchpredict_last_run_timestamp_seconds"] == 200.0
    assert got["batchpredict_last_success_timestamp_seconds"] == 100.0
    assert len(read_metrics(path)["batchpredict_rows_total"].samples) == 2


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

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ReadWriteError, match="cannot write metrics"):
        run(path, at=200.0)
    assert path.read_text() == old
    assert os.listdir(tmp_path) == ["batchpredict.prom"]


def test_metrics_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "collector" / "job.prom"
    run(path)
    assert values(path, "nightly")["batchpredict_rows_total"] == 1000


def test_metrics_concurrent_jobs_sharing_a_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.prom"
    jobs = [f"job{i}" for i in range(8)]
    threads = [threading.Thread(target=run, args=(path, job)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = read_metrics(path)["batchpredict_rows_total"].samples
    assert sorted(s.labels["job"] for s in rows) == jobs
    assert os.listdir(tmp_path) == ["shared.prom"]


# --- write_summary ------------------------------------------------------------------------


def test_summary_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "summary.json"
    summary = {
        "rows_in": 10,
        "rows_out": 9,
        "rows_rejected": 1,
        "seconds": 1.25,
        "inputs": ("a.csv", "b.csv"),
        "model_version": None,
        "model": "mödel",
    }
    write_summary(str(path), summary)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("{\n  ")  # indented
    assert json.loads(text) == {**summary, "inputs": ["a.csv", "b.csv"]}
    write_summary(str(path), {"rows_in": 0, "rows_per_second": float("nan")})
    assert json.loads(path.read_text()) == {"rows_in": 0, "rows_per_second": None}
    assert os.listdir(path.parent) == ["summary.json"]


# --- run ids ------------------------------------------------------------------------------


def test_new_run_id() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100
    for run_id in ids:
        assert len(run_id) == 12
        int(run_id, 16)


def test_bind_run_id_on_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json")
    log = observe.get_logger()
    run_id = new_run_id()
    bind_run_id(run_id)
    log.info("run started", model="m")
    # Threads do not inherit contextvars; the run id is still on their lines.
    thread = threading.Thread(target=lambda: log.warning("from the writer thread"))
    thread.start()
    thread.join()
    clock = FakeClock()
    with Progress(None, every_seconds=1, stream=io.StringIO(), clock=clock) as progress:
        clock.now += 1
        progress.update(1)
    lines = json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == [
        "run started",
        "from the writer thread",
        "progress",
    ]
    assert all(line["run_id"] == run_id for line in lines)
    unbind_run_id()
    log.info("after")
    assert "run_id" not in json_lines(capsys.readouterr().err)[0]
