"""Kills, full disks and overlapping runs: no output under its final name unless the run
succeeded, the previous output intact, and a killed nightly job that resumes."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import Completed, batchpredict_command, make_frame, write_with_library

RunCli = Callable[..., Completed]
pytestmark = pytest.mark.slow


def big_csv(path: Path, rows: int = 400_000) -> Path:
    """A file that takes a few seconds to score with small chunks."""
    return write_with_library(make_frame(rows), path, "csv")


class HeldInput:
    """Feeds a CSV file to a command's stdin but holds back its second half until released,
    so the run is certainly still going when a test interrupts it, on any machine speed."""

    def __init__(self, source: Path) -> None:
        self.data = source.read_bytes()
        self.released = threading.Event()
        self.thread: threading.Thread | None = None

    def feed(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        stdin = proc.stdin
        half = len(self.data) // 2

        def run() -> None:
            try:
                stdin.write(self.data[:half])
                stdin.flush()
                self.released.wait(timeout=300)
                stdin.write(self.data[half:])
            except (BrokenPipeError, ValueError):
                return  # the command was stopped; nothing more to feed
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()
        if self.thread is not None:
            self.thread.join(timeout=60)


def wait_for_temporary(
    directory: Path, proc: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    """Wait until the run has opened its output's temporary file."""
    deadline = time.monotonic() + timeout
    while not leftovers(directory):
        assert proc.poll() is None, f"process ended ({proc.returncode}) before writing"
        assert time.monotonic() < deadline, "no temporary output file appeared"
        time.sleep(0.05)


