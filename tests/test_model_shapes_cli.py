"""The models people train — sequences, images, text, embeddings, several inputs and outputs —
scored from Parquet, Avro and JSON lines through the installed command, and compared with
the model called directly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Completed, read_with_library

RunCli = Callable[..., Completed]
ROWS = 37  # not a multiple of the batch size used below
LIST_FORMATS = ("parquet", "avro", "jsonl")


def write_rows(columns: dict[str, Any], path: Path, fmt: str) -> Path:
    """Write columns (NumPy arrays, nested where a row is a list) with the reference library."""
    plain = {
        name: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for name, v in columns.items()
    }
    rows = [dict(zip(plain, values, strict=True)) for values in zip(*plain.values(), strict=True)]
    if fmt == "parquet":
        pq.write_table(pa.table(plain), path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif fmt == "avro":
        import fastavro

        def avro_type(value: Any) -> Any:
            if isinstance(value, list):
                return {"type": "array", "items": avro_type(value[0])}
            return {bool: "boolean", int: "long", float: "double", str: "string"}[type(value)]

        fields = [{"name": n, "type": avro_type(v)} for n, v in rows[0].items()]
        with path.open("wb") as handle:
            fastavro.writer(handle, {"type": "record", "name": "Row", "fields": fields}, rows)
    else:
        raise ValueError(fmt)
    return path


def read_output(path: Path, fmt: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    frame = read_with_library(path, fmt)
    return pa.Table.from_pandas(frame, preserve_index=False)


def as_array(column: pa.ChunkedArray) -> np.ndarray:
    return np.array(column.to_pylist(), dtype=np.float64)


def direct(model_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    out = model(next(iter(inputs.values())) if len(inputs) == 1 else inputs)
    if isinstance(out, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    if isinstance(out, list | tuple):
        names = model.output_names
        return {n: keras.ops.convert_to_numpy(v) for n, v in zip(names, out, strict=True)}
    return keras.ops.convert_to_numpy(out)


def save(model: Any, models_dir: Path, name: str) -> Path:
    path = models_dir / f"{name}.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def customer_model(models_dir: Path) -> Path:
    """Three named inputs of different ranks, two dict outputs of widths 1 and 3."""
    import keras

    keras.utils.set_random_seed(3)
    age = keras.Input(shape=(1,), name="age")
    history = keras.Input(shape=(5,), name="history")
    clicks = keras.Input(shape=(4, 2), name="clicks")
    summary = keras.layers.GRU(4)(clicks)
    joined = keras.layers.Concatenate()([age, history, summary])
    hidden = keras.layers.Dense(8, activation="relu")(joined)
    outputs = {
        "churn": keras.layers.Dense(1, activation="sigmoid", name="churn")(hidden),
        "segment": keras.layers.Dense(3, activation="softmax", name="segment")(hidden),
    }
    return save(
        keras.Model({"age": age, "history": history, "clicks": clicks}, outputs),
        models_dir,
        "customer",
    )


def customer_data(rows: int = ROWS) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "customer_id": np.arange(1000, 1000 + rows),
        "age": rng.integers(18, 90, rows),  # int64 column feeding a float input: a safe cast
        "history": rng.normal(size=(rows, 5)),
        "clicks": rng.normal(size=(rows, 4, 2)),
    }


@pytest.mark.parametrize("fmt", LIST_FORMATS)
def test_three_named_inputs_two_outputs_with_no_options(
    fmt: str, tmp_path: Path, customer_model: Path, run_main: RunCli
) -> None:
    """The issue's bar: only --model and --input_file; the key kept, one column per output."""
    data = customer_data()
    source = write_rows(data, tmp_path / f"export.{fmt}", fmt)
    result = run_main(
        "predict", "--model", str(customer_model), "--input_file", str(source), "--batch_size", "16"
    )
    assert result.returncode == 0, result.stderr
    out = read_output(tmp_path / f"export.predictions.{fmt}", fmt)
    assert out.column_names == ["customer_id", "churn", "segment"]
    assert out.column("customer_id").to_pylist() == data["customer_id"].tolist()
    expected = direct(
        customer_model,
        {
            "age": data["age"].reshape(-1, 1).astype("float32"),
            "history": data["history"].astype("float32"),
            "clicks": data["clicks"].astype("float32"),
        },
    )
    assert isinstance(expected, dict)
    np.testing.assert_allclose(
        as_array(out.column("churn")), expected["churn"].reshape(-1), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        as_array(out.column("segment")), expected["segment"], rtol=1e-5, atol=1e-6
    )


