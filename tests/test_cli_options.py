"""The command line as a thin layer: every RunConfig field comes from an option through one
generic table, --help reads in sections, and a run leaves the process environment and
TensorFlow alone until it needs them."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from batchpredict import cli, cli_options, observe, storage
from batchpredict.config import FORMAT_NAMES, RunConfig
from batchpredict.errors import ExitCode
from batchpredict.formats.registry import READERS, WRITERS
from conftest import Completed, make_frame, write_with_library

RunMain = Callable[..., Completed]
#: What fits make_frame's columns to mlp_model's one [None, 4] input.
FIT = ["--features", "f0,f1,f2,f3", "--keep_columns", "id,segment"]
PREDICT = cli.cli.commands["predict"]


def _options(command: click.Command, args: list[str]) -> dict[str, Any]:
    """The option values click parses from `args` for `command`, as the command gets them."""
    with command.make_context(command.name or "", list(args)) as ctx:
        return dict(ctx.params)


def _every_option(tmp_path: Path) -> list[str]:
    """A predict command line that gives every option a value other than its default."""
    names = tmp_path / "names.txt"
    names.write_text("neg\npos\n")
    return [
        "--model", "m.keras", "--signature", "sig", "--model_version", "3",
        "--unsafe_model_load", "--device", "cpu", "--gpu_memory_limit", "512",
        "--prefetch", "tfdata",
        "--batch_size", "32", "--input_file", "a.csv", "--input-file", "b.csv",
        "--input_format", "csv", "--features", "f0, f1", "--keep_columns", "id",
        "--delimiter", "tab", "--null_values", "NA,-", "--chunk_size", "100",
        "--max_record_bytes", "1000", "--s3_endpoint_url", "http://127.0.0.1:9000",
        "--storage_timeout", "7.5",
        "--output_dir", "out", "--output_format", "parquet", "--skip_existing",
        "--max_output_bytes", "10000", "--prediction_column", "p",
        "--class_names_file", str(names), "--threshold", "0.7", "--label_output", "o",
        "--label_column", "L", "--score_column", "S", "--on_error", "skip",
        "--max_error_rate", "0.5", "--fill_value", "0", "--rejects_file", "rej.jsonl",
        "--log_level", "warning", "--lock_file", "run.lock", "--metrics_file", "m.prom",
        "--job_name", "j", "--summary_file", "s.json", "--progress_every", "5",
        "--no_progress", "--ray_address", "auto", "--ray_concurrency", "2",
        "--ray_gpus_per_worker", "0.5", "--ray_cpus_per_worker", "2", "--preserve_order",
        "--stats_file", "st.json",
        "--baseline", "base.json", "--max_drift", "0.25", "--input_version", "2",
    ]  # fmt: skip


EXPECTED = {
    "model": "m.keras",
    "signature": "sig",
    "model_version": 3,
    "unsafe_model_load": True,
    "device": "cpu",
    "gpu_memory_limit": 512,
    "prefetch": "tfdata",
    "batch_size": 32,
    "input_files": ("a.csv", "b.csv"),
    "input_format": "csv",
    "features": ("f0", "f1"),
    "keep_columns": ("id",),
    "delimiter": "\t",
    "null_values": ("NA", "-"),
    "chunk_size": 100,
    "max_record_bytes": 1000,
    "s3_endpoint_url": "http://127.0.0.1:9000",
    "storage_timeout": 7.5,
    "output_dir": "out",
    "output_format": "parquet",
    "skip_existing": True,
    "max_output_bytes": 10000,
    "prediction_column": "p",
    "class_names": ("neg", "pos"),
    "threshold": 0.7,
    "label_output": "o",
    "label_column": "L",
    "score_column": "S",
    "on_error": "skip",
    "max_error_rate": 0.5,
    "fill_value": 0.0,
    "rejects_file": "rej.jsonl",
    "log_level": "warning",
    "lock_file": "run.lock",
    "metrics_file": "m.prom",
    "job_name": "j",
    "summary_file": "s.json",
    "progress_every": 5.0,
    "progress": False,
    "ray_address": "auto",
    "ray_concurrency": 2,
    "ray_gpus_per_worker": 0.5,
    "ray_cpus_per_worker": 2.0,
    "preserve_order": True,
    "stats_file": "st.json",
    "baseline": "base.json",
    "max_drift": 0.25,
    "input_version": 2,
}
#: Fields the command line above leaves at their defaults, each checked on its own below.
AT_DEFAULT = {
    "output_file": "--output_file and --output_dir exclude each other",
    "engine": "ray",
    "output_mode": "--output_mode is for --output_format delta, which --skip_existing excludes",
    "shard_index": "shards refuse --stats_file and --rejects_file",
    "shard_count": "shards refuse --stats_file and --rejects_file",
}


def test_every_field_is_made_from_an_option_or_named_as_made_otherwise() -> None:
    options = {p.name for p in PREDICT.params}
    for field in dataclasses.fields(RunConfig):
        sources, _ = cli_options.CONVERTED_FIELDS.get(field.name, ((field.name,), None))
        assert set(sources) <= options, f"RunConfig.{field.name} has no option"
    feeding = {s for sources, _ in cli_options.CONVERTED_FIELDS.values() for s in sources}
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    orphans = options - fields - feeding - cli_options.COMMAND_LINE_OPTIONS
    assert not orphans, f"options that reach no RunConfig field: {orphans}"


def test_a_value_given_to_every_option_reaches_its_field(tmp_path: Path) -> None:
    config = cli_options.run_config(_options(PREDICT, _every_option(tmp_path)))
    defaults = RunConfig(model="m", input_files=("a",))
    for field in dataclasses.fields(RunConfig):
        if field.name in AT_DEFAULT:
            continue
        assert getattr(config, field.name) == EXPECTED[field.name], field.name
        assert getattr(config, field.name) != getattr(defaults, field.name), field.name
    assert set(EXPECTED) | set(AT_DEFAULT) == {f.name for f in dataclasses.fields(RunConfig)}


def test_the_fields_left_at_default_above_come_from_their_options_too() -> None:
    args = ["--model", "m.keras", "--input_file", "a.csv"]
    config = cli_options.run_config(_options(PREDICT, [*args, "--output_file", "o.csv"]))
    assert config.output_file == "o.csv"
    config = cli_options.run_config(
        _options(PREDICT, [*args, "--output_dir", "d", "--engine", "ray"])
    )
    assert config.engine == "ray"
    delta = ["--output_dir", "d", "--output_format", "delta", "--output_mode", "append"]
    config = cli_options.run_config(_options(PREDICT, [*args, *delta]))
    assert config.output_mode == "append"
    shard = ["--output_dir", "d", "--shard_index", "1", "--shard_count", "3"]
    config = cli_options.run_config(_options(PREDICT, [*args, *shard]))
    assert (config.shard_index, config.shard_count) == (1, 3)


def test_inspect_and_validate_build_the_config_from_the_options_they_have() -> None:
    args = ["--model", "m.keras", "--input_file", "a.csv", "--features", "x,y"]
    for name in ("inspect", "validate"):
        config = cli_options.run_config(_options(cli.cli.commands[name], args))
        assert config.features == ("x", "y")
        assert config.output_file is None and config.progress is True


def test_environment_variables_and_the_config_file_still_set_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job.toml"
    job.write_text('features = ["a", "b"]\n[predict]\nchunk_size = 7\n')
    monkeypatch.setenv("BATCHPREDICT_JOB_NAME", "nightly")
    monkeypatch.setenv("BATCHPREDICT_INPUT_FILE", "x.csv y.csv")
    args = ["--model", "m.keras", "--config", str(job)]
    config = cli_options.run_config(_options(PREDICT, args))
    assert config.features == ("a", "b") and config.chunk_size == 7
    assert config.job_name == "nightly" and config.input_files == ("x.csv", "y.csv")
    config = cli_options.run_config(_options(cli.cli.commands["validate"], args))
    assert config.features == ("a", "b") and config.chunk_size == 7


def test_formats_offered_as_choices_are_the_registered_ones() -> None:
    assert set(FORMAT_NAMES) == set(READERS) == set(WRITERS)


@pytest.mark.parametrize(
    ("command", "sections"),
    [
        (
            "predict",
            [
                "Model",
                "Inputs",
                "Outputs",
                "Prediction columns",
                "Bad data",
                "Running unattended",
                "Engines",
            ],
        ),
        ("inspect", ["Model", "Inputs", "Bad data", "Logging"]),
        ("validate", ["Model", "Inputs", "Bad data", "Logging"]),
    ],
)
def test_help_reads_in_sections_with_one_spelling_per_option(
    command: str, sections: list[str], run_main: RunMain
) -> None:
    result = run_main(command, "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    titles = [line.rstrip(":") for line in lines if line and not line[0].isspace()]
    assert [t for t in titles if t in sections] == sections
    body = result.stdout.split("\n\n", 2)[2]  # past the usage line and the summary
    options, _, epilog = body.rpartition("Other options:")
    for param in cli.cli.commands[command].params:
        if isinstance(param, click.Option) and param.name != "help":
            shown = [line for line in lines if line.strip().startswith(f"--{param.name} ")]
            shown += [line for line in lines if line.strip() == f"--{param.name}"]
            assert len(shown) == 1, param.name
            assert f"--{param.name.replace('_', '-')}" not in options.replace(
                f"--{param.name}", ""
            ), param.name
    assert "env var" not in result.stdout
    assert "BATCHPREDICT_" in epilog and "--input-file works too" in epilog
    assert f"[{'|'.join(FORMAT_NAMES)}]" in options


def test_both_spellings_still_work() -> None:
    dashed = ["--model", "m", "--input-file", "a.csv", "--output-dir", "d", "--on-error", "skip"]
    config = cli_options.run_config(_options(PREDICT, dashed))
    assert config.input_files == ("a.csv",)
    assert config.output_dir == "d" and config.on_error == "skip"


def test_a_bad_format_name_is_a_usage_error_naming_the_formats(
    tmp_path: Path, run_main: RunMain, mlp_model: Path
) -> None:
    data = write_with_library(make_frame(3), tmp_path / "d.csv", "csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data),
        "--input_format", "xml", "--log_format", "json",
    )  # fmt: skip
    assert result.returncode == ExitCode.USAGE
    assert "unknown format 'xml'" in result.stderr and "parquet" in result.stderr


@pytest.fixture
def process_state() -> Iterator[None]:
    """What `main` sets for the process and run_main puts back: signal handlers, logging."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGXFSZ)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    observe.unbind_run_id()
    observe.reset_logging()


