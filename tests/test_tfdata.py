"""`--prefetch`: batches fed from a `tf.data` pipeline (the GPU path) predict exactly what
the NumPy path does, trace once and log which path ran; test_interrupts ends a run on
either path with SIGTERM and Ctrl-C.

There is no GPU here: the choice of path for GPU devices is tested as a decision, and the
`prefetch_to_device` branch is run by pointing it at the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from batchpredict import predictor as predictor_module
from batchpredict.errors import UsageError
from batchpredict.predictor import DevicePlan, Predictor, is_gpu, prefetch_path
from conftest import (
    N_FEATURES,
    Completed,
    make_frame,
    reference_predictions,
    write_with_library,
)

#: Rows per chunk tried: none, one, a batch less one, one batch, one more, several and a
#: partial last batch.
ROW_COUNTS = (0, 1, 31, 32, 33, 100)
BATCH = 32


@pytest.mark.parametrize(
    ("choice", "devices", "path"),
    [
        ("auto", ("/GPU:0",), "tfdata"),
        ("auto", ("/GPU:0", "/GPU:1"), "tfdata"),
        ("auto", ("/device:GPU:0",), "tfdata"),
        ("auto", ("/CPU:0",), "numpy"),
        ("auto", ("/CPU:0", "/CPU:1"), "numpy"),
        ("tfdata", ("/CPU:0",), "tfdata"),
        ("numpy", ("/GPU:0",), "numpy"),
    ],
)
def test_path_chosen_per_device(choice: str, devices: tuple[str, ...], path: str) -> None:
    assert prefetch_path(choice, devices) == path


def test_gpu_names_are_told_from_cpu_names() -> None:
    assert [is_gpu(d) for d in ("/GPU:0", "/device:GPU:3", "gpu:1", "/job:w/device:GPU:0")] == [
        True,
        True,
        True,
        True,
    ]
    assert [is_gpu(d) for d in ("/CPU:0", "/device:CPU:1", "cpu:0", "/TPU:0")] == [False] * 4
    assert predictor_module.copies_to_device("/GPU:1")
    assert not predictor_module.copies_to_device("/CPU:0")


def test_unknown_prefetch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--prefetch must be auto, tfdata or numpy"):
        prefetch_path("gpu", ("/CPU:0",))


def test_a_gpu_plan_gets_the_tfdata_path_without_a_gpu(mlp_model: Path) -> None:
    """The predictor decides from device names alone: nothing runs on the GPUs named."""
    from batchpredict.model import load_model

    model = load_model(str(mlp_model))
    plan = DevicePlan((0, 1), ("/GPU:0", "/GPU:1"))
    assert Predictor(model, BATCH, plan.devices).prefetch == "tfdata"
    assert Predictor(model, BATCH, plan.devices, "numpy").prefetch == "numpy"
    assert Predictor(model, BATCH).prefetch == "numpy"


# -- parity ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_input_model(models_dir: Path) -> Path:
    """Three named inputs of ranks 1, 2 and 3 (a GRU over [4, 2]), dict outputs."""
    import keras

    keras.utils.set_random_seed(5)
    age = keras.Input(shape=(1,), name="age")
    history = keras.Input(shape=(5,), name="history")
    clicks = keras.Input(shape=(4, 2), name="clicks")
    joined = keras.layers.Concatenate()([age, history, keras.layers.GRU(4)(clicks)])
    hidden = keras.layers.Dense(8, activation="relu")(joined)
    outputs = {
        "churn": keras.layers.Dense(1, activation="sigmoid", name="churn")(hidden),
        "segment": keras.layers.Dense(3, activation="softmax", name="segment")(hidden),
    }
    path = models_dir / "tfdata_multi.keras"
    keras.Model({"age": age, "history": history, "clicks": clicks}, outputs).save(path)
    return path


@pytest.fixture(scope="module")
def sequence_model(models_dir: Path) -> Path:
    """A GRU over [T=6, d=3] with a per-step head: outputs [1] and [6, 2]."""
    import keras

    keras.utils.set_random_seed(6)
    events = keras.Input(shape=(6, 3), name="events")
    steps = keras.layers.GRU(5, return_sequences=True)(events)
    per_step = keras.layers.TimeDistributed(keras.layers.Dense(2), name="per_step")(steps)
    risk = keras.layers.Dense(1, name="risk")(keras.layers.GlobalAveragePooling1D()(steps))
    path = models_dir / "tfdata_sequence.keras"
    keras.Model(events, [risk, per_step]).save(path)
    return path


@pytest.fixture(scope="module")
def text_model(models_dir: Path) -> Path:
    """A string input (padding repeats a real string, not zeros)."""
    import keras

    keras.utils.set_random_seed(7)
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=4)
    vectorize.adapt(["a good film", "a bad film", "very good", "very bad plot"])
    review = keras.Input(shape=(1,), dtype="string", name="review")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 3)(vectorize(review)))
    path = models_dir / "tfdata_text.keras"
    keras.Model(review, keras.layers.Dense(1)(pooled)).save(path)
    return path


def inputs_for(model: Any, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random rows of every input of `model`, in the input's dtype."""
    rng = np.random.default_rng(seed)
    words = np.array(["a good film", "very bad plot", "film", ""], dtype=object)
    arrays = {}
    for spec in model.inputs:
        shape = (rows, *spec.shape[1:])
        if spec.dtype == "string":
            arrays[spec.name] = rng.choice(words, size=shape)
        else:
            arrays[spec.name] = rng.normal(size=shape).astype(spec.dtype)
    return arrays


