"""Real models written by other projects, scored from files through the installed command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import Completed, corpora_path

RunCli = Callable[..., Completed]
pytestmark = [pytest.mark.slow, pytest.mark.corpora]
TFNET = ("tfnet", "test", "TensorFlowNET.Keras.UnitTest", "Assets")


def _list_array(values: np.ndarray) -> pa.Array:
    """A `[rows, ...]` float32 array as (nested) Arrow list values, one row per element."""
    return pa.array(values.tolist(), type=_list_type(values.ndim - 1))


def _list_type(depth: int) -> pa.DataType:
    t: pa.DataType = pa.float32()
    for _ in range(depth):
        t = pa.list_(t)
    return t


def _run(run_cli: RunCli, model: Path, table: pa.Table, tmp_path: Path, *args: str) -> pa.Table:
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    result = run_cli(
        "predict", "--model", str(model), "--input_file", str(source),
        "--output_file", str(tmp_path / "out.parquet"), *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return pq.read_table(tmp_path / "out.parquet")


def _direct_saved_model(model: Path, **inputs: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model))
    outputs = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    (value,) = outputs.values()
    return np.asarray(value)


def test_tfnet_lstm_from_a_nested_list_column(tmp_path: Path, run_cli: RunCli) -> None:
    model = corpora_path(*TFNET, "lstm_from_sequential")
    rng = np.random.default_rng(0)
    sequences = rng.normal(size=(9, 5, 3)).astype(np.float32)
    name = _input_name(model)
    out = _run(
        run_cli,
        model,
        pa.table({"id": range(9), name: _list_array(sequences)}),
        tmp_path,
        "--batch_size",
        "4",
    )
    expected = _direct_saved_model(model, **{name: sequences})
    assert out.column_names == ["id", "prediction"]
    np.testing.assert_allclose(
        out.column("prediction").to_numpy(), expected.reshape(-1), rtol=1e-5, atol=1e-6
    )


def test_tfnet_image_model_from_flat_pixels(tmp_path: Path, run_cli: RunCli) -> None:
    model = corpora_path(*TFNET, "simple_model_from_auto_compile")
    rng = np.random.default_rng(1)
    images = rng.random(size=(5, 28, 28, 1)).astype(np.float32)
    name = _input_name(model)
    out = _run(run_cli, model, pa.table({name: _list_array(images.reshape(5, 784))}), tmp_path)
    expected = _direct_saved_model(model, **{name: images})
    got = np.array(out.column("prediction").to_pylist())
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_tfnet_784_input_function_model(tmp_path: Path, run_cli: RunCli) -> None:
    model = corpora_path(*TFNET, "python_func_model")
    rng = np.random.default_rng(2)
    rows = rng.random(size=(6, 784)).astype(np.float32)
    name = _input_name(model)
    out = _run(run_cli, model, pa.table({"key": list("abcdef"), name: _list_array(rows)}), tmp_path)
    expected = _direct_saved_model(model, **{name: rows})
    np.testing.assert_allclose(
        np.array(out.column("prediction").to_pylist()), expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.array(out.column("prediction").to_pylist()).sum(axis=1), 1.0, rtol=1e-5
    )


def test_tf2onnx_two_inputs_with_a_fixed_batch_of_one(tmp_path: Path, run_cli: RunCli) -> None:
    """x, y of shape [1, 10]: the model fixes the batch size, so batches are of one row."""
    model = corpora_path("tf2onnx", "tests", "models", "saved_model_with_redundant_inputs")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 10)).astype(np.float32)
    y = rng.normal(size=(4, 10)).astype(np.float32)
    out = _run(run_cli, model, pa.table({"x": _list_array(x), "y": _list_array(y)}), tmp_path)
    np.testing.assert_allclose(np.array(out.column("prediction").to_pylist()), x + 1, rtol=1e-6)


@pytest.mark.parametrize("project", ["relu", "softmax"])
def test_hls4ml_models_reproduce_their_published_outputs(
    project: str, tmp_path: Path, run_cli: RunCli
) -> None:
    folder = corpora_path("hls4ml-branch", "example-prjs", project)
    features = np.loadtxt(folder / "tb_input_features.dat", ndmin=2)
    expected = np.loadtxt(folder / "tb_output_predictions.dat", ndmin=2)
    source = tmp_path / "tb.csv"
    pacsv.write_csv(pa.table({f"x{i}": features[:, i] for i in range(features.shape[1])}), source)
    result = run_cli(
        "predict", "--model", str(folder / f"{project}.h5"), "--input_file", str(source),
        "--output_file", str(tmp_path / "out.csv"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = pacsv.read_csv(tmp_path / "out.csv")
    got = np.stack(
        [out.column(f"prediction_{i}").to_numpy() for i in range(expected.shape[1])], axis=1
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tf1_model_that_tensorflow_2_cannot_load_is_a_clear_model_error(
    tmp_path: Path, run_cli: RunCli
) -> None:
    model = corpora_path(
        "tf-serving",
        "tensorflow_serving",
        "servables",
        "tensorflow",
        "testdata",
        "saved_model_half_plus_three",
    )
    pq.write_table(pa.table({"x": pa.array([1.0], pa.float32())}), tmp_path / "x.parquet")
    result = run_cli("predict", "--model", str(model), "--input_file", str(tmp_path / "x.parquet"))
    assert result.returncode == 78
    assert "TensorFlow 1" in result.stderr and "Traceback" not in result.stderr


def _input_name(model: Path) -> str:
    """The single input's name, read the way users would: `batchpredict inspect`."""
    from batchpredict.model import load_model

    (tensor,) = load_model(str(model)).inputs
    return tensor.name
