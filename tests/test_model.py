"""model.py against real models: tiny Keras models and tf.Modules saved to disk and loaded back."""

from __future__ import annotations

import os

# Before TensorFlow is imported (tests/conftest.py does the same when it is loaded first).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gc
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchpredict.errors import ExitCode, ModelError
from batchpredict.model import (
    LoadedModel,
    ResolvedModelPath,
    TensorInfo,
    describe,
    load_model,
    resolve_model_path,
)

BATCH = 4

# Keras' own model.save() trips NumPy 2's __array__(copy=...) deprecation; nothing of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


# --------------------------------------------------------------------------- helpers


def run_traced(model: LoadedModel, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call `model.call` inside a tf.function with a fixed input signature, as the pipeline does."""
    import tensorflow as tf

    signature = [{name: tf.TensorSpec(array.shape, array.dtype) for name, array in arrays.items()}]

    @tf.function(input_signature=signature)
    def predict(batch: dict[str, Any]) -> dict[str, Any]:
        return model.call(batch)

    result = predict({name: tf.constant(array) for name, array in arrays.items()})
    return {name: np.asarray(tensor) for name, tensor in result.items()}


def features(*shape: int, seed: int = 0) -> np.ndarray:
    """Random float32 inputs with a leading batch dimension."""
    return np.random.default_rng(seed).normal(size=(BATCH, *shape)).astype(np.float32)


def as_numpy(result: Any) -> Any:
    """A Keras model's result (tensor, list or dict) as NumPy arrays in the same structure."""
    if isinstance(result, Mapping):
        return {key: np.asarray(value) for key, value in result.items()}
    if isinstance(result, list | tuple):
        return [np.asarray(value) for value in result]
    return np.asarray(result)


def shapes(infos: tuple[TensorInfo, ...]) -> dict[str, tuple[int | None, ...]]:
    return {info.name: info.shape for info in infos}


def dtypes(infos: tuple[TensorInfo, ...]) -> dict[str, str]:
    return {info.name: info.dtype for info in infos}


def save_module(directory: Path, factor: float) -> Path:
    """Save a tf.Module whose serving_default returns y = x * factor."""
    import tensorflow as tf

    class Scale(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.factor = tf.Variable(factor)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def scale(self, x: Any) -> dict[str, Any]:
            return {"y": x * self.factor}

    module = Scale()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.scale})
    return directory


# --------------------------------------------------------------------------- models


@dataclass
class Models:
    """The models built once per module, and where they were saved."""

    root: Path
    sequential: Any
    two_inputs: Any
    dict_io: Any
    lambda_model: Any
    initializer_model: Any


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Build the tiny Keras models and save each in the formats the tests load."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(7)
    root = tmp_path_factory.mktemp("model_files")

    sequential = keras.Sequential(
        [keras.Input((3,), name="features"), keras.layers.Dense(2, name="out")]
    )

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    two_inputs = keras.Model(
        [a, b],
        [keras.layers.Dense(1, name="score")(joined), keras.layers.Dense(2, name="logits")(joined)],
    )

    p = keras.Input((3,), name="p")
    q = keras.Input((2,), name="q")
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([p, q]))
    dict_io = keras.Model(
        {"p": p, "q": q},
        {
            "mean": keras.layers.Dense(1, name="mean_head")(hidden),
            "probs": keras.layers.Dense(3, activation="softmax", name="probs_head")(hidden),
        },
    )

    x = keras.Input((3,), name="x")
    lambda_model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2.0 + 1.0)(x))

    class Doubler(keras.layers.Layer):
        """A layer class that is not registered, so Keras cannot find it when loading."""

        def call(self, inputs: Any) -> Any:
            return inputs * 2.0

    custom_model = keras.Model(x, Doubler(name="doubler")(x))

    def ones_kernel(shape: Any, dtype: Any = None) -> Any:
        return keras.ops.ones(shape, dtype=dtype)

    initializer_model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, kernel_initializer=ones_kernel, name="dense")]
    )
    # Weights that differ from what the initializer makes: loading must restore these.
    initializer_model.layers[-1].kernel.assign(features(3, seed=5)[:3, :2])

    for name, model in [
        ("sequential", sequential),
        ("two_inputs", two_inputs),
        ("dict_io", dict_io),
        ("lambda", lambda_model),
        ("custom", custom_model),
        ("initializer", initializer_model),
    ]:
        model.save(root / f"{name}.keras")
        model.save(root / f"{name}.h5")
    for name, model in [
        ("sequential", sequential),
        ("two_inputs", two_inputs),
        ("dict_io", dict_io),
    ]:
        model.export(str(root / f"{name}_export"), verbose=False)

    sequential.save_weights(root / "weights.weights.h5")
    shutil.copy(root / "weights.weights.h5", root / "weights.h5")

    class Arithmetic(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def double(self, x: Any) -> Any:
            return x * 2.0

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64)]
        )
        def add(self, left: Any, right: Any) -> dict[str, Any]:
            return {"sum": left + right, "difference": left - right}

    arithmetic = Arithmetic()
    tf.saved_model.save(
        arithmetic,
        str(root / "two_signatures"),
        signatures={"double": arithmetic.double, "add": arithmetic.add},
    )
    for version in (2, 9, 10):
        save_module(root / "versioned" / str(version), float(version))
    # A directory that TF Serving would not treat as a version.
    (root / "versioned" / "latest").mkdir()

    return Models(root, sequential, two_inputs, dict_io, lambda_model, initializer_model)


