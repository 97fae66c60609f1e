"""model.py against real models written by other projects (../shared/corpora, README "Models")."""

from __future__ import annotations

import os

# Before TensorFlow is imported (tests/conftest.py does the same when it is loaded first).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchpredict.errors import ModelError
from batchpredict.model import LoadedModel, TensorInfo, load_model

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
TF_SERVING = "tf-serving/tensorflow_serving/servables/tensorflow/testdata"
TFNET = "tfnet/test/TensorFlowNET.Keras.UnitTest/Assets"
HLS4ML = "hls4ml-branch/example-prjs"

pytestmark = [
    pytest.mark.corpora,
    pytest.mark.skipif(not CORPORA.is_dir(), reason=f"third-party corpora absent: {CORPORA}"),
]


def corpus(relative: str) -> str:
    """The path of one corpus entry, skipping the test when that entry is missing."""
    path = CORPORA / relative
    if not path.exists():
        pytest.skip(f"corpus entry absent: {path}")
    return str(path)


def run_traced(
    model: LoadedModel, arrays: Mapping[str, np.ndarray], *, open_batch: bool = False
) -> dict[str, np.ndarray]:
    """Call `model.call` inside a tf.function with a fixed input signature, as the pipeline does.

    With `open_batch` the signature leaves the batch dimension as None.
    """
    import tensorflow as tf

    signature = [
        {
            name: tf.TensorSpec(
                (None, *array.shape[1:]) if open_batch else array.shape, array.dtype
            )
            for name, array in arrays.items()
        }
    ]

    @tf.function(input_signature=signature)
    def predict(batch: dict[str, Any]) -> dict[str, Any]:
        return model.call(batch)

    result = predict({name: tf.constant(array) for name, array in arrays.items()})
    return {name: np.asarray(tensor) for name, tensor in result.items()}


def random_inputs(model: LoadedModel, batch: int = 4) -> dict[str, np.ndarray]:
    """Random float32 inputs for every input, open dimensions filled with `batch`."""
    rng = np.random.default_rng(0)
    return {
        info.name: rng.normal(size=[batch if dim is None else dim for dim in info.shape]).astype(
            np.float32
        )
        for info in model.inputs
    }


# --------------------------------------------------------------------------- TF Serving

HALF_PLUS_TWO_X = np.array([[1.0], [2.0], [5.0]], np.float32)
HALF_PLUS_TWO_Y = np.array([[2.5], [3.0], [4.5]], np.float32)


@pytest.mark.parametrize(
    "relative",
    [
        f"{TF_SERVING}/saved_model_half_plus_two_cpu",
        f"{TF_SERVING}/saved_model_half_plus_two_gpu",
        f"{TF_SERVING}/saved_model_half_plus_two_mkl",
        f"{TF_SERVING}/saved_model_half_plus_two_cpu_with_saved_model_config",
        "tensorflow-java/tensorflow-core/tensorflow-core-api/src/test/resources/saved_model",
    ],
)
def test_half_plus_two(relative: str) -> None:
    loaded = load_model(corpus(relative))
    assert loaded.signature == "serving_default"
    assert loaded.inputs == (TensorInfo("x", "float32", (None, 1)),)
    assert loaded.outputs == (TensorInfo("y", "float32", (None, 1)),)
    assert loaded.output_structure == "single"
    np.testing.assert_allclose(run_traced(loaded, {"x": HALF_PLUS_TWO_X})["y"], HALF_PLUS_TWO_Y)


def test_half_plus_two_base_directory_resolves_version() -> None:
    loaded = load_model(corpus(f"{TF_SERVING}/saved_model_half_plus_two_cpu"))
    assert loaded.source.version == 123
    assert Path(loaded.source.path).name == "00000123"


def test_half_plus_two_without_shapes() -> None:
    # This export's signature leaves the rank of x and y open.
    loaded = load_model(corpus(f"{TF_SERVING}/saved_model_half_plus_two_mlmd"))
    assert loaded.inputs == (TensorInfo("x", "float32", (), rank_known=False),)
    np.testing.assert_allclose(run_traced(loaded, {"x": HALF_PLUS_TWO_X})["y"], HALF_PLUS_TWO_Y)


