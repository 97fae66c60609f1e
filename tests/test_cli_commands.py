"""Every command and option of the contract and its exit codes, through the command in this
process, and through the installed command for what only a real process shows."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import (
    ROOT,
    Completed,
    make_frame,
    read_with_library,
    reference_predictions,
    write_with_library,
)

RunCli = Callable[..., Completed]
FEATURES = ["f0", "f1", "f2", "f3"]


def test_help_and_version_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from batchpredict.cli import main\n"
        "for args in (['--help'], ['predict', '--help'], ['--version']):\n"
        "    assert main(args) == 0, args\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'pyarrow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert main(['formats']) == 0\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "batchpredict, version" in result.stdout


def test_a_missing_input_fails_without_loading_heavy_libraries(tmp_path: Path) -> None:
    """66 comes before TensorFlow, pandas (pyarrow.dataset imports it) and the optional
    libraries load: an early failure stays well under a second."""
    args = [
        "predict", "--model", str(tmp_path / "m.keras"),
        "--input_file", str(tmp_path / "x.csv"), "--output_file", str(tmp_path / "o.csv"),
    ]  # fmt: skip
    code = (
        "import sys\n"
        "from batchpredict.cli import main\n"
        f"assert main({args!r}) == 66\n"
        "heavy = ('tensorflow', 'keras', 'pandas', 'pyarrow.dataset', 'polars', 'datasketches',\n"
        "         'deltalake', 'boto3', 'matplotlib')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_is_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchpredict", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    from batchpredict import __version__

    assert result.stdout.strip() == f"batchpredict, version {__version__}"


def test_formats_lists_readers_writers_and_extensions(run_main: RunCli) -> None:
    result = run_main("formats")
    assert result.returncode == 0
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"csv", "tsv", "jsonl", "avro", "parquet"} <= rows.keys()
    assert ".ndjson" in rows["jsonl"] and ".pq" in rows["parquet"]


def test_inspect_prints_inputs_outputs_and_mapping(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    source = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    result = run_main(
        "inspect", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "features" in result.stdout and "float32" in result.stdout
    assert "features (float32[?x4]) <- 4 columns stacked: f0, f1, f2, f3" in result.stdout
    assert "kept columns: id, segment" in result.stdout


def test_validate_writes_nothing_and_reports_problems(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    source = write_with_library(make_frame(5), tmp_path / "d.parquet", "parquet")
    ok = run_main(
        "validate", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id,segment",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert f"ok: {source}" in ok.stdout
    bad = run_main(
        "validate", "--model", str(mlp_model), "--input_file", str(source),
        "--features", "f0,f1,missing,f3",
    )  # fmt: skip
    assert bad.returncode == 65
    assert "problem: " in bad.stdout and "--features names missing column(s): missing" in bad.stdout
    assert "1 problem(s) found" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--input_file", "{tmp}/nope.csv"], 66, "nope.csv: no such file"),
        (["--input_file", "{tmp}/*.avro"], 66, "matched no input file"),
        (
            ["--input_file", "{tmp}/d.csv", "--output_file", "{tmp}/d.csv"],
            73,
            "overwrite the input",
        ),
        (
            ["--input_file", "{tmp}/d.csv", "--output_file", "o.csv", "--output_dir", "o"],
            2,
            "together",
        ),
        (["--input_file", "{tmp}/d.csv", "--no_such_option"], 2, "No such option"),
        (["--input_file", "{tmp}/d.csv", "--output_format", "xml"], 2, "unknown format 'xml'"),
    ],
)
def test_exit_codes(
    tmp_path: Path, mlp_model: Path, run_main: RunCli, args: list[str], code: int, message: str
) -> None:
    write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_main("predict", "--model", str(mlp_model), "--keep_columns", "id,segment", *argv)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_device_gpu_without_a_gpu_exits_2(
    tmp_path: Path, mlp_model: Path, run_main: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every GPU hidden from TensorFlow, as on a machine without one (a GPU runner too)."""
    import tensorflow as tf

    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: [] if kind == "GPU" else real(kind)
    )
    write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--keep_columns", "id,segment",
        "--input_file", str(tmp_path / "d.csv"), "--device", "gpu",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--device gpu: no GPU is visible" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_model_that_cannot_load_exits_78(tmp_path: Path, run_main: RunCli) -> None:
    write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    (tmp_path / "m.keras").write_bytes(b"not a zip file")
    result = run_main(
        "predict", "--model", str(tmp_path / "m.keras"), "--input_file", str(tmp_path / "d.csv")
    )
    assert result.returncode == 78, result.stderr
    assert "m.keras" in result.stderr


