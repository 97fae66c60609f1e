"""The exit contract a scheduler relies on: which code means what, and stderr that a
program can read line by line (one JSON object per line whenever the log lines are JSON)."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT, Completed, batchpredict_command, make_frame, write_with_library

RunMain = Callable[..., Completed]


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line parsed as JSON; fails on any line that is not one JSON object."""
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    parsed = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}\n--- stderr ---\n{stderr}")
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def metrics(path: Path, job: str) -> dict[str, float]:
    """The file parsed as node_exporter's textfile collector would: `job`'s samples."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
        if sample.labels == {"job": job}
    }


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    return write_with_library(make_frame(20), tmp_path / "d.csv", "csv")


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["predict", "--bogus"], {}, "No such option '--bogus'"),
        (["predict", "--log_format", "json", "--bogus"], {}, "--bogus"),
        (["predict", "--bogus"], {"BATCHPREDICT_LOG_FORMAT": "json"}, "--bogus"),
        (["predict", "--model", "m", "--input_file", "x", "--batch_size", "abc"], {}, "abc"),
        (["predict", "--log_format", "xml"], {}, "'xml' is not one of"),
        (["nosuch"], {}, "No such command 'nosuch'"),
        (["predict"], {}, "Missing option"),
    ],
    ids=["auto", "json", "env", "bad-value", "bad-format", "command", "missing"],
)
def test_usage_errors_are_one_json_line_off_a_terminal(
    args: list[str], env: dict[str, str], says: str, run_main: RunMain
) -> None:
    result = run_main(*args, env=env)
    assert result.returncode == 2
    (line,) = json_lines(result.stderr)
    assert line["event"] == "run failed" and line["exit_code"] == 2 and line["level"] == "error"
    assert says in str(line["error"]) and "--help" in str(line["error"])
    assert result.stdout == ""


def test_config_file_errors_are_json_lines_too(tmp_path: Path, run_main: RunMain) -> None:
    config = tmp_path / "job.toml"
    config.write_text("no_such_option = 1\n")
    unknown = run_main("predict", "--config", str(config), "--model", "m", "--input_file", "x")
    config.write_text("model = \n")
    broken = run_main("predict", "--config", str(config))
    missing = run_main("predict", "--config", str(tmp_path / "absent.toml"))
    for result, says in [
        (unknown, "unknown option(s) for predict: no_such_option"),
        (broken, "is not valid TOML"),
        (missing, "cannot read"),
    ]:
        assert result.returncode == 2
        (line,) = json_lines(result.stderr)
        assert line["exit_code"] == 2 and says in str(line["error"]), line


@pytest.mark.parametrize(
    ("args", "env", "config"),
    [
        (["--log_format", "console"], {}, None),
        (["--log-format=console"], {}, None),
        ([], {"BATCHPREDICT_LOG_FORMAT": "console"}, None),
        ([], {}, 'log_format = "console"\n'),
        ([], {}, '[predict]\nlog_format = "console"\n'),
    ],
    ids=["option", "dashed", "env", "config", "config-table"],
)
def test_usage_errors_stay_human_text_with_console_logs(
    args: list[str], env: dict[str, str], config: str | None, tmp_path: Path, run_main: RunMain
) -> None:
    if config is not None:
        (tmp_path / "job.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "job.toml")]
    result = run_main("predict", *args, "--bogus", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: batchpredict predict [OPTIONS]\n")
    assert "Error: No such option '--bogus'" in result.stderr
    assert "{" not in result.stderr


def test_the_command_line_wins_over_the_environment_for_the_format(run_main: RunMain) -> None:
    result = run_main(
        "predict", "--log_format", "json", "--bogus", env={"BATCHPREDICT_LOG_FORMAT": "console"}
    )
    assert result.returncode == 2
    assert json_lines(result.stderr)[0]["exit_code"] == 2


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["--version"]])
def test_help_and_version_are_unaffected(args: list[str], run_main: RunMain) -> None:
    result = run_main(*args, env={"BATCHPREDICT_LOG_FORMAT": "json"})
    assert result.returncode == 0
    assert result.stderr == ""
    assert ("Usage: batchpredict" in result.stdout) or ("version" in result.stdout)


# --------------------------------------------------------------------------- models: 78


@pytest.mark.parametrize("command", ["predict", "inspect", "validate"])
def test_a_missing_model_is_78_not_66(
    command: str, tmp_path: Path, small_csv: Path, run_main: RunMain
) -> None:
    missing = tmp_path / "models" / "scoring.keras"
    result = run_main(command, "--model", str(missing), "--input_file", str(small_csv))
    assert result.returncode == 78, result.stderr
    (line,) = [entry for entry in json_lines(result.stderr) if entry["level"] == "error"]
    assert line["exit_code"] == 78
    assert line["error"] == f"model path does not exist: {missing}"


def test_a_model_folder_that_cannot_be_read_is_78(
    tmp_path: Path, small_csv: Path, run_main: RunMain
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    base = tmp_path / "serving"
    (base / "1").mkdir(parents=True)
    base.chmod(0)
    try:
        result = run_main("predict", "--model", str(base), "--input_file", str(small_csv))
    finally:
        base.chmod(0o755)
    assert result.returncode == 78, result.stderr
    assert f"cannot read model directory {base}" in result.stderr


def test_a_missing_input_is_still_66(tmp_path: Path, mlp_model: Path, run_main: RunMain) -> None:
    result = run_main("predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "x.csv"))
    assert result.returncode == 66
    assert json_lines(result.stderr)[-1]["exit_code"] == 66


def test_with_a_log_file_stderr_still_gets_the_failure(
    tmp_path: Path, small_csv: Path, run_main: RunMain
) -> None:
    log = tmp_path / "run.log"
    args = ["predict", "--model", str(tmp_path / "m.keras"), "--input_file", str(small_csv)]
    as_json = run_main(*args, "--log_file", str(log))
    assert as_json.returncode == 78
    (line,) = json_lines(as_json.stderr)
    assert line["exit_code"] == 78 and "model path does not exist" in str(line["error"])
    assert line["run_id"] == json.loads(log.read_text().splitlines()[-1])["run_id"]
    as_text = run_main(*args, "--log_file", str(log), "--log_format", "console")
    assert as_text.returncode == 78
    assert as_text.stderr == f"batchpredict: model path does not exist: {tmp_path / 'm.keras'}\n"


# --------------------------------------------------------------------------- the lock: 75


def test_a_run_refused_by_the_lock_writes_metrics_and_summary(
    tmp_path: Path, mlp_model: Path, small_csv: Path, run_main: RunMain
) -> None:
    prom = tmp_path / "textfile" / "batchpredict.prom"
    summary = tmp_path / "summary.json"
    lock = tmp_path / "job.lock"
    args = [
        "predict", "--model", str(mlp_model), "--input_file", str(small_csv),
        "--keep_columns", "id,segment", "--lock_file", str(lock), "--job_name", "nightly",
        "--metrics_file", str(prom), "--summary_file", str(summary),
    ]  # fmt: skip
    assert run_main(*args).returncode == 0
    before = metrics(prom, "nightly")
    assert before["batchpredict_rows_total"] == before["batchpredict_last_run_rows"] == 20
    time.sleep(0.01)
    with lock.open("w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = run_main(*args)
    assert refused.returncode == 75
    assert json_lines(refused.stderr)[-1]["exit_code"] == 75
    after = metrics(prom, "nightly")
    assert after["batchpredict_last_exit_code"] == 75
    assert after["batchpredict_last_run_rows"] == after["batchpredict_last_run_rejected_rows"] == 0
    assert after["batchpredict_rows_total"] == 20  # a counter: the run added no rows
    assert (
        after["batchpredict_last_success_timestamp_seconds"]
        == before["batchpredict_last_success_timestamp_seconds"]
    )
    assert (
        after["batchpredict_last_run_timestamp_seconds"]
        > before["batchpredict_last_run_timestamp_seconds"]
    )
    report = json.loads(summary.read_text())
    assert report["status"] == "locked" and report["exit_code"] == 75
    assert report["lock_file"] == str(lock) and "another run holds the lock" in report["error"]
    assert report["rows_in"] == report["rows_out"] == 0


def test_the_library_reports_a_refused_run_too(
    tmp_path: Path, mlp_model: Path, small_csv: Path
) -> None:
    import batchpredict
    from batchpredict.errors import LockHeldError

    lock, summary = tmp_path / "job.lock", tmp_path / "summary.json"
    with lock.open("w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockHeldError):
            batchpredict.predict(
                str(mlp_model), str(small_csv), lock_file=str(lock), summary_file=str(summary)
            )
    assert json.loads(summary.read_text())["status"] == "locked"


@pytest.mark.slow
def test_the_refused_run_reports_without_importing_tensorflow(
    tmp_path: Path, small_csv: Path
) -> None:
    lock, summary = tmp_path / "job.lock", tmp_path / "summary.json"
    args = [
        "predict", "--model", str(tmp_path / "m.keras"), "--input_file", str(small_csv),
        "--lock_file", str(lock), "--summary_file", str(summary),
    ]  # fmt: skip
    code = (
        "import sys; from batchpredict import cli; "
        f"assert cli.main({args!r}) == 75; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    with lock.open("w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(summary.read_text())["exit_code"] == 75


# --------------------------------------------------------------------------- a closed stdout


@pytest.mark.slow
def test_output_to_a_pipe_that_head_closes_ends_quietly_with_141(
    tmp_path: Path, mlp_model: Path
) -> None:
    source = write_with_library(make_frame(30_000), tmp_path / "d.parquet", "parquet")
    rejects, summary = tmp_path / "rejects.jsonl", tmp_path / "summary.json"
    command = shlex.join(
        [
            *batchpredict_command(),
            "predict", "--model", str(mlp_model), "--input_file", str(source),
            "--keep_columns", "id,segment", "--output_file", "-", "--output_format", "csv",
            "--chunk_size", "1000", "--on_error", "skip", "--rejects_file", str(rejects),
            "--summary_file", str(summary),
        ]
    )  # fmt: skip
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -1"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")},
    )
    assert proc.returncode == 141, proc.stderr
    assert proc.stdout == '"id","segment","prediction"\n'
    lines = json_lines(proc.stderr)  # and nothing else: no traceback, no "Exception ignored"
    assert [line["event"] for line in lines] == [
        "run started",
        "feature order taken from the first input",
        "batch size chosen",
    ]
    assert not rejects.exists(), "the rejects file is dropped, as for an interrupted run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "summary.json"]
    report = json.loads(summary.read_text())
    assert report["exit_code"] == 141 and report["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("args", [["formats"], ["predict", "--help"], ["--version"]])
def test_any_output_to_a_closed_pipe_ends_quietly_with_141(args: list[str]) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # nobody will read: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [*batchpredict_command(), *args], stdout=writer, stderr=subprocess.PIPE, timeout=120
        )
    finally:
        os.close(writer)
    assert proc.returncode == 141
    assert proc.stderr == b""


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
@pytest.mark.parametrize("args", [[], ["--log_format", "json"]], ids=["auto", "json"])
def test_sigint_leaves_only_json_lines_on_stderr(
    args: list[str], tmp_path: Path, mlp_model: Path
) -> None:
    data = write_with_library(make_frame(2000), tmp_path / "d.csv", "csv").read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    proc = subprocess.Popen(
        [*batchpredict_command(), "predict", "--model", str(mlp_model), "--input_file", "-",
         "--input_format", "csv", "--output_file", str(tmp_path / "out.csv"),
         "--keep_columns", "id,segment", "--chunk_size", "100", *args],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(data[: len(data) // 2])  # and hold the rest back: the run waits
    proc.stdin.flush()
    seen = b""
    while b"run started" not in seen:
        line = proc.stderr.readline()
        assert line, f"ended before it started: {seen.decode()}"
        seen += line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    proc.stdin.close()
    stderr = (seen + proc.stderr.read()).decode()
    lines = json_lines(stderr)
    assert lines[-1]["event"] == "run failed" and lines[-1]["exit_code"] == 130
    assert not (tmp_path / "out.csv").exists()


# --------------------------------------------------------------------------- bin/predict.sh


@pytest.fixture(scope="module")
def project_without_batchpredict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of bin/predict.sh beside a virtualenv whose python lacks batchpredict (and
    whose bin/batchpredict exists, as after a broken install)."""
    project = tmp_path_factory.mktemp("project")
    (project / "bin").mkdir()
    (project / "bin" / "predict.sh").write_bytes((ROOT / "bin" / "predict.sh").read_bytes())
    (project / "bin" / "predict.sh").chmod(0o755)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(project / ".venv")],
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    stub = project / ".venv" / "bin" / "batchpredict"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    yield project


@pytest.mark.slow
@pytest.mark.parametrize("which", ["BATCHPREDICT_PYTHON", "virtualenv"])
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_wrapper_exits_127_when_its_python_lacks_batchpredict(
    which: str, log_format: str, project_without_batchpredict: Path
) -> None:
    python = project_without_batchpredict / ".venv" / "bin" / "python"
    env = ["env", "-i", "PATH=/usr/bin:/bin"]
    if which == "BATCHPREDICT_PYTHON":
        env.append(f"BATCHPREDICT_PYTHON={python}")
    proc = subprocess.run(
        [*env, str(project_without_batchpredict / "bin" / "predict.sh"),
         "--model", "m.keras", "--input_file", "d.csv", "--log_format", log_format],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 127, proc.stderr
    if log_format == "json":
        (line,) = json_lines(proc.stderr)
        assert line["exit_code"] == 127 and line["event"] == "run failed"
        message = str(line["error"])
    else:
        message = proc.stderr.splitlines()[0]
    assert message.startswith(f"predict.sh: {python}") and "cannot import batchpredict" in message
