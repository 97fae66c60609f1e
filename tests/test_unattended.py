"""Made for cron and other programs: log lines, progress, metrics, summary, the wrapper."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, Completed, batchpredict_command, make_frame, write_with_library

RunCli = Callable[..., Completed]


def metrics(path: Path, job: str = "nightly") -> dict[str, float]:
    """The file parsed as node_exporter's textfile collector would: every sample of `job`."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            assert sample.labels == {"job": job}
            values[sample.name] = sample.value
    return values


def test_json_log_lines_field_by_field(tmp_path: Path, mlp_model: Path, run_main: RunCli) -> None:
    source = write_with_library(make_frame(5000), tmp_path / "d.parquet", "parquet")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--chunk_size", "500", "--progress_every", "0.0001",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.log_lines()
    assert len(lines) == len(result.stderr.splitlines()), "every stderr line is a JSON log line"
    assert len({line["run_id"] for line in lines}) == 1
    assert all({"run_id", "level", "timestamp", "event"} <= line.keys() for line in lines)
    started, order, chosen, *progress, finished = lines
    assert started["event"] == "run started"
    assert started["column_mapping"]["inputs"][0]["columns"] == ["f0", "f1", "f2", "f3"]
    # The default rule took the column order from the file: a warning says how to pin it.
    assert order["level"] == "warning" and order["features"] == "f0,f1,f2,f3"
    assert started["model"] == str(mlp_model) and started["inputs"] == [str(source)]
    assert started["batch_size"] == "auto" and started["device"] == "/CPU:0"
    # --batch_size auto picks among powers of two no larger than --chunk_size.
    assert chosen["event"] == "batch size chosen" and chosen["batch_size"] == 256
    assert finished["batch_size"] == 256
    assert {"model_version", "signature"} <= started.keys()
    assert progress and all(p["event"] == "progress" for p in progress)
    assert progress[-1]["rows"] <= 5000 and progress[-1]["percent"] <= 100
    assert {"rows_per_second", "elapsed_seconds", "eta_seconds"} <= progress[0].keys()
    assert finished["event"] == "run finished"
    assert (finished["rows_in"], finished["rows_out"], finished["rows_rejected"]) == (5000, 5000, 0)
    assert finished["outputs"] == [str(tmp_path / "d.predictions.parquet")]
    assert finished["seconds"] > 0 and finished["rows_per_second"] > 0