# --------------------------------------------------------------------------- resolving


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("name", "kind"),
    [("m.keras", "keras"), ("m.h5", "h5"), ("m.hdf5", "h5"), ("M.H5", "h5")],
)
def test_resolve_keras_files(tmp_path: Path, name: str, kind: str) -> None:
    path = str(touch(tmp_path / name))
    assert resolve_model_path(path) == ResolvedModelPath(path, kind, None)


@pytest.mark.parametrize("proto", ["saved_model.pb", "saved_model.pbtxt"])
def test_resolve_saved_model_directory(tmp_path: Path, proto: str) -> None:
    touch(tmp_path / "sm" / proto)
    assert resolve_model_path(str(tmp_path / "sm")) == ResolvedModelPath(
        str(tmp_path / "sm"), "saved_model", None
    )


@pytest.fixture
def serving_base(tmp_path: Path) -> Path:
    """A TF-Serving base directory with versions 2, 9 and 10 (sorting as text picks 9)."""
    for version in ("2", "9", "10"):
        touch(tmp_path / "base" / version / "saved_model.pb")
    touch(tmp_path / "base" / "latest" / "saved_model.pb")
    return tmp_path / "base"


def test_resolve_picks_numerically_highest_version(serving_base: Path) -> None:
    resolved = resolve_model_path(str(serving_base))
    assert resolved == ResolvedModelPath(str(serving_base / "10"), "saved_model", 10)


def test_resolve_picks_asked_version(serving_base: Path) -> None:
    resolved = resolve_model_path(str(serving_base), version=9)
    assert (resolved.path, resolved.version) == (str(serving_base / "9"), 9)


def test_resolve_missing_version_lists_available(serving_base: Path) -> None:
    with pytest.raises(ModelError, match=r"no version 3; available versions: 2, 9, 10$"):
        resolve_model_path(str(serving_base), version=3)


def test_resolve_leading_zero_versions(tmp_path: Path) -> None:
    touch(tmp_path / "00000123" / "saved_model.pb")
    touch(tmp_path / "00000099" / "saved_model.pb")
    assert resolve_model_path(str(tmp_path)).version == 123
    assert resolve_model_path(str(tmp_path), version=99).path == str(tmp_path / "00000099")


@pytest.mark.parametrize("layout", ["file", "saved_model"])
def test_resolve_version_of_unversioned_model_is_an_error(tmp_path: Path, layout: str) -> None:
    path = touch(tmp_path / "m.keras") if layout == "file" else touch(tmp_path / "saved_model.pb")
    target = path if layout == "file" else tmp_path
    with pytest.raises(ModelError, match=r"version 4 was asked for.*not a TensorFlow Serving"):
        resolve_model_path(str(target), version=4)


def test_resolve_directory_without_model(tmp_path: Path) -> None:
    touch(tmp_path / "model.json")
    with pytest.raises(ModelError) as caught:
        resolve_model_path(str(tmp_path))
    message = str(caught.value)
    assert "not a SavedModel or Keras model" in message
    assert "saved_model.pb" in message
    assert "numeric version sub-directories" in message
    assert "found model.json" in message
    assert caught.value.exit_code == ExitCode.MODEL