def test_half_plus_two_tf2_batched() -> None:
    # The signature declares x as [1], yet the graph is elementwise: with the batch
    # dimension left open (not fixed at 3, which TensorFlow refuses to bind) it runs batched.
    loaded = load_model(corpus(f"{TF_SERVING}/saved_model_half_plus_two_tf2_cpu"))
    assert loaded.inputs == (TensorInfo("x", "float32", (1,)),)
    result = run_traced(loaded, {"x": HALF_PLUS_TWO_X.ravel()}, open_batch=True)
    np.testing.assert_allclose(result["y"], HALF_PLUS_TWO_Y.ravel())


def test_two_versions_picks_highest() -> None:
    base = corpus(f"{TF_SERVING}/saved_model_half_plus_two_2_versions")
    assert load_model(base).source.version == 124
    older = load_model(base, version=123)
    assert Path(older.source.path).name == "00000123"
    np.testing.assert_allclose(run_traced(older, {"x": HALF_PLUS_TWO_X})["y"], HALF_PLUS_TWO_Y)
    with pytest.raises(ModelError, match="available versions: 123, 124"):
        load_model(base, version=125)


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        # A TF1 checkpoint export (export.meta), not a SavedModel.
        (f"{TF_SERVING}/bad_half_plus_two", r"not a SavedModel.*found checkpoint, export"),
        (f"{TF_SERVING}/saved_model_half_plus_two_tflite", r"not a SavedModel.*model\.tflite"),
        (
            f"{TF_SERVING}/saved_model_half_plus_three",
            r"TensorFlow 1 SavedModel \(written by TensorFlow 1\.0\.0-rc2\) that TensorFlow 2 "
            r"cannot load.*shapes that contradict its graph",
        ),
        (
            f"{TF_SERVING}/saved_model_counter",
            r"TensorFlow 1 SavedModel.*reference variables",
        ),
        (
            "tfnet/test/TensorFlowNET.UnitTest/Utilities/models/example1",
            r"is incomplete: its variables are missing",
        ),
        (
            "tfnet/tools/TensorFlowNET.Benchmarks/Leak/TestModel/saved_model",
            r"no signature 'serving_default'; available signatures: inference$",
        ),
        (
            "tensorflow-rust/examples/regression_savedmodel",
            r"no signature 'serving_default'; available signatures: b, train, w$",
        ),
        (
            "tensorflow-java/tensorflow-core/tensorflow-core-api/src/test/resources/"
            "saved_model_using_python/model",
            r"available signatures: add, get_const_matrix, get_const_scalar, get_const_vector",
        ),
        (
            "tensorflow-rust-pr286/examples/keras_single_input_saved_model",
            r"Keras 2 SavedModel \(TensorFlow 2\.3\.0\) with optimizer state.*tf_keras",
        ),
        (
            "tensorflow-rust-pr286/examples/keras_multiple_inputs_saved_model",
            r"Keras 2 SavedModel.*pip install tf_keras",
        ),
    ],
)
def test_unservable_saved_models(relative: str, message: str) -> None:
    path = corpus(relative)
    with pytest.raises(ModelError, match=message) as caught:
        load_model(path)
    assert Path(relative).parts[-1] in str(caught.value)


# --------------------------------------------------------------------------- TensorFlow.NET


@pytest.mark.parametrize(
    ("name", "input_shape", "output_name", "output_shape"),
    [
        ("python_func_model", (None, 784), "softmax", (None, 10)),
        ("simple_model_from_auto_compile", (None, 28, 28, 1), "softmax", (None, 10)),
        ("lstm_from_sequential", (None, 5, 3), "dense", (None, 1)),
    ],
)
def test_tfnet_keras_saved_models(
    name: str,
    input_shape: tuple[int | None, ...],
    output_name: str,
    output_shape: tuple[int | None, ...],
) -> None:
    loaded = load_model(corpus(f"{TFNET}/{name}"))
    assert loaded.inputs == (TensorInfo("input_1", "float32", input_shape),)
    assert loaded.outputs == (TensorInfo(output_name, "float32", output_shape),)
    result = run_traced(loaded, random_inputs(loaded))[output_name]
    assert result.shape == (4, *output_shape[1:])
    assert np.isfinite(result).all()
    if output_name == "softmax":
        np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-5)