@pytest.mark.usefixtures("process_state")
def test_no_change_to_the_environment_outlives_main(
    tmp_path: Path, mlp_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Called as a library function (not through run_main, which restores it anyway)."""
    before = dict(os.environ)
    data = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    common = ["--model", str(mlp_model), "--log_format", "json", "--no_progress", *FIT]
    endpoint = ["--s3_endpoint_url", "http://127.0.0.1:9", "--storage_timeout", "5"]
    missing = cli.main(["predict", *common, *endpoint, "--input_file", str(tmp_path / "no.csv")])
    assert missing == ExitCode.NO_INPUT
    ran = cli.main(["predict", *common, *endpoint, "--input_file", str(data)])
    assert ran == ExitCode.OK, capsys.readouterr().err
    assert (tmp_path / "d.predictions.csv").exists()
    assert dict(os.environ) == before
    assert storage._settings == storage.StoreSettings()
    capsys.readouterr()


@pytest.mark.slow
def test_early_failures_do_not_import_tensorflow_nor_leave_the_environment_changed(
    tmp_path: Path, mlp_model: Path
) -> None:
    """In a fresh interpreter: a missing input (66), a refused output (73) and a bad option
    (2) fail before TensorFlow loads; a run that loads it leaves os.environ as it was."""
    data = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    code = textwrap.dedent(
        f"""
        import os, sys
        from batchpredict.cli import main
        model, data = {str(mlp_model)!r}, {str(data)!r}
        base = ["predict", "--model", model, "--log_format", "json", "--no_progress"]
        base += {FIT!r}
        before = dict(os.environ)
        assert main([*base, "--input_file", data + ".missing"]) == 66
        assert main([*base, "--input_file", data, "--output_file", data]) == 73
        assert main([*base, "--input_file", data, "--bogus"]) == 2
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
        assert main([*base, "--input_file", data]) == 0
        assert "tensorflow" in sys.modules
        assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GRPC_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "oneDNN" not in result.stderr and "cuda" not in result.stderr.lower()