def test_resolve_version_directory_without_saved_model(tmp_path: Path) -> None:
    touch(tmp_path / "1" / "saved_model.pb")
    touch(tmp_path / "2" / "export.meta")
    with pytest.raises(ModelError, match=r"^version 2 of .*found export\.meta$"):
        resolve_model_path(str(tmp_path))


def test_resolve_unsupported_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not a supported model file.*\.keras"):
        resolve_model_path(str(touch(tmp_path / "model.tflite")))


def test_resolve_missing_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist") as caught:
        resolve_model_path(str(tmp_path / "nope"))
    assert caught.value.exit_code == ExitCode.MODEL  # 66 is for inputs that are late


def test_resolve_does_not_import_tensorflow(serving_base: Path) -> None:
    code = (
        "import sys; from batchpredict.model import resolve_model_path; "
        f"resolve_model_path({str(serving_base)!r}); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_load_missing_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model path does not exist"):
        load_model(str(tmp_path / "missing.keras"))


# --------------------------------------------------------------------------- Keras files


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_sequential(models: Models, suffix: str) -> None:
    loaded = load_model(str(models.root / f"sequential{suffix}"))
    assert loaded.signature is None
    assert loaded.source.kind == suffix.strip(".")
    assert loaded.inputs == (TensorInfo("features", "float32", (None, 3)),)
    assert loaded.outputs == (TensorInfo("out", "float32", (None, 2)),)
    assert loaded.output_structure == "single"
    x = features(3)
    result = run_traced(loaded, {"features": x})
    np.testing.assert_allclose(result["out"], as_numpy(models.sequential(x)), rtol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_two_inputs_list_outputs(models: Models, suffix: str) -> None:
    loaded = load_model(str(models.root / f"two_inputs{suffix}"))
    assert shapes(loaded.inputs) == {"a": (None, 3), "b": (None, 2)}
    assert [info.name for info in loaded.outputs] == ["score", "logits"]
    assert shapes(loaded.outputs) == {"score": (None, 1), "logits": (None, 2)}
    assert loaded.output_structure == "list"
    a, b = features(3, seed=1), features(2, seed=2)
    result = run_traced(loaded, {"b": b, "a": a})
    expected = as_numpy(models.two_inputs([a, b]))
    np.testing.assert_allclose(result["score"], expected[0], rtol=1e-6)
    np.testing.assert_allclose(result["logits"], expected[1], rtol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_dict_inputs_and_outputs(models: Models, suffix: str) -> None:
    loaded = load_model(str(models.root / f"dict_io{suffix}"))
    assert shapes(loaded.inputs) == {"p": (None, 3), "q": (None, 2)}
    # Dict outputs are named by their keys, not by the layers that make them.
    assert shapes(loaded.outputs) == {"mean": (None, 1), "probs": (None, 3)}
    assert loaded.output_structure == "dict"
    p, q = features(3, seed=3), features(2, seed=4)
    result = run_traced(loaded, {"p": p, "q": q})
    expected = as_numpy(models.dict_io({"p": p, "q": q}))
    assert result.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-6)


def test_keras_input_dtypes_are_numpy_names(tmp_path: Path) -> None:
    import keras

    ids = keras.Input((2,), name="ids", dtype="int64")
    flags = keras.Input((1,), name="flags", dtype="bool")
    model = keras.Model([ids, flags], keras.layers.Identity(name="same")(ids))
    model.save(tmp_path / "typed.keras")
    loaded = load_model(str(tmp_path / "typed.keras"))
    assert dtypes(loaded.inputs) == {"ids": "int64", "flags": "bool"}
    assert dtypes(loaded.outputs) == {"same": "int64"}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_needs_unsafe(models: Models, suffix: str) -> None:
    path = str(models.root / f"lambda{suffix}")
    with pytest.raises(ModelError, match=r"Lambda.*--unsafe_model_load") as caught:
        load_model(path)
    assert path in str(caught.value)
    loaded = load_model(path, unsafe=True)
    x = features(3)
    result = run_traced(loaded, {"x": x})
    np.testing.assert_allclose(next(iter(result.values())), x * 2.0 + 1.0, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_unregistered_custom_layer(models: Models, suffix: str) -> None:
    with pytest.raises(ModelError, match="needs custom objects: Doubler"):
        load_model(str(models.root / f"custom{suffix}"), unsafe=True)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_custom_initializer_function_is_not_needed(models: Models, suffix: str) -> None:
    # hls4ml's sigmoid.h5 is such a model: the function only made weights the file replaces.
    loaded = load_model(str(models.root / f"initializer{suffix}"))
    x = features(3, seed=6)
    result = run_traced(loaded, {info.name: x for info in loaded.inputs})
    np.testing.assert_allclose(result["dense"], as_numpy(models.initializer_model(x)), rtol=1e-6)


def test_keras_subclassed_model_has_no_fixed_inputs(tmp_path: Path) -> None:
    import keras

    @keras.saving.register_keras_serializable(package="test_model")
    class Subclassed(keras.Model):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, inputs: Any) -> Any:
            return self.dense(inputs)

    model = Subclassed()
    model(features(3))
    model.save(tmp_path / "subclassed.keras")
    with pytest.raises(ModelError, match=r"without fixed inputs.*model\.export\(\)"):
        load_model(str(tmp_path / "subclassed.keras"))


@pytest.mark.parametrize("name", ["weights.weights.h5", "weights.h5"])
def test_weights_only_h5(models: Models, name: str) -> None:
    with pytest.raises(ModelError, match="holds only weights"):
        load_model(str(models.root / name))


@pytest.mark.parametrize("name", ["junk.h5", "junk.keras"])
def test_corrupt_keras_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a model\n" * 10)
    with pytest.raises(ModelError) as caught:
        load_model(str(path))
    assert str(path) in str(caught.value)


def test_signature_option_on_keras_file(models: Models) -> None:
    with pytest.raises(ModelError, match="signatures only exist in SavedModels"):
        load_model(str(models.root / "sequential.keras"), signature="predict")


# --------------------------------------------------------------------------- SavedModels


def test_export_sequential(models: Models) -> None:
    loaded = load_model(str(models.root / "sequential_export"))
    assert loaded.source.kind == "saved_model"
    assert loaded.signature == "serving_default"
    assert loaded.inputs == (TensorInfo("features", "float32", (None, 3)),)
    assert shapes(loaded.outputs) == {"output_0": (None, 2)}
    assert loaded.output_structure == "single"
    x = features(3)
    result = run_traced(loaded, {"features": x})
    np.testing.assert_allclose(result["output_0"], as_numpy(models.sequential(x)), rtol=1e-6)


def test_export_two_inputs(models: Models) -> None:
    loaded = load_model(str(models.root / "two_inputs_export"))
    assert shapes(loaded.inputs) == {"a": (None, 3), "b": (None, 2)}
    assert shapes(loaded.outputs) == {"output_0": (None, 1), "output_1": (None, 2)}
    assert loaded.output_structure == "dict"
    a, b = features(3, seed=1), features(2, seed=2)
    result = run_traced(loaded, {"a": a, "b": b})
    expected = as_numpy(models.two_inputs([a, b]))
    np.testing.assert_allclose(result["output_0"], expected[0], rtol=1e-6)
    np.testing.assert_allclose(result["output_1"], expected[1], rtol=1e-6)


def test_export_dict_io(models: Models) -> None:
    loaded = load_model(str(models.root / "dict_io_export"))
    assert shapes(loaded.outputs) == {"mean": (None, 1), "probs": (None, 3)}
    p, q = features(3, seed=3), features(2, seed=4)
    result = run_traced(loaded, {"p": p, "q": q})
    expected = as_numpy(models.dict_io({"p": p, "q": q}))
    for key in expected:
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-6)


