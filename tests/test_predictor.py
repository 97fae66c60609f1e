"""The predictor: device choice, one trace per run, padding dropped, same numbers as the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchpredict.config import RunConfig
from batchpredict.errors import UsageError
from batchpredict.predictor import (
    AUTO_BATCH_SIZES,
    DevicePlan,
    Predictor,
    auto_batch_sizes,
    choose_device,
    chunk_rows_for,
)
from conftest import N_FEATURES, make_frame, reference_predictions, write_with_library


@pytest.mark.parametrize(
    ("spec", "gpus", "plan"),
    [
        ("auto", 0, DevicePlan((), ("/CPU:0",))),
        ("auto", 2, DevicePlan((0, 1), ("/GPU:0", "/GPU:1"))),
        ("cpu", 2, DevicePlan((), ("/CPU:0",))),
        ("gpu", 1, DevicePlan((0,), ("/GPU:0",))),
        ("gpu:1", 2, DevicePlan((1,), ("/GPU:0",))),
        ("gpu:3,gpu:1", 4, DevicePlan((3, 1), ("/GPU:0", "/GPU:1"))),
        ("cpu:0,cpu:1", 0, DevicePlan((), ("/CPU:0", "/CPU:1"), cpu_split=2)),
    ],
)
def test_device_choice(spec: str, gpus: int, plan: DevicePlan) -> None:
    assert choose_device(spec, gpus) == plan


@pytest.mark.parametrize(
    ("spec", "gpus", "message"),
    [
        ("gpu", 0, "no GPU"),
        ("gpu:2", 2, "gpu:0 to gpu:1"),
        ("gpu:0,gpu:5", 2, "gpu:0 to gpu:1"),
        ("gpu:1,gpu:1", 2, "named twice"),
    ],
)
def test_impossible_device_is_a_usage_error(spec: str, gpus: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        choose_device(spec, gpus)


def test_one_trace_for_every_batch_and_padding_dropped(mlp_model: Path) -> None:
    from batchpredict.model import load_model

    model = load_model(str(mlp_model))
    predictor = Predictor(model, batch_size=32)
    rng = np.random.default_rng(0)
    for rows in (1, 31, 32, 33, 100):
        features = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
        got = predictor.predict_arrays({"features": features}, rows)
        (values,) = got.values()
        assert values.shape[0] == rows
        np.testing.assert_allclose(
            values, reference_predictions(mlp_model, features), rtol=1e-5, atol=1e-6
        )
    assert predictor.trace_count() == 1


def test_auto_batch_size_times_real_rows_and_keeps_one_trace(mlp_model: Path) -> None:
    from batchpredict.model import load_model

    model = load_model(str(mlp_model))
    predictor = Predictor(model, batch_size=None)
    rows = 20_000
    features = np.random.default_rng(1).normal(size=(rows, N_FEATURES)).astype(np.float32)
    choice = predictor.choose_batch_size({"features": features}, rows)
    assert choice.batch_size == predictor.batch_size
    assert choice.batch_size in choice.rows_per_second
    assert set(choice.rows_per_second) <= {size for size in AUTO_BATCH_SIZES if size <= rows}
    assert len(choice.rows_per_second) >= 2, "at least two sizes are compared"
    assert all(speed > 0 for speed in choice.rows_per_second.values())
    got = predictor.predict_arrays({"features": features}, rows)["score"]
    np.testing.assert_allclose(
        got, reference_predictions(mlp_model, features), rtol=1e-5, atol=1e-6
    )
    assert predictor.trace_count() == 1, "the sizes not chosen are dropped"


def test_auto_batch_sizes_respect_chunk_size_and_row_bytes(tmp_path: Path) -> None:
    import keras

    from batchpredict.model import load_model

    image = keras.Input(shape=(224, 224, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(image)
    keras.Model(image, keras.layers.Dense(2)(pooled)).save(tmp_path / "image.keras")
    images = load_model(str(tmp_path / "image.keras"))
    # 224*224*3 float32 = 588 KiB a row: 32 rows stay within the 32 MiB budget, 64 do not.
    assert auto_batch_sizes(images, 65536) == [32]
    assert chunk_rows_for(1000, None, images) == 1024

    inputs = keras.Input(shape=(4,), name="x")
    keras.Model(inputs, keras.layers.Dense(1)(inputs)).save(tmp_path / "small.keras")
    small = load_model(str(tmp_path / "small.keras"))
    assert auto_batch_sizes(small, 65536) == list(AUTO_BATCH_SIZES)
    assert auto_batch_sizes(small, 3000) == [256, 1024]
    assert auto_batch_sizes(small, 500) == [256]
    assert chunk_rows_for(65536, None, small) == 65536
    assert chunk_rows_for(50_000, None, small) == 65536  # whole batches of 16384
    assert chunk_rows_for(100, 64, small) == 128


def test_model_with_fixed_batch_dimension_sets_the_batch_size(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input(shape=(3,), batch_size=1, name="x")
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.save(tmp_path / "fixed.keras")
    from batchpredict.model import load_model

    predictor = Predictor(load_model(str(tmp_path / "fixed.keras")), batch_size=256)
    assert predictor.batch_size == 1


@pytest.mark.parametrize(
    ("rows", "batch_size", "chunk_size"),
    [(1, 64, 100), (64, 64, 64), (65, 64, 100), (1000, 64, 100), (1000, 1000, 1000), (999, 7, 50)],
)
def test_pipeline_rows_and_order_survive_every_boundary(
    rows: int, batch_size: int, chunk_size: int, tmp_path: Path, mlp_model: Path
) -> None:
    """1-row file, exactly one batch, batches that don't divide the rows, chunks inside data."""
    from batchpredict import pipeline

    frame = make_frame(rows, seed=rows)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    config = RunConfig(
        model=str(mlp_model),
        input_files=(str(source),),
        output_file=str(tmp_path / "o.parquet"),
        keep_columns=("id", "segment"),
        batch_size=batch_size,
        chunk_size=chunk_size,
    )
    summary = pipeline.run(config)
    assert summary.rows_out == rows
    out = pq.read_table(tmp_path / "o.parquet").to_pandas()
    pd.testing.assert_series_equal(out["id"], frame["id"])
    expected = reference_predictions(
        mlp_model, frame[[f"f{j}" for j in range(N_FEATURES)]].to_numpy()
    )
    np.testing.assert_allclose(out["prediction"], expected.reshape(-1), rtol=1e-5, atol=1e-6)
