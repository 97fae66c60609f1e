"""Every model kind through the command (in this process), compared with the model called
directly."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Completed, corpora_path, make_frame, read_with_library, write_with_library

RunCli = Callable[..., Completed]
FEATURES = ["f0", "f1", "f2", "f3"]


@pytest.fixture(scope="module")
def mlp_variants(models_dir: Path, mlp_model: Path) -> dict[str, Path]:
    """The same MLP as .keras, legacy .h5, a SavedModel export and a TF-Serving base dir.

    The base dir holds versions 2, 9 and 10 with different weights: 10 must win (numerically,
    not as text) and `--model_version 9` must pick 9.
    """
    import keras

    model = keras.saving.load_model(mlp_model, compile=False)
    h5 = models_dir / "mlp.h5"
    model.save(h5)
    saved = models_dir / "mlp_saved_model"
    model.export(saved, verbose=False)
    base = models_dir / "serving"
    for version, scale in ((2, 2.0), (9, 3.0), (10, 1.0)):
        variant = keras.models.clone_model(model)
        variant.set_weights([w * scale for w in model.get_weights()])
        variant.export(base / str(version), verbose=False)
    return {"keras": mlp_model, "h5": h5, "saved_model": saved, "serving": base}


def scaled_reference(model_path: Path, features: np.ndarray, scale: float = 1.0) -> np.ndarray:
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    model.set_weights([w * scale for w in model.get_weights()])
    return keras.ops.convert_to_numpy(model(features.astype(np.float32))).reshape(-1)


@pytest.mark.parametrize(
    ("kind", "version", "scale"),
    [("h5", None, 1.0), ("saved_model", None, 1.0), ("serving", None, 1.0), ("serving", 9, 3.0)],
)
def test_model_kinds_predict_like_the_model(
    kind: str,
    version: int | None,
    scale: float,
    tmp_path: Path,
    mlp_variants: dict[str, Path],
    run_main: RunCli,
) -> None:
    frame = make_frame(333, seed=5)
    source = write_with_library(frame, tmp_path / "d.avro", "avro")
    args = ["--model_version", str(version)] if version is not None else []
    result = run_main(
        "predict", "--model", str(mlp_variants[kind]), "--input_file", str(source),
        "--keep_columns", "id,segment", "--output_file", str(tmp_path / "o.parquet"),
        "--batch_size", "100", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "o.parquet").to_pandas()
    expected = scaled_reference(mlp_variants["keras"], frame[FEATURES].to_numpy(), scale)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    started = next(line for line in result.log_lines() if line["event"] == "run started")
    if kind == "serving":
        assert started["model_version"] == (version or 10)
        assert started["model"].endswith(f"serving/{version or 10}")
        assert started["signature"] == "serving_default"


@pytest.mark.parametrize(
    ("fmt", "ext"), [("parquet", ".parquet"), ("csv", ".csv"), ("jsonl", ".jsonl")]
)
def test_named_inputs_and_dict_outputs(
    fmt: str, ext: str, tmp_path: Path, two_in_two_out_model: Path, run_main: RunCli
) -> None:
    """Named inputs read same-named columns; each output is a column; width 3 is a list
    (or `embedding_0..2` in CSV)."""
    import keras

    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {"key": [f"k{i}" for i in range(50)], "a": rng.normal(size=50), "b": rng.integers(0, 9, 50)}
    )
    source = write_with_library(frame, tmp_path / f"d{ext}", fmt)
    result = run_main(
        "predict",
        "--model",
        str(two_in_two_out_model),
        "--input_file",
        str(source),
        "--batch_size",
        "16",
    )
    assert result.returncode == 0, result.stderr
    out = read_with_library(tmp_path / f"d.predictions{ext}", fmt)
    model = keras.saving.load_model(two_in_two_out_model, compile=False)
    expected = model({"a": frame[["a"]].to_numpy("float32"), "b": frame[["b"]].to_numpy("float32")})
    assert out["key"].tolist() == frame["key"].tolist()
    np.testing.assert_allclose(
        out["score"],
        keras.ops.convert_to_numpy(expected["score"]).reshape(-1),
        rtol=1e-5,
        atol=1e-6,
    )
    embedding = keras.ops.convert_to_numpy(expected["embedding"])
    # Outputs in the model's own order; kept columns first.
    if fmt == "csv":
        assert list(out.columns) == ["key", "score", "embedding_0", "embedding_1", "embedding_2"]
        got = out[["embedding_0", "embedding_1", "embedding_2"]].to_numpy()
    else:
        assert list(out.columns) == ["key", "score", "embedding"]
        got = np.stack(out["embedding"].to_numpy())
    np.testing.assert_allclose(got, embedding, rtol=1e-5, atol=1e-6)


@pytest.mark.corpora
@pytest.mark.parametrize(
    ("folder", "version"),
    [("saved_model_half_plus_two_cpu", 123), ("saved_model_half_plus_two_2_versions", 124)],
)
def test_tf_serving_half_plus_two(
    folder: str, version: int, tmp_path: Path, run_main: RunCli
) -> None:
    model = corpora_path(
        "tf-serving", "tensorflow_serving", "servables", "tensorflow", "testdata", folder
    )
    source = tmp_path / "x.parquet"
    pq.write_table(
        pa.table({"id": [1, 2, 3], "x": pa.array([1.0, 2.0, 5.0], pa.float32())}), source
    )
    result = run_main(
        "predict",
        "--model",
        str(model),
        "--input_file",
        str(source),
        "--output_file",
        str(tmp_path / "y.csv"),
    )
    assert result.returncode == 0, result.stderr
    out = read_with_library(tmp_path / "y.csv", "csv")
    assert out["id"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(out["prediction"], [2.5, 3.0, 4.5])
    started = next(line for line in result.log_lines() if line["event"] == "run started")
    assert started["model_version"] == version


@pytest.mark.slow
@pytest.mark.corpora
def test_corrupt_corpora_model_exits_78(tmp_path: Path, run_cli: RunCli) -> None:
    model = corpora_path(
        "tf-serving",
        "tensorflow_serving",
        "servables",
        "tensorflow",
        "testdata",
        "bad_half_plus_two",
    )
    local = tmp_path / "bad"
    shutil.copytree(model, local)
    source = write_with_library(make_frame(3), tmp_path / "d.csv", "csv")
    result = run_cli("predict", "--model", str(local), "--input_file", str(source))
    assert result.returncode == 78, result.stderr
    assert str(local) in result.stderr


@pytest.fixture(scope="module")
def two_signature_model(models_dir: Path) -> Path:
    """A SavedModel with `serving_default` (x * 2) and `plus_one` (x + 1)."""
    import tensorflow as tf

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def plus_one(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x + 1.0}

    module = Doubler()
    path = models_dir / "two_signatures"
    tf.saved_model.save(
        module,
        str(path),
        signatures={"serving_default": module.double, "plus_one": module.plus_one},
    )
    return path


@pytest.mark.parametrize(
    ("signature", "expected"), [(None, [2.0, 4.0, 10.0]), ("plus_one", [2.0, 3.0, 6.0])]
)
def test_signature_option(
    signature: str | None,
    expected: list[float],
    tmp_path: Path,
    two_signature_model: Path,
    run_main: RunCli,
) -> None:
    pq.write_table(pa.table({"x": [1.0, 2.0, 5.0]}), tmp_path / "x.parquet")
    args = ["--signature", signature] if signature else []
    result = run_main(
        "predict",
        "--model",
        str(two_signature_model),
        "--input_file",
        str(tmp_path / "x.parquet"),
        *args,
    )
    assert result.returncode == 0, result.stderr
    assert (
        pq.read_table(tmp_path / "x.predictions.parquet").column("prediction").to_pylist()
        == expected
    )


def test_unknown_signature_lists_the_available_ones(
    tmp_path: Path, two_signature_model: Path, run_main: RunCli
) -> None:
    pq.write_table(pa.table({"x": [1.0]}), tmp_path / "x.parquet")
    result = run_main(
        "predict",
        "--model",
        str(two_signature_model),
        "--input_file",
        str(tmp_path / "x.parquet"),
        "--signature",
        "nope",
    )
    assert result.returncode == 78
    assert "plus_one" in result.stderr and "serving_default" in result.stderr