def test_saved_model_variables_outlive_the_loader(models: Models) -> None:
    loaded = load_model(str(models.root / "versioned"))
    gc.collect()
    x = np.array([[1.0], [2.0]], np.float32)
    np.testing.assert_allclose(run_traced(loaded, {"x": x})["y"], x * 10.0)


def test_missing_signature_lists_available(models: Models) -> None:
    with pytest.raises(ModelError, match=r"no signature 'serving_default'.*: add, double$"):
        load_model(str(models.root / "two_signatures"))


def test_other_signatures(models: Models) -> None:
    path = str(models.root / "two_signatures")
    double = load_model(path, signature="double")
    assert double.signature == "double"
    assert double.inputs == (TensorInfo("x", "float32", (None, 2)),)
    x = features(2)
    np.testing.assert_allclose(run_traced(double, {"x": x})["output_0"], x * 2.0)

    add = load_model(path, signature="add")
    assert dtypes(add.inputs) == {"left": "int64", "right": "int64"}
    assert shapes(add.outputs) == {"sum": (None,), "difference": (None,)}
    assert add.output_structure == "dict"
    left, right = np.arange(BATCH, dtype=np.int64), np.full(BATCH, 10, np.int64)
    result = run_traced(add, {"left": left, "right": right})
    np.testing.assert_array_equal(result["sum"], left + right)
    np.testing.assert_array_equal(result["difference"], left - right)