def test_every_option_from_the_environment(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = make_frame(40)
    write_with_library(frame, tmp_path / "d.csv", "csv")
    env = {
        "BATCHPREDICT_MODEL": str(mlp_model),
        "BATCHPREDICT_INPUT_FILE": str(tmp_path / "d.csv"),
        "BATCHPREDICT_OUTPUT_FILE": str(tmp_path / "out.parquet"),
        "BATCHPREDICT_KEEP_COLUMNS": "id,segment",
        "BATCHPREDICT_PREDICTION_COLUMN": "p",
        "BATCHPREDICT_BATCH_SIZE": "7",
        "BATCHPREDICT_DEVICE": "cpu",
    }
    result = run_main("predict", env=env)
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert list(out.columns) == ["id", "segment", "p"]
    expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(out["p"], expected, rtol=1e-5, atol=1e-6)
    started = next(line for line in result.log_lines() if line["event"] == "run started")
    assert started["batch_size"] == 7 and started["device"] == "/CPU:0"


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "neither a number of rows nor 'auto'"), ("0", "is not at least 1")],
)
def test_batch_size_is_a_number_or_auto(
    value: str, message: str, tmp_path: Path, run_main: RunCli
) -> None:
    result = run_main(
        "predict", "--model", str(tmp_path / "m.keras"), "--input_file", "x.csv",
        "--batch_size", value,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "--batch_size" in result.stderr


def test_second_run_exits_75_while_the_lock_is_held(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    lock = tmp_path / "job.lock"
    with lock.open("w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_main(
            "predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "d.csv"),
            "--keep_columns", "id,segment", "--lock_file", str(lock),
        )  # fmt: skip
    assert result.returncode == 75, result.stderr
    assert "another run holds the lock" in result.stderr
    assert not (tmp_path / "d.predictions.csv").exists()


@pytest.mark.slow
def test_readme_quick_start_predicts_the_sample_data(tmp_path: Path, run_cli: RunCli) -> None:
    """The README's first command, from a fresh working directory."""
    readme = (ROOT / "README.md").read_text()
    command = next(
        line for line in readme.splitlines() if "batchpredict predict --model sample_data" in line
    )
    args = command.split("&& batchpredict ", 1)[1].split()
    args = [a.replace("sample_data/", f"{ROOT}/sample_data/") for a in args]
    args[args.index("--output_file") + 1] = str(tmp_path / "predictions.csv")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = read_with_library(tmp_path / "predictions.csv", "csv")
    assert list(out.columns) == ["patient_id", "diagnosis", "prediction"]
    assert out["patient_id"].tolist() == list(range(1, 570))
    accuracy = ((out["prediction"] > 0.5) == (out["diagnosis"] == "malignant")).mean()
    assert accuracy > 0.9


@pytest.mark.parametrize("fmt", ["jsonl", "avro", "parquet"])
def test_sample_data_formats_agree(fmt: str, tmp_path: Path, run_main: RunCli) -> None:
    sample = ROOT / "sample_data"
    outputs = {}
    for source_fmt in ("csv", fmt):
        out = tmp_path / f"{source_fmt}.parquet"
        result = run_main(
            "predict", "--model", str(sample / "breast_cancer_model.keras"),
            "--input_file", str(sample / f"breast_cancer.{source_fmt}"),
            "--keep_columns", "patient_id,diagnosis", "--output_file", str(out),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[source_fmt] = pq.read_table(out).to_pandas()
    pd.testing.assert_frame_equal(outputs["csv"], outputs[fmt])


@pytest.mark.slow
def test_cron_wrapper_passes_arguments_and_exit_code(tmp_path: Path, mlp_model: Path) -> None:
    frame = make_frame(10)
    write_with_library(frame, tmp_path / "d.csv", "csv")
    env = {"PATH": "/usr/bin:/bin", "BATCHPREDICT_PYTHON": sys.executable}
    base = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(ROOT / "bin" / "predict.sh")]
    args = ["--model", str(mlp_model), "--keep_columns", "id,segment"]
    ok = subprocess.run(
        [*base, *args, "--input_file", str(tmp_path / "d.csv")],
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(read_with_library(tmp_path / "d.predictions.csv", "csv")) == 10
    missing = subprocess.run(
        [*base, *args, "--input_file", str(tmp_path / "x.csv")],
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 66
    assert json.loads(missing.stderr.splitlines()[-1])["exit_code"] == 66


def test_python_api_matches_the_cli(tmp_path: Path, mlp_model: Path, run_main: RunCli) -> None:
    frame = make_frame(300, seed=9)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    cli = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_file", str(tmp_path / "cli.parquet"), "--keep_columns", "id,segment",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    code = (
        "import sys, batchpredict, pandas as pd\n"
        "model, source, out = sys.argv[1:]\n"
        "s = batchpredict.predict(model=model, input_file=source, output_file=out, "
        "keep_columns='id,segment', batch_size=50)\n"
        "assert s.rows_out == 300, s\n"
        "p = batchpredict.load_predictor(model)\n"
        "df = p.predict_frame(pd.read_parquet(source), keep_columns=['id'])\n"
        "df.to_parquet(out + '.frame.parquet')\n"
    )
    api_out = tmp_path / "api.parquet"
    result = subprocess.run(
        [sys.executable, "-c", code, str(mlp_model), str(source), str(api_out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = pq.read_table(tmp_path / "cli.parquet").to_pandas()
    pd.testing.assert_frame_equal(pq.read_table(api_out).to_pandas(), expected)
    framed = pd.read_parquet(str(api_out) + ".frame.parquet")
    assert list(framed.columns) == ["id", "prediction"]
    np.testing.assert_allclose(framed["prediction"], expected["prediction"], rtol=1e-6)


def test_config_file_supplies_defaults_and_the_command_line_wins(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    frame = make_frame(30)
    write_with_library(frame, tmp_path / "d.csv", "csv")
    config = tmp_path / "job.toml"
    config.write_text(
        f'model = "{mlp_model}"\n'
        "[predict]\n"
        f'input_file = ["{tmp_path / "d.csv"}"]\n'
        'keep_columns = ["id", "segment"]\n'
        'prediction_column = "from_config"\n'
        f'output_file = "{tmp_path / "out.parquet"}"\n'
    )
    result = run_main("predict", "--config", str(config), "--prediction_column", "p")
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert list(out.columns) == ["id", "segment", "p"]
    config.write_text(config.read_text() + "no_such_option = 1\n")
    bad = run_main("predict", "--config", str(config))
    assert bad.returncode == 2
    assert "unknown option(s) for predict: no_such_option" in bad.stderr
