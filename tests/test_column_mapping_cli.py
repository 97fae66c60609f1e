"""One column mapping per run, applied by name: what predict, inspect and validate do with
files whose columns are reordered, turned to text, or missing (in-process CLI)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Completed, reference_predictions

RunMain = Callable[..., Completed]


@pytest.fixture(scope="session")
def three_feature_model(models_dir: Path) -> Path:
    """One unnamed `[None, 3]` input, as most exported MLPs have."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(3,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    path = models_dir / "three_features.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def image_model(models_dir: Path) -> Path:
    """An `[None, 8, 8, 1]` image input, fed from 64 pixel columns with --features."""
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    conv = keras.layers.Conv2D(2, 3, activation="relu")(inputs)
    output = keras.layers.Dense(1)(keras.layers.Flatten()(conv))
    model = keras.Model(inputs, output)
    path = models_dir / "image.keras"
    model.save(path)
    return path


def _frame(rows: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(1, rows + 1, dtype=np.int64)})
    for name in ("x1", "x2", "x3"):
        frame[name] = rng.normal(size=rows) * 3
    return frame


def _expected(frame: pd.DataFrame, model: Path) -> np.ndarray:
    features = frame[["x1", "x2", "x3"]].to_numpy(np.float32)
    return reference_predictions(model, features).reshape(-1)


def test_reordered_columns_get_the_same_predictions(
    tmp_path: Path, three_feature_model: Path, run_main: RunMain
) -> None:
    frame = _frame()
    exports = tmp_path / "exports"
    exports.mkdir()
    pq.write_table(pa.Table.from_pandas(frame[["id", "x1", "x2", "x3"]]), exports / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame[["id", "x3", "x1", "x2"]]), exports / "b.parquet")
    summary = tmp_path / "summary.json"
    result = run_main(
        "predict",
        "--model",
        str(three_feature_model),
        "--input_file",
        str(exports),
        "--keep_columns",
        "id",
        "--output_dir",
        str(tmp_path / "out"),
        "--summary_file",
        str(summary),
    )
    assert result.returncode == 0, result.stderr
    expected = _expected(frame, three_feature_model)
    for name in ("a.parquet", "b.parquet"):
        got = pq.read_table(tmp_path / "out" / name).to_pandas()
        np.testing.assert_allclose(got["prediction"], expected, rtol=1e-5, atol=1e-6)
    lines = result.log_lines()
    started = next(line for line in lines if line["event"] == "run started")
    mapping = started["column_mapping"]
    assert mapping["inputs"][0]["columns"] == ["x1", "x2", "x3"]
    assert mapping["decided_by"] == f"the columns of {exports / 'a.parquet'}"
    warning = next(line for line in lines if line["level"] == "warning")
    assert warning["event"] == "feature order taken from the first input"
    assert warning["features"] == "x1,x2,x3" and "--features" in str(warning["hint"])
    assert json.loads(summary.read_text())["column_mapping"] == mapping


def test_a_text_column_never_lets_another_column_stand_in(
    tmp_path: Path, three_feature_model: Path, run_main: RunMain
) -> None:
    """x2 holds a few non-numbers near the top, so pyarrow reads it as text: the numeric id
    must not take its place. Without --keep_columns the four candidates are listed."""
    frame = _frame()
    text = frame.astype({"x2": object})
    text.loc[[1, 4], "x2"] = ["abc", "N/A?"]
    source = tmp_path / "dirty.csv"
    text.to_csv(source, index=False)
    output = tmp_path / "p.csv"
    result = run_main(
        "predict",
        "--model",
        str(three_feature_model),
        "--input_file",
        str(source),
        "--output_file",
        str(output),
    )
    assert result.returncode == 65, result.stderr
    assert "has 4 columns not named in --keep_columns: id, x1, x2, x3" in result.stderr
    assert not output.exists()
    # With the key named, x2 feeds the model and its bad values are rejected row by row.
    rejects = tmp_path / "r.jsonl"
    skipped = run_main(
        "predict",
        "--model",
        str(three_feature_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id",
        "--output_file",
        str(output),
        "--on_error",
        "skip",
        "--max_error_rate",
        "0.1",
        "--rejects_file",
        str(rejects),
    )
    assert skipped.returncode == 0, skipped.stderr
    bad = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"], r["column"], r["value"]) for r in bad] == [
        (2, "x2", "abc"),
        (5, "x2", "N/A?"),
    ]
    good = frame.drop(index=[1, 4]).reset_index(drop=True)
    got = pd.read_csv(output)
    assert got["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(
        got["prediction"], _expected(good, three_feature_model), rtol=1e-5, atol=1e-6
    )