@pytest.fixture(scope="module")
def sequence_model(models_dir: Path) -> Path:
    """GRU over [T=6, d=3], TimeDistributed head: a list of outputs `risk` and `per_step`,
    the latter [6, 2]; output columns take the output layers' names."""
    import keras

    keras.utils.set_random_seed(4)
    events = keras.Input(shape=(6, 3), name="events")
    steps = keras.layers.GRU(5, return_sequences=True)(events)
    per_step = keras.layers.TimeDistributed(keras.layers.Dense(2), name="per_step")(steps)
    risk = keras.layers.Dense(1, name="risk")(keras.layers.GlobalAveragePooling1D()(steps))
    return save(keras.Model(events, [risk, per_step]), models_dir, "sequence")


@pytest.mark.parametrize("fmt", [*LIST_FORMATS, "csv-out"])
def test_gru_time_distributed_list_outputs(
    fmt: str, tmp_path: Path, sequence_model: Path, run_main: RunCli
) -> None:
    rng = np.random.default_rng(5)
    data = {"id": np.arange(ROWS), "events": rng.normal(size=(ROWS, 6, 3))}
    in_fmt = "parquet" if fmt == "csv-out" else fmt
    source = write_rows(data, tmp_path / f"seq.{in_fmt}", in_fmt)
    out_path = tmp_path / ("out.csv" if fmt == "csv-out" else f"out.{fmt}")
    result = run_main(
        "predict", "--model", str(sequence_model), "--input_file", str(source),
        "--output_file", str(out_path), "--batch_size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = direct(sequence_model, {"events": data["events"].astype("float32")})
    assert isinstance(expected, dict)
    if fmt == "csv-out":
        out = read_output(out_path, "csv")
        assert out.column_names == ["id", "risk", *[f"per_step_{i}" for i in range(12)]]
        per_step = np.stack([as_array(out.column(f"per_step_{i}")) for i in range(12)], axis=1)
        np.testing.assert_allclose(
            per_step, expected["per_step"].reshape(ROWS, 12), rtol=1e-5, atol=1e-5
        )
    else:
        out = read_output(out_path, fmt)
        assert out.column_names == ["id", "risk", "per_step"]
        np.testing.assert_allclose(
            as_array(out.column("per_step")), expected["per_step"], rtol=1e-5, atol=1e-5
        )
    np.testing.assert_allclose(
        as_array(out.column("risk")), expected["risk"].reshape(-1), rtol=1e-5, atol=1e-5
    )


@pytest.fixture(scope="module")
def image_model(models_dir: Path) -> Path:
    import keras

    keras.utils.set_random_seed(6)
    image = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(image)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    return save(
        keras.Model(image, keras.layers.Dense(3, activation="softmax")(x)), models_dir, "image"
    )


@pytest.mark.parametrize(
    ("fmt", "layout"), [("parquet", "flat"), ("avro", "nested"), ("jsonl", "flat")]
)
def test_conv2d_images_with_class_names(
    fmt: str, layout: str, tmp_path: Path, image_model: Path, run_main: RunCli
) -> None:
    rng = np.random.default_rng(8)
    images = rng.random(size=(ROWS, 8, 8, 1))
    pixels = images.reshape(ROWS, 64) if layout == "flat" else images
    source = write_rows(
        {"name": [f"img{i}" for i in range(ROWS)], "image": pixels}, tmp_path / f"i.{fmt}", fmt
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nbird\n")
    result = run_main(
        "predict", "--model", str(image_model), "--input_file", str(source),
        "--output_file", str(tmp_path / "o.parquet"), "--class_names_file", str(labels),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "o.parquet")
    assert out.column_names == ["name", "prediction", "label", "score"]
    expected = direct(image_model, {"image": images.astype("float32")})
    assert isinstance(expected, np.ndarray)
    np.testing.assert_allclose(as_array(out.column("prediction")), expected, rtol=1e-5, atol=1e-6)
    names = np.array(["cat", "dog", "bird"])
    assert out.column("label").to_pylist() == names[expected.argmax(axis=1)].tolist()
    np.testing.assert_allclose(as_array(out.column("score")), expected.max(axis=1), rtol=1e-5)


def test_image_with_wrong_pixel_count_is_a_data_error(
    tmp_path: Path, image_model: Path, run_main: RunCli
) -> None:
    pixels = [[0.5] * 64, [0.5] * 64, [0.5] * 63]
    source = write_rows({"image": pixels}, tmp_path / "i.parquet", "parquet")
    result = run_main("predict", "--model", str(image_model), "--input_file", str(source))
    assert result.returncode == 65
    assert "row 3, column 'image': list of length 63" in result.stderr
    assert not (tmp_path / "i.predictions.parquet").exists()


@pytest.fixture(scope="module")
def text_model(models_dir: Path) -> Path:
    """A sentiment-style model that carries its own TextVectorization."""
    import keras

    keras.utils.set_random_seed(9)
    vectorize = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=6)
    vectorize.adapt(["a good film", "a bad film", "very good", "very bad plot", "fine acting"])
    review = keras.Input(shape=(1,), dtype="string", name="review")
    x = keras.layers.Embedding(50, 4)(vectorize(review))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return save(
        keras.Model(review, keras.layers.Dense(1, activation="sigmoid")(x)), models_dir, "text"
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_model_with_threshold_labels(
    fmt: str, tmp_path: Path, text_model: Path, run_main: RunCli
) -> None:
    reviews = ["a good film", "bad plot", "very very good", "unknown words here"] * 5
    source = write_rows(
        {"review_id": list(range(20)), "review": reviews}, tmp_path / "r.jsonl", "jsonl"
    )
    if fmt == "csv":
        read_output(source, "jsonl").to_pandas().to_csv(tmp_path / "r.csv", index=False)
        source = tmp_path / "r.csv"
    result = run_main(
        "predict", "--model", str(text_model), "--input_file", str(source),
        "--output_file", str(tmp_path / "o.jsonl"), "--class_names", "negative,positive",
        "--threshold", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = read_output(tmp_path / "o.jsonl", "jsonl")
    assert out.column_names == ["review_id", "prediction", "label", "score"]
    expected = direct(text_model, {"review": np.array(reviews, dtype=object).reshape(-1, 1)})
    assert isinstance(expected, np.ndarray)
    probability = expected.reshape(-1)
    np.testing.assert_allclose(
        as_array(out.column("prediction")), probability, rtol=1e-5, atol=1e-6
    )
    assert out.column("label").to_pylist() == [
        "positive" if p >= 0.5 else "negative" for p in probability
    ]
    np.testing.assert_allclose(
        as_array(out.column("score")), np.maximum(probability, 1 - probability), rtol=1e-5
    )


def test_text_column_cannot_feed_a_float_input(
    tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    source = write_rows({"features": ["1,2,3,4"] * 3}, tmp_path / "t.jsonl", "jsonl")
    result = run_main("predict", "--model", str(mlp_model), "--input_file", str(source))
    assert result.returncode == 65
    assert "column 'features' has type string" in result.stderr


@pytest.fixture(scope="module")
def embedding_model(models_dir: Path) -> Path:
    import keras

    keras.utils.set_random_seed(10)
    item = keras.Input(shape=(1,), dtype="int32", name="item_id")
    x = keras.layers.Flatten()(keras.layers.Embedding(100, 4)(item))
    return save(keras.Model(item, keras.layers.Dense(1)(x)), models_dir, "embedding")


@pytest.mark.parametrize("fmt", ["avro", "parquet"])
def test_integer_ids_feed_an_embedding(
    fmt: str, tmp_path: Path, embedding_model: Path, run_main: RunCli
) -> None:
    ids = np.arange(ROWS) % 100
    source = write_rows(
        {"item_id": ids, "user": [f"u{i}" for i in range(ROWS)]}, tmp_path / f"e.{fmt}", fmt
    )
    result = run_main(
        "predict",
        "--model",
        str(embedding_model),
        "--input_file",
        str(source),
        "--output_file",
        str(tmp_path / "o.parquet"),
    )
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "o.parquet")
    expected = direct(embedding_model, {"item_id": ids.reshape(-1, 1).astype("int32")})
    assert isinstance(expected, np.ndarray)
    np.testing.assert_allclose(
        as_array(out.column("prediction")), expected.reshape(-1), rtol=1e-5, atol=1e-6
    )


def test_float_ids_are_refused_for_an_integer_input(
    tmp_path: Path, embedding_model: Path, run_main: RunCli
) -> None:
    source = write_rows({"item_id": [1.0, 2.5]}, tmp_path / "e.parquet", "parquet")
    result = run_main("predict", "--model", str(embedding_model), "--input_file", str(source))
    assert result.returncode == 65
    assert "column 'item_id' has type double; model input 'item_id' needs int32" in result.stderr


def test_lambda_layer_needs_unsafe_model_load(
    tmp_path: Path, models_dir: Path, run_main: RunCli
) -> None:
    import keras

    x = keras.Input(shape=(2,), name="x")
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2.0)(x))
    path = save(model, models_dir, "lambda")
    source = write_rows({"x": [[1.0, 2.0], [3.0, 4.0]]}, tmp_path / "l.parquet", "parquet")
    refused = run_main("predict", "--model", str(path), "--input_file", str(source))
    assert refused.returncode == 78
    assert "--unsafe_model_load" in refused.stderr
    allowed = run_main(
        "predict", "--model", str(path), "--input_file", str(source), "--unsafe_model_load"
    )
    assert allowed.returncode == 0, allowed.stderr
    out = pq.read_table(tmp_path / "l.predictions.parquet")
    assert out.column("prediction").to_pylist() == [[2.0, 4.0], [6.0, 8.0]]


def test_validate_lists_every_problem(
    tmp_path: Path, customer_model: Path, run_main: RunCli
) -> None:
    data = customer_data(4)
    data["history"] = np.ones((4, 4))  # one value short in every row
    data["clicks"] = np.ones((4, 3, 2))  # wrong outer length
    source = write_rows(data, tmp_path / "bad.parquet", "parquet")
    result = run_main("validate", "--model", str(customer_model), "--input_file", str(source))
    assert result.returncode == 65
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2, result.stdout
    history = next(p for p in problems if "column 'history'" in p)
    assert "4 of 4 rows checked are bad; first, row 1: list of length 4" in history
    clicks = next(p for p in problems if "column 'clicks'" in p)
    assert "first, row 1: list of length 3" in clicks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        # `segment` (width 3) cannot take 2 names, so `churn` (width 1, sigmoid) is labelled
        (["--class_names", "a,b"], 0, None),
        (["--threshold", "0.3"], 0, None),
        (["--class_names", "a,b,c,d"], 78, "its outputs: churn (width 1), segment (width 3)"),
    ],
)
def test_label_options_on_two_outputs_label_the_one_that_fits(
    args: list[str],
    code: int,
    message: str | None,
    tmp_path: Path,
    customer_model: Path,
    run_main: RunCli,
) -> None:
    data = customer_data(9)
    source = write_rows(data, tmp_path / "c.parquet", "parquet")
    out = tmp_path / "o.parquet"
    result = run_main(
        "predict", "--model", str(customer_model), "--input_file", str(source),
        "--output_file", str(out), *args,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    if message is not None:
        assert message in result.stderr
        assert not out.exists()
        return
    table = pq.read_table(out)
    assert table.column_names == ["customer_id", "churn", "segment", "label", "score"]
    churn = as_array(table.column("churn"))
    cut = 0.3 if "--threshold" in args else 0.5
    expected = [("b" if p >= cut else "a") for p in churn]
    assert table.column("label").to_pylist() == (
        expected if "--class_names" in args else [int(p >= cut) for p in churn]
    )