def test_tfnet_other_signature() -> None:
    loaded = load_model(
        corpus("tfnet/tools/TensorFlowNET.Benchmarks/Leak/TestModel/saved_model"),
        signature="inference",
    )
    assert loaded.inputs == (TensorInfo("input", "float32", (None, None, 96)),)
    assert {info.name: info.shape for info in loaded.outputs} == {
        f"output_{index}": (None, 192) for index in range(3)
    }
    assert loaded.output_structure == "dict"
    features = np.random.default_rng(1).normal(size=(2, 7, 96)).astype(np.float32)
    result = run_traced(loaded, {"input": features})
    assert {name: value.shape for name, value in result.items()} == {
        f"output_{index}": (2, 192) for index in range(3)
    }


# --------------------------------------------------------------------------- tf2onnx


def test_tf2onnx_redundant_inputs() -> None:
    loaded = load_model(corpus("tf2onnx/tests/models/saved_model_with_redundant_inputs"))
    assert loaded.inputs == (
        TensorInfo("x", "float32", (1, 10)),
        TensorInfo("y", "float32", (1, 10)),
    )
    assert loaded.outputs == (TensorInfo("z", "float32", (1, 10)),)
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    y = np.full((1, 10), 100.0, np.float32)
    np.testing.assert_allclose(run_traced(loaded, {"x": x, "y": y})["z"], x + 1.0)


# --------------------------------------------------------------------------- hls4ml


def read_dat(path: Path) -> np.ndarray:
    """A whitespace-separated hls4ml test-bench file, one example a row."""
    return np.loadtxt(path, ndmin=2)


@pytest.mark.parametrize("name", ["relu", "softmax", "sigmoid"])
def test_hls4ml_reproduces_test_bench(name: str) -> None:
    # sigmoid.h5 names a custom kernel_initializer function: loadable because the saved
    # weights replace whatever it would have made.
    project = Path(corpus(f"{HLS4ML}/{name}"))
    loaded = load_model(str(project / f"{name}.h5"))
    assert loaded.source.kind == "h5"
    (info,) = loaded.inputs
    inputs = read_dat(project / "tb_input_features.dat").astype(np.float32)
    expected = read_dat(project / "tb_output_predictions.dat")
    batch = inputs.reshape((len(inputs), *info.shape[1:]))
    (output,) = run_traced(loaded, {info.name: batch}).values()
    np.testing.assert_allclose(output.reshape(len(inputs), -1), expected, rtol=0, atol=1e-6)


def test_hls4ml_conv2d_loads_and_runs() -> None:
    # Its test-bench outputs were made with a different (identity) kernel than the one in
    # the .h5, so only shapes can be checked here.
    loaded = load_model(corpus(f"{HLS4ML}/conv2d_1layer/conv2d_1layer.h5"))
    assert loaded.inputs == (TensorInfo("conv2d_input", "float32", (None, 5, 5, 1)),)
    assert loaded.outputs == (TensorInfo("conv2d", "float32", (None, 3, 3, 1)),)
    (output,) = run_traced(loaded, random_inputs(loaded, batch=2)).values()
    assert output.shape == (2, 3, 3, 1)


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        (f"{HLS4ML}/relu/relu_weights.h5", "holds only weights"),
        ("hls4ml/example-models/keras/KERAS_3layer_weights.h5", "holds only weights"),
        ("hls4ml/example-models/keras/jetTagger_Conv2D_Small.h5", "holds only weights"),
        (f"{HLS4ML}/fashion/FashionMNIST.h5", "needs custom objects: QConv2DBatchnorm"),
        ("hls4ml/example-models/keras/QKERAS_3layer.h5", "needs custom objects: QDense"),
        ("hls4ml/example-models/keras/KERAS_3layer.json", "not a supported model file"),
    ],
)
def test_hls4ml_unloadable_files(relative: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_model(corpus(relative))
