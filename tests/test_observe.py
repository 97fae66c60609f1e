"""observe.py: progress lines and bar, the summary file, run ids."""

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
from batchpredict.observe import (
    Progress,
    bind_run_id,
    configure_logging,
    new_run_id,
    unbind_run_id,
    write_summary,
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures structlog itself; leave no configuration or run id behind."""
    yield
    unbind_run_id()
    structlog.contextvars.clear_contextvars()
    observe.reset_logging()


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