@pytest.mark.parametrize("model_fixture", ["mlp_model", "multi_input_model", "sequence_model"])
def test_tfdata_predicts_exactly_what_numpy_does(
    model_fixture: str, request: pytest.FixtureRequest
) -> None:
    """Bit for bit: both paths call the same traced function on the same padded batches on
    the same device, so even float rounding agrees (no tolerance needed)."""
    from batchpredict.model import load_model

    model = load_model(str(request.getfixturevalue(model_fixture)))
    numpy_path = Predictor(model, BATCH, prefetch="numpy")
    tfdata_path = Predictor(model, BATCH, prefetch="tfdata")
    assert tfdata_path.prefetch == "tfdata"
    for rows in ROW_COUNTS:
        arrays = inputs_for(model, rows, seed=rows)
        expected = numpy_path.predict_arrays(arrays, rows)
        got = tfdata_path.predict_arrays(arrays, rows)
        assert got.keys() == expected.keys()
        for name, values in expected.items():
            assert got[name].shape == values.shape == (rows, *values.shape[1:])
            assert got[name].dtype == values.dtype
            assert np.array_equal(got[name], values), f"{name} differs at {rows} rows"
    assert tfdata_path.trace_count() == 1, "one traced function for every chunk and batch"
    # The 0-row chunk runs one blank batch too, for its outputs' types and shapes.
    batches = 1 + sum(-(-rows // BATCH) for rows in ROW_COUNTS[1:])
    assert tfdata_path.batches_per_device["/CPU:0"] == batches


def test_tfdata_feeds_string_inputs_padded_with_real_strings(text_model: Path) -> None:
    from batchpredict.model import load_model

    model = load_model(str(text_model))
    arrays = inputs_for(model, 45, seed=1)
    expected = Predictor(model, BATCH, prefetch="numpy").predict_arrays(arrays, 45)
    got = Predictor(model, BATCH, prefetch="tfdata").predict_arrays(arrays, 45)
    (name,) = expected
    assert np.array_equal(got[name], expected[name])


def test_prefetch_to_device_branch_on_the_cpu(
    mlp_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU branch (`prefetch_to_device`) run with the CPU as its target device."""
    from batchpredict.model import load_model

    copied: list[str] = []

    def copies(device: str) -> bool:
        copied.append(device)
        return True

    monkeypatch.setattr(predictor_module, "copies_to_device", copies)
    model = load_model(str(mlp_model))
    arrays = inputs_for(model, 100, seed=3)
    expected = Predictor(model, BATCH, prefetch="numpy").predict_arrays(arrays, 100)
    tfdata_path = Predictor(model, BATCH, prefetch="tfdata")
    got = tfdata_path.predict_arrays(arrays, 100)
    assert copied == ["/CPU:0"]
    assert np.array_equal(got["score"], expected["score"])
    assert tfdata_path.trace_count() == 1


def test_a_size_per_trace_on_the_tfdata_path(mlp_model: Path) -> None:
    from batchpredict.model import load_model

    model = load_model(str(mlp_model))
    tfdata_path = Predictor(model, None, prefetch="tfdata")
    features = np.random.default_rng(2).normal(size=(3000, N_FEATURES)).astype(np.float32)
    choice = tfdata_path.choose_batch_size({"features": features}, 3000)
    for rows in (3000, 1500, 7):
        tfdata_path.predict_arrays({"features": features[:rows]}, rows)
    assert tfdata_path.batch_size == choice.batch_size
    assert tfdata_path.trace_count() == 1, "the sizes timed and not kept are dropped"


# -- the command --------------------------------------------------------------------------


def started_and_finished(result: Completed) -> tuple[dict[str, Any], dict[str, Any]]:
    lines = result.log_lines()
    (started,) = [line for line in lines if line.get("event") == "run started"]
    return started, lines[-1]


def test_the_command_logs_its_path_and_both_paths_write_the_same(
    tmp_path: Path, mlp_model: Path, run_main: Any
) -> None:
    source = write_with_library(make_frame(1000, seed=4), tmp_path / "d.parquet", "parquet")
    outputs = {}
    for choice, path in (("auto", "numpy"), ("tfdata", "tfdata"), ("numpy", "numpy")):
        out = tmp_path / f"{choice}.parquet"
        result = run_main(
            "predict", "--model", str(mlp_model), "--input_file", str(source),
            "--output_file", str(out), "--prefetch", choice, "--batch_size", "64",
            "--chunk_size", "300", "--keep_columns", "id",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        started, finished = started_and_finished(result)
        assert started["prefetch"] == finished["prefetch"] == path
        outputs[choice] = pq.read_table(out)
    assert outputs["tfdata"].equals(outputs["auto"])
    assert outputs["numpy"].equals(outputs["auto"])


def test_an_unknown_prefetch_is_refused(tmp_path: Path, mlp_model: Path, run_main: Any) -> None:
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(tmp_path / "d.parquet"),
        "--prefetch", "gpu",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--prefetch" in result.stderr


@pytest.mark.slow
def test_tfdata_on_several_devices_deals_batches_in_order(
    tmp_path: Path, mlp_model: Path, run_cli: Any
) -> None:
    """Two logical CPUs stand in for two GPUs: each iterates its own pipeline over every
    other batch, and the predictions come back in row order."""
    frame = make_frame(3000, seed=12)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--keep_columns", "id", "--device", "cpu:0,cpu:1", "--prefetch", "tfdata",
        "--batch_size", "64", "--chunk_size", "1000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    started, finished = started_and_finished(result)
    assert started["prefetch"] == finished["prefetch"] == "tfdata"
    # Chunks of 1024 rows: 16 + 16 + 15 batches, the first of each chunk on /CPU:0.
    assert finished["batches_per_device"] == {"/CPU:0": 8 + 8 + 8, "/CPU:1": 8 + 8 + 7}
    out = pq.read_table(tmp_path / "d.predictions.parquet").to_pandas()
    assert out["id"].tolist() == frame["id"].tolist()
    expected = reference_predictions(
        mlp_model, frame[[f"f{j}" for j in range(N_FEATURES)]].to_numpy()
    )
    np.testing.assert_allclose(out["prediction"], expected.reshape(-1), rtol=1e-5, atol=1e-6)