def test_a_later_input_without_a_mapped_column_fails_naming_it(
    tmp_path: Path, three_feature_model: Path, run_main: RunMain
) -> None:
    frame = _frame()
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "a.parquet")
    pq.write_table(
        pa.Table.from_pandas(frame.rename(columns={"x2": "x_2"})), tmp_path / "b.parquet"
    )
    result = run_main(
        "predict",
        "--model",
        str(three_feature_model),
        "--input_file",
        str(tmp_path / "a.parquet"),
        "--input_file",
        str(tmp_path / "b.parquet"),
        "--keep_columns",
        "id",
        "--output_file",
        str(tmp_path / "p.parquet"),
    )
    assert result.returncode == 65
    assert f"{tmp_path / 'b.parquet'}: missing column(s) x2 that the model reads" in result.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_features_feed_an_image_input_row_major(
    tmp_path: Path, image_model: Path, run_main: RunMain
) -> None:
    rng = np.random.default_rng(5)
    pixels = rng.random((30, 64)).astype(np.float32)
    frame = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(64)])
    frame.insert(0, "id", np.arange(30))
    source = tmp_path / "digits.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "p.csv"
    features = ",".join(f"p{i}" for i in range(64))
    result = run_main(
        "predict",
        "--model",
        str(image_model),
        "--input_file",
        str(source),
        "--features",
        features,
        "--output_file",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    expected = reference_predictions(image_model, pixels.reshape(30, 8, 8, 1)).reshape(-1)
    got = pd.read_csv(output)
    assert list(got.columns) == ["id", "prediction"]
    np.testing.assert_allclose(got["prediction"], expected, rtol=1e-4, atol=1e-5)
    inspected = run_main(
        "inspect", "--model", str(image_model), "--input_file", str(source), "--features", features
    )
    assert inspected.returncode == 0, inspected.stderr
    assert "64 columns, reshaped row-major to [None, 8, 8, 1]: p0, p1" in inspected.stdout
    wrong = run_main(
        "predict", "--model", str(image_model), "--input_file", str(source), "--features", "p0,p1"
    )
    assert wrong.returncode == 65
    assert "takes 64 values per row but --features names 2" in wrong.stderr


def test_inspect_and_validate_read_the_jobs_config_as_predict_does(
    tmp_path: Path, three_feature_model: Path, run_main: RunMain
) -> None:
    """A job's TOML with predict-only keys and a [predict] table: inspect and validate take
    its data options (here --fill_value and --keep_columns) and ignore the rest."""
    frame = _frame(20)
    frame.loc[3, "x1"] = None
    source = tmp_path / "day.parquet"
    pq.write_table(pa.Table.from_pandas(frame), source)
    config = tmp_path / "job.toml"
    config.write_text(
        f'model = "{three_feature_model}"\n'
        f'input_file = ["{source}"]\n'
        f'output_dir = "{tmp_path / "out"}"\n'
        'lock_file = "/tmp/never-taken.lock"\n'
        "[predict]\n"
        'keep_columns = "id"\n'
        "fill_value = 0.0\n"
    )
    validated = run_main("validate", "--config", str(config))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert f"ok: {source} (20 rows checked)" in validated.stdout
    inspected = run_main("inspect", "--config", str(config))
    assert inspected.returncode == 0, inspected.stderr
    assert "3 columns stacked: x1, x2, x3" in inspected.stdout
    assert f"input {source} (parquet): kept columns: id" in inspected.stdout
    # Without the fill value, the null is what predict would stop at: row and column named.
    assert run_main("validate", "--config", str(config), "--fill_value", "nan").returncode == 2
    strict_config = tmp_path / "strict.toml"
    strict_config.write_text(config.read_text().replace("fill_value = 0.0\n", ""))
    strict = run_main("validate", "--config", str(strict_config))
    assert strict.returncode == 65
    assert "column 'x1': 1 of 20 rows checked are bad; first, row 4: value is null" in strict.stdout
    skipping = run_main(
        "validate",
        "--model",
        str(three_feature_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id",
        "--on_error",
        "skip",
        "--max_error_rate",
        "0.1",
    )
    assert skipping.returncode == 0, skipping.stdout
    assert "1 would be rejected, first row 4, column 'x1': value is null" in skipping.stdout
    over = run_main(
        "validate",
        "--model",
        str(three_feature_model),
        "--input_file",
        str(source),
        "--keep_columns",
        "id",
        "--on_error",
        "skip",
    )
    assert over.returncode == 65
    assert "1 of 20 rows checked would be rejected, more than --max_error_rate 0.01" in over.stdout
    unknown = tmp_path / "bad.toml"
    unknown.write_text('modle = "x"\n')
    refused = run_main("validate", "--config", str(unknown), "--input_file", str(source))
    assert refused.returncode == 2
    assert "unknown option(s) for validate: modle" in refused.stderr