def start(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start the command as a terminal would: SIGINT at its default even if this test
    process inherited it ignored (shells ignore SIGINT in background jobs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    extra = popen.pop("preexec_fn", None)

    def prepare() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if extra is not None:
            extra()

    return subprocess.Popen(
        [*batchpredict_command(), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        preexec_fn=prepare,
        **popen,
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def wait_for_line(proc: subprocess.Popen[bytes], text: str, timeout: float = 120) -> None:
    """Read stderr until a log line containing `text` appears."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {text!r}")
    raise AssertionError(f"no {text!r} within {timeout}s")


@pytest.mark.parametrize("prefetch", ["numpy", "tfdata"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_removes_temporaries_and_keeps_previous_output(
    signum: int, code: int, prefetch: str, tmp_path: Path, mlp_model: Path
) -> None:
    """On either path to the model the main thread waits for the stalled reading thread in
    Python (not inside `tf.data`), so the signal ends the run."""
    held = HeldInput(big_csv(tmp_path / "d.csv", rows=100_000))
    out = tmp_path / "d.predictions.csv"
    out.write_text("previous\n")
    proc = start(
        "predict", "--model", str(mlp_model), "--input_file", "-", "--input_format", "csv",
        "--output_file", str(out), "--keep_columns", "id,segment", "--chunk_size", "2000",
        "--batch_size", "256", "--on_error", "skip", "--prefetch", prefetch,
        stdin=subprocess.PIPE,
    )  # fmt: skip
    held.feed(proc)
    wait_for_temporary(tmp_path, proc)  # scoring is under way; the input then stalls
    proc.send_signal(signum)
    try:
        assert proc.wait(timeout=60) == code
    finally:
        held.release()
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert f'"prefetch": "{prefetch}"' in stderr
    assert "no output was committed" in stderr
    assert out.read_text() == "previous\n"
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "d.predictions.csv.rejects.jsonl").exists()


def test_sigkill_leaves_no_final_output_and_the_next_run_cleans_up(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    source = big_csv(tmp_path / "d.csv", rows=100_000)
    held = HeldInput(source)
    out = tmp_path / "d.predictions.csv"
    args = ["predict", "--model", str(mlp_model), "--keep_columns", "id,segment"]
    proc = start(
        *args, "--input_file", "-", "--input_format", "csv", "--output_file", str(out),
        "--chunk_size", "2000", "--batch_size", "256",
        stdin=subprocess.PIPE,
    )  # fmt: skip
    held.feed(proc)
    wait_for_temporary(tmp_path, proc)
    proc.kill()
    proc.wait(timeout=60)
    held.release()
    assert not out.exists()
    assert leftovers(tmp_path), "a killed run leaves its temporary file (nothing can remove it)"
    result = run_main(*args, "--input_file", str(source))
    assert result.returncode == 0, result.stderr
    assert leftovers(tmp_path) == []
    assert sum(1 for _ in out.open()) == 100_001


def test_file_size_limit_is_an_io_error_and_previous_output_survives(
    tmp_path: Path, mlp_model: Path
) -> None:
    source = write_with_library(make_frame(50_000), tmp_path / "d.parquet", "parquet")
    out = tmp_path / "d.predictions.csv"
    out.write_text("previous\n")

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = start(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment", "--output_format", "csv", "--chunk_size", "5000",
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert proc.wait(timeout=120) == 74
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert "d.predictions.csv" in stderr and "Traceback" not in stderr
    assert out.read_text() == "previous\n"
    assert leftovers(tmp_path) == []


def test_two_runs_racing_on_one_lock(tmp_path: Path, mlp_model: Path) -> None:
    source = big_csv(tmp_path / "d.csv", rows=20_000)
    held = HeldInput(source)
    lock = tmp_path / "job.lock"
    args = [
        "predict", "--model", str(mlp_model), "--keep_columns", "id,segment",
        "--lock_file", str(lock), "--chunk_size", "2000", "--batch_size", "256",
    ]  # fmt: skip
    first = start(
        *args, "--input_file", "-", "--input_format", "csv",
        "--output_file", str(tmp_path / "first.csv"),
        stdin=subprocess.PIPE,
    )  # fmt: skip
    held.feed(first)
    wait_for_line(first, "run started")
    second = start(*args, "--input_file", str(source))
    assert second.wait(timeout=120) == 75
    held.release()
    assert first.wait(timeout=300) == 0
    assert sum(1 for _ in (tmp_path / "first.csv").open()) == 20_001
    assert not (tmp_path / "d.predictions.csv").exists()


def journaled(journal: Path) -> list[str]:
    """The outputs a run's journal records as committed (whole lines only)."""
    if not journal.exists():
        return []
    lines = journal.read_text().split("\n")[:-1]
    return [json.loads(line)["output"] for line in lines if '"output"' in line]


def test_skip_existing_resumes_a_killed_run(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    exports = tmp_path / "exports"
    for day in range(1, 5):
        (exports / f"day={day}").mkdir(parents=True)
        write_with_library(
            make_frame(60_000, seed=day), exports / f"day={day}" / "part-0.parquet", "parquet"
        )
    out_dir = tmp_path / "scored"
    args = [
        "predict", "--model", str(mlp_model), "--input_file", str(exports),
        "--output_dir", str(out_dir), "--keep_columns", "id,segment", "--chunk_size", "2000",
        "--batch_size", "128",
    ]  # fmt: skip
    proc = start(*args)
    manifest, journal = out_dir / "_manifest.json", out_dir / "_manifest.journal"
    deadline = time.monotonic() + 120
    while not journaled(journal) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    # Killed outright: no manifest yet, the journal says what was finished.
    assert not manifest.exists()
    done_before = journaled(journal)
    assert 1 <= len(done_before) < 4, "the kill should land between the first and last output"
    assert not (out_dir / "_SUCCESS").exists()
    mtimes = {name: (out_dir / name).stat().st_mtime_ns for name in done_before}

    result = run_main(*args, "--skip_existing")
    assert result.returncode == 0, result.stderr
    skipped = [
        line["output"]
        for line in result.log_lines()
        if line["event"] == "output already complete, skipped"
    ]
    assert sorted(os.path.relpath(s, out_dir) for s in skipped) == sorted(done_before)
    assert {name: (out_dir / name).stat().st_mtime_ns for name in done_before} == mtimes
    assert (out_dir / "_SUCCESS").exists()
    assert not journal.exists()
    entries = json.loads(manifest.read_text())["outputs"]
    assert sorted(e["output"] for e in entries) == [f"day={d}/part-0.parquet" for d in range(1, 5)]
    for day in range(1, 5):
        table = pq.read_table(out_dir / f"day={day}" / "part-0.parquet")
        assert table.column("id").to_pylist() == list(range(1, 60_001))
        assert table.column("prediction").null_count == 0