def test_log_file_has_no_carriage_returns_and_no_progress_when_asked(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    source = write_with_library(make_frame(3000), tmp_path / "d.csv", "csv")
    log = tmp_path / "run.log"
    args = [
        "predict",
        "--model",
        str(mlp_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id,segment",
    ]
    first = run_main(
        *args, "--log_file", str(log), "--chunk_size", "300", "--progress_every", "0.0001"
    )
    second = run_main(*args, "--log_file", str(log), "--no_progress", "--chunk_size", "300")
    assert first.returncode == second.returncode == 0
    assert first.stderr == second.stderr == ""
    text = log.read_text()
    assert "\r" not in text
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert "progress" in events
    assert events[-4:] == [
        "run started",
        "feature order taken from the first input",
        "batch size chosen",
        "run finished",
    ], "--no_progress run has no progress lines"


@pytest.mark.slow
def test_progress_bar_on_a_terminal(tmp_path: Path, mlp_model: Path) -> None:
    source = write_with_library(make_frame(20_000), tmp_path / "d.parquet", "parquet")
    main, secondary = pty.openpty()
    # A terminal of 100 columns: a new pty has 0, which leaves tqdm no room to draw.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    proc = subprocess.Popen(
        [*batchpredict_command(), "predict", "--model", str(mlp_model), "--input_file", str(source),
         "--keep_columns", "id,segment", "--chunk_size", "1000"],
        stderr=secondary, stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    os.close(secondary)
    output = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        output += data
    assert proc.wait(timeout=120) == 0
    text = output.decode(errors="replace")
    assert "100%" in text and "20.0k/20.0k" in text and "rows/s" in text
    assert "run finished" in text and '"event"' not in text, "console lines on a terminal"


def test_metrics_file_on_success_then_failure(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    source = write_with_library(make_frame(50), tmp_path / "d.csv", "csv")
    prom = tmp_path / "textfile" / "batchpredict.prom"
    summary = tmp_path / "summary.json"
    args = [
        "predict", "--model", str(mlp_model), "--keep_columns", "id,segment",
        "--job_name", "nightly", "--metrics_file", str(prom), "--summary_file", str(summary),
    ]  # fmt: skip
    ok = run_main(*args, "--input_file", str(source))
    assert ok.returncode == 0, ok.stderr
    first = metrics(prom)
    assert first["batchpredict_rows_total"] == first["batchpredict_last_run_rows"] == 50
    assert first["batchpredict_last_exit_code"] == 0
    assert (
        first["batchpredict_last_success_timestamp_seconds"]
        == first["batchpredict_last_run_timestamp_seconds"]
    )
    assert json.loads(summary.read_text())["status"] == "succeeded"
    time.sleep(0.01)
    failed = run_main(*args, "--input_file", str(tmp_path / "missing.csv"))
    assert failed.returncode == 66
    second = metrics(prom)
    assert second["batchpredict_last_exit_code"] == 66
    assert second["batchpredict_last_run_rows"] == 0 and second["batchpredict_rows_total"] == 50
    assert (
        second["batchpredict_last_run_timestamp_seconds"]
        > first["batchpredict_last_run_timestamp_seconds"]
    )
    assert (
        second["batchpredict_last_success_timestamp_seconds"]
        == first["batchpredict_last_success_timestamp_seconds"]
    )
    report = json.loads(summary.read_text())
    assert (
        report["status"] == "failed"
        and report["exit_code"] == 66
        and "missing.csv" in report["error"]
    )
    assert sorted(p.name for p in prom.parent.iterdir()) == ["batchpredict.prom"]


@pytest.mark.slow
@pytest.mark.parametrize("model_path", ["relative", "absolute"])
def test_wrapper_under_cron_like_bare_environment(
    model_path: str, tmp_path: Path, mlp_model: Path
) -> None:
    work = tmp_path / "job"
    work.mkdir()
    shutil.copy(mlp_model, work / "model.keras")
    write_with_library(make_frame(12), work / "d.csv", "csv")
    model = "model.keras" if model_path == "relative" else str(work / "model.keras")
    cwd = work if model_path == "relative" else Path("/")
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"BATCHPREDICT_PYTHON={sys.executable}",
           f"BATCHPREDICT_LOCK_FILE={tmp_path / 'job.lock'}"]  # fmt: skip
    proc = subprocess.run(
        [*env, str(ROOT / "bin" / "predict.sh"), "--model", model,
         "--input_file", str(work / "d.csv"), "--keep_columns", "id,segment"],
        cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (work / "d.predictions.csv").exists()
    assert (tmp_path / "job.lock").exists(), "BATCHPREDICT_LOCK_FILE reached --lock_file"
    assert all(line.startswith("{") for line in proc.stderr.splitlines())


@pytest.fixture
def cron_daemon() -> Iterator[Path]:
    """A real cron daemon (Debian's `cron`) reading a file in /etc/cron.d, removed after."""
    cron = shutil.which("cron") or "/usr/sbin/cron"
    if not Path(cron).exists():
        pytest.skip("Debian's cron is not installed (.ci/run installs it where apt-get works)")
    if os.geteuid() != 0:
        pytest.skip("the cron daemon needs root to read /etc/cron.d")
    running = subprocess.run(["pgrep", "-x", "cron"], capture_output=True).returncode == 0
    entry = Path("/etc/cron.d") / f"batchpredict-test-{uuid.uuid4().hex[:8]}"
    daemon = None if running else subprocess.Popen([cron, "-f"], stderr=subprocess.DEVNULL)
    try:
        yield entry
    finally:
        entry.unlink(missing_ok=True)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=10)


@pytest.mark.slow
def test_a_real_cron_daemon_runs_the_crontab_example_line(
    tmp_path: Path, mlp_model: Path, cron_daemon: Path
) -> None:
    """The line from crontab.example, paths adjusted, fired once by cron."""
    example = next(
        line
        for line in (ROOT / "crontab.example").read_text().splitlines()
        if line.startswith("30 2 * * *")
    )
    exports = tmp_path / "exports" / time.strftime("%Y-%m-%d")
    exports.mkdir(parents=True)
    frame = make_frame(40).rename(columns={"id": "customer_id"}).drop(columns=["segment"])
    write_with_library(frame, exports / "part-0.parquet", "parquet")
    log = tmp_path / "nightly.log"
    line = (
        example.replace("30 2 * * *", "* * * * * root")
        .replace(
            "/opt/batchpredict/bin/predict.sh",
            f"BATCHPREDICT_PYTHON={sys.executable} {ROOT}/bin/predict.sh",
        )
        .replace("/opt/batchpredict/models/scoring", str(mlp_model))
        .replace("/data/exports", str(tmp_path / "exports"))
        .replace("/data/predictions", str(tmp_path / "predictions"))
        .replace("/run/lock/batchpredict/nightly.lock", str(tmp_path / "nightly.lock"))
        .replace("/var/lib/node_exporter/textfile", str(tmp_path / "textfile"))
        .replace("/var/log/batchpredict/nightly.log", str(log))
    )
    cron_daemon.write_text(f"# written by batchpredict's tests; removed after\n{line}\n")
    deadline = time.monotonic() + 150
    out_dir = tmp_path / "predictions"
    prom = tmp_path / "textfile" / "nightly_scoring.prom"
    # The metrics file is the run's last act (it carries the exit code), after _SUCCESS.
    while time.monotonic() < deadline and not prom.exists():
        time.sleep(1)
    cron_daemon.unlink()  # fire once
    assert (out_dir / "_SUCCESS").exists(), (
        log.read_text() if log.exists() else "cron never ran the job"
    )
    table = pq.read_table(out_dir / time.strftime("%Y-%m-%d") / "part-0.parquet")
    assert table.column_names == ["customer_id", "prediction"] and table.num_rows == 40
    lines = log.read_text().splitlines()
    events = [json.loads(entry)["event"] for entry in lines]
    assert events[0] == "run started" and "run finished" in events
    assert "\r" not in log.read_text()
    scraped = metrics(prom, job="nightly_scoring")
    assert scraped["batchpredict_rows_total"] == 40 and scraped["batchpredict_last_exit_code"] == 0


@pytest.mark.parametrize(
    ("args", "expect_started", "json_lines"),
    [
        (["--log_level", "warning"], False, True),
        (["--log_format", "console"], True, False),
        (["--log_level", "debug", "--log_format", "json"], True, True),
    ],
)
def test_log_level_and_format(
    args: list[str],
    expect_started: bool,
    json_lines: bool,
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunCli,
) -> None:
    source = write_with_library(make_frame(10), tmp_path / "d.csv", "csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--device", "cpu", "--gpu_memory_limit", "512", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "run started" in line]
    assert bool(ours) == expect_started
    if ours:
        assert ours[0].startswith("{") == json_lines