@pytest.mark.parametrize(("version", "factor"), [(None, 10.0), (9, 9.0), (2, 2.0)])
def test_versioned_saved_models(models: Models, version: int | None, factor: float) -> None:
    loaded = load_model(str(models.root / "versioned"), version=version)
    assert loaded.source.version == int(factor)
    x = np.array([[1.0], [2.0], [5.0]], np.float32)
    np.testing.assert_allclose(run_traced(loaded, {"x": x})["y"], x * factor)


def test_versioned_missing_version(models: Models) -> None:
    with pytest.raises(ModelError, match="available versions: 2, 9, 10"):
        load_model(str(models.root / "versioned"), version=3)


def test_tf1_saved_model_loads(tmp_path: Path) -> None:
    import tensorflow as tf

    export = tmp_path / "tf1"
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        factor = tf.compat.v1.Variable(3.0, use_resource=False)
        y = tf.identity(x * factor + 1.0, name="y")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(export))
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()
    loaded = load_model(str(export))
    assert loaded.inputs == (TensorInfo("x", "float32", (None, 1)),)
    assert loaded.outputs == (TensorInfo("y", "float32", (None, 1)),)
    values = np.array([[1.0], [2.0]], np.float32)
    np.testing.assert_allclose(run_traced(loaded, {"x": values})["y"], values * 3.0 + 1.0)


def test_tf1_saved_model_with_several_meta_graphs(tmp_path: Path) -> None:
    import tensorflow as tf

    export = tmp_path / "tagged"
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x - 1.0, name="y")
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder = tf.compat.v1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(
            session, ["train"], signature_def_map={"serving_default": signature}
        )
        builder.add_meta_graph(["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    loaded = load_model(str(export))
    values = np.array([1.0, 5.0], np.float32)
    np.testing.assert_allclose(run_traced(loaded, {"x": values})["y"], values - 1.0)


def test_saved_model_without_signatures(tmp_path: Path) -> None:
    import tensorflow as tf

    export = tmp_path / "bare"
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        tf.compat.v1.placeholder(tf.float32, [None], name="x")
        builder = tf.compat.v1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(session, ["serve"])
        builder.save()
    with pytest.raises(ModelError, match="has no signatures"):
        load_model(str(export))


def test_corrupt_saved_model(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xfe definitely not a protocol buffer")
    with pytest.raises(ModelError, match="not a readable SavedModel") as caught:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(caught.value)


def test_saved_model_without_its_variables(models: Models, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(models.root / "sequential_export", broken)
    shutil.rmtree(broken / "variables")
    with pytest.raises(ModelError, match=rf"{re.escape(str(broken))}.*variables"):
        load_model(str(broken))


# --------------------------------------------------------------------------- describing


def test_describe_saved_model(models: Models) -> None:
    lines = describe(load_model(str(models.root / "versioned"), version=9))
    assert lines == [
        f"path: {models.root / 'versioned' / '9'}",
        "kind: saved_model",
        "version: 9",
        "signature: serving_default",
        "input x: float32 [?, 1]",
        "output y: float32 [?, 1]",
        "output structure: single",
    ]


def test_describe_keras_and_unknown_rank() -> None:
    model = LoadedModel(
        source=ResolvedModelPath("m.keras", "keras", None),
        signature=None,
        inputs=(TensorInfo("img", "uint8", (None, 28, 28)), TensorInfo("t", "string", (), False)),
        outputs=(TensorInfo("p", "float32", (None,)),),
        call=dict,
        output_structure="single",
    )
    assert describe(model) == [
        "path: m.keras",
        "kind: keras",
        "version: -",
        "signature: -",
        "input img: uint8 [?, 28, 28]",
        "input t: string (shape unknown)",
        "output p: float32 [?]",
        "output structure: single",
    ]
