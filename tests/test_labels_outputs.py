"""Labels on models with several outputs, the names of the label, score and output columns,
and output formats that contradict the output file's extension, through the CLI in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchpredict.errors import UsageError
from conftest import (
    Completed,
    make_frame,
    read_with_library,
    reference_predictions,
    write_with_library,
)

RunMain = Callable[..., Completed]
FEATURES = ["f0", "f1", "f2", "f3"]
KIND_NAMES = ["apple", "pear", "plum"]


@pytest.fixture(scope="session")
def list_model(models_dir: Path) -> Path:
    """Outputs returned as a LIST: `score` (width 1, sigmoid) and `kind` (width 3, softmax)."""
    import keras

    keras.utils.set_random_seed(11)
    features = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(8, activation="tanh")(features)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(hidden)
    path = models_dir / "labels_list.keras"
    keras.Model(features, [score, kind]).save(path)
    return path


@pytest.fixture(scope="session")
def dict_model(models_dir: Path) -> Path:
    """Dict outputs `p` (width 1, sigmoid), `pair` (width 2, softmax) and `emb` (width 3):
    for two class names both `p` and `pair` fit."""
    import keras

    keras.utils.set_random_seed(12)
    features = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(features)
    outputs = {
        "p": keras.layers.Dense(1, activation="sigmoid", name="p")(hidden),
        "pair": keras.layers.Dense(2, activation="softmax", name="pair")(hidden),
        "emb": keras.layers.Dense(3, name="emb")(hidden),
    }
    path = models_dir / "labels_dict.keras"
    keras.Model(features, outputs).save(path)
    return path


def direct(model_path: Path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The model loaded back and called directly, its outputs by the layer or key names."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    result = model(frame[FEATURES].to_numpy(np.float32), training=False)
    if isinstance(result, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in result.items()}
    return {
        name: keras.ops.convert_to_numpy(v)
        for name, v in zip(model.output_names, result, strict=True)
    }


def predict(run_main: RunMain, model: Path, source: Path, *args: str) -> Completed:
    return run_main(
        "predict", "--model", str(model), "--input_file", str(source),
        "--features", ",".join(FEATURES), "--batch_size", "16", *args,
    )  # fmt: skip


def error_of(result: Completed) -> str:
    return str(next(line["error"] for line in result.log_lines() if "error" in line))


def threshold_labels(
    probability: np.ndarray, names: list[str], cut: float
) -> tuple[list[str], np.ndarray]:
    positive = probability >= cut
    return [names[int(p)] for p in positive], np.where(positive, probability, 1 - probability)


# -- choosing the output to label ---------------------------------------------------------------


def test_class_names_label_the_only_output_of_their_width(
    tmp_path: Path, list_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(41, seed=1)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    out = tmp_path / "o.csv"
    result = predict(
        run_main, list_model, source, "--output_file", str(out),
        "--class_names", ",".join(KIND_NAMES), "--score_column", "kind_score",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = read_with_library(out, "csv")
    assert list(table.columns) == [
        "id", "segment", "score", "kind_0", "kind_1", "kind_2", "label", "kind_score",
    ]  # fmt: skip
    expected = direct(list_model, frame)
    kind = expected["kind"]
    assert table["label"].tolist() == [KIND_NAMES[i] for i in kind.argmax(axis=1)]
    np.testing.assert_allclose(table["kind_score"], kind.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(table["score"], expected["score"].reshape(-1), rtol=1e-5)
    started = next(line for line in result.log_lines() if line["event"] == "run started")
    assert started["label_output"] == "kind"


@pytest.mark.parametrize("cut", [None, 0.7])
def test_two_class_names_label_the_sigmoid_output(
    cut: float | None, tmp_path: Path, list_model: Path, run_main: RunMain
) -> None:
    """`kind` (width 3) cannot take 2 names, so `score` (width 1) is labelled, by the
    threshold given or 0.5."""
    frame = make_frame(40, seed=2)
    source = write_with_library(frame, tmp_path / "d.csv", "csv")
    out = tmp_path / "o.parquet"
    extra = ["--threshold", str(cut)] if cut is not None else []
    result = predict(
        run_main, list_model, source, "--output_file", str(out), "--class_names", "no,yes",
        "--score_column", "confidence", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "segment", "score", "kind", "label", "confidence"]
    probability = direct(list_model, frame)["score"].reshape(-1)
    labels, confidence = threshold_labels(probability, ["no", "yes"], cut or 0.5)
    assert table.column("label").to_pylist() == labels
    assert len(set(labels)) == 2, "the data should reach both labels"
    np.testing.assert_allclose(table.column("confidence").to_numpy(), confidence, rtol=1e-5)


def test_label_output_picks_the_output_explicitly(
    tmp_path: Path, dict_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(30, seed=3)
    source = write_with_library(frame, tmp_path / "d.jsonl", "jsonl")
    out = tmp_path / "o.parquet"
    result = predict(
        run_main, dict_model, source, "--output_file", str(out),
        "--class_names", "left,right", "--label_output", "pair",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "segment", "p", "pair", "emb", "label", "score"]
    pair = direct(dict_model, frame)["pair"]
    assert table.column("label").to_pylist() == [["left", "right"][i] for i in pair.argmax(1)]
    np.testing.assert_allclose(table.column("score").to_numpy(), pair.max(axis=1), rtol=1e-5)


def test_threshold_alone_labels_the_only_width_1_output(
    tmp_path: Path, dict_model: Path, run_main: RunMain
) -> None:
    frame = make_frame(30, seed=4)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    out = tmp_path / "o.parquet"
    result = predict(run_main, dict_model, source, "--output_file", str(out), "--threshold", "0.4")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    probability = direct(dict_model, frame)["p"].reshape(-1)
    assert table.column("label").to_pylist() == (probability >= 0.4).astype(int).tolist()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (
            ["--class_names", "a,b"],
            78,
            ["more than one output", "p (width 1), pair (width 2)", "--label_output"],
        ),
        (
            ["--class_names", "a,b,c,d"],
            78,
            ["4 --class_names", "no output", "p (width 1), pair (width 2), emb (width 3)"],
        ),
        (["--class_names", "a,b", "--label_output", "emb"], 78, ["'emb' has width 3"]),
        (
            ["--class_names", "a,b", "--label_output", "nope"],
            78,
            ["--label_output 'nope'", "p (width 1), pair (width 2), emb (width 3)"],
        ),
        (["--label_output", "pair"], 2, ["--label_output needs --class_names"]),
        (["--class_names", "a,b,c", "--threshold", "0.3"], 2, ["--class_names has 3"]),
        (["--class_names", "a,b", "--label_column", "x", "--score_column", "x"], 2, ["both 'x'"]),
    ],
)
def test_labelling_that_cannot_work_fails_naming_the_candidates(
    args: list[str], code: int, says: list[str], tmp_path: Path, dict_model: Path, run_main: RunMain
) -> None:
    source = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    result = predict(run_main, dict_model, source, *args)
    assert result.returncode == code, result.stderr
    message = error_of(result)
    for text in says:
        assert text in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


# -- label and score columns beside kept columns ------------------------------------------------


def test_label_and_score_columns_renamed_beside_a_kept_label_column(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    """The training label stays in the output beside the predicted one."""
    frame = make_frame(50, seed=5).assign(label=lambda f: np.where(f.f0 > 0, "sick", "well"))
    source = write_with_library(frame, tmp_path / "d.avro", "avro")
    out = tmp_path / "o.csv"
    result = predict(
        run_main, mlp_model, source, "--output_file", str(out), "--class_names", "well,sick",
        "--label_column", "predicted", "--score_column", "confidence",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = read_with_library(out, "csv")
    assert list(table.columns) == [
        "id", "segment", "label", "prediction", "predicted", "confidence",
    ]  # fmt: skip
    assert table["label"].tolist() == frame["label"].tolist()
    probability = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
    labels, confidence = threshold_labels(probability, ["well", "sick"], 0.5)
    assert table["predicted"].tolist() == labels
    np.testing.assert_allclose(table["confidence"], confidence, rtol=1e-5)


@pytest.mark.parametrize(
    ("model", "column", "args", "code", "says"),
    [
        # the input's own column, kept by default: found with the data's columns
        ("mlp", "label", ["--class_names", "a,b"], 65, ["'label'", "--label_column"]),
        ("mlp", "score", ["--class_names", "a,b"], 65, ["'score'", "--score_column"]),
        ("mlp", "prediction", [], 65, ["'prediction'", "--prediction_column"]),
        ("list", "kind", [], 65, ["model output 'kind'"]),
        ("list", "kind_1", ["--output_format", "csv"], 65, ["'kind_1'", "model output 'kind'"]),
        # named by --keep_columns: refused before any data is read
        (
            "mlp",
            "label",
            ["--class_names", "a,b", "--keep_columns", "id,label"],
            2,
            ["--keep_columns: output column 'label'", "--label_column"],
        ),
        (
            "list",
            "kind",
            ["--keep_columns", "kind"],
            2,
            ["--keep_columns: output column 'kind'", "model output 'kind'"],
        ),
    ],
)
def test_kept_column_clash_names_the_option_that_renames_it(
    model: str,
    column: str,
    args: list[str],
    code: int,
    says: list[str],
    tmp_path: Path,
    mlp_model: Path,
    list_model: Path,
    run_main: RunMain,
) -> None:
    frame = make_frame(6).assign(**{column: "x"})
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    path = {"mlp": mlp_model, "list": list_model}[model]
    out = tmp_path / ("o.out" if "--output_format" in args else "o.parquet")
    result = predict(run_main, path, source, "--output_file", str(out), *args)
    assert result.returncode == code, result.stderr
    message = error_of(result)
    for text in [*says, "leave the input column out with --keep_columns"]:
        assert text in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


@pytest.mark.parametrize(
    ("model", "args", "says"),
    [
        # the list model's output `score` is the default name of the score column
        ("list", ["--class_names", "a,b,c"], ["'score'", "model output 'score'", "--score_column"]),
        (
            "mlp",
            ["--class_names", "a,b", "--prediction_column", "label"],
            ["'label'", "--label_column", "--prediction_column"],
        ),
    ],
)
def test_prediction_columns_of_one_name_are_refused_before_reading(
    model: str,
    args: list[str],
    says: list[str],
    tmp_path: Path,
    mlp_model: Path,
    list_model: Path,
    run_main: RunMain,
) -> None:
    # A header only: were it read, the run would fail with 66 (no data rows) instead.
    empty = tmp_path / "empty.csv"
    empty.write_text("f0,f1,f2,f3\n")
    path = {"mlp": mlp_model, "list": list_model}[model]
    result = run_main(
        "predict", "--model", str(path), "--input_file", str(empty), "--output_file",
        str(tmp_path / "o.csv"), *args,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = error_of(result)
    for text in says:
        assert text in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv"]


# -- list outputs take the model's names ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_list_outputs_are_named_as_inspect_shows_them(
    fmt: str, tmp_path: Path, list_model: Path, run_main: RunMain
) -> None:
    inspected = run_main("inspect", "--model", str(list_model))
    assert inspected.returncode == 0, inspected.stderr
    outputs = [line for line in inspected.stdout.splitlines() if line.startswith("output ")]
    assert outputs == [
        "output score: float32 [?, 1]",
        "output kind: float32 [?, 3]",
        "output structure: list",
    ]
    frame = make_frame(33, seed=6)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    out = tmp_path / f"o.{fmt}"
    result = predict(run_main, list_model, source, "--output_file", str(out))
    assert result.returncode == 0, result.stderr
    expected = direct(list_model, frame)
    if fmt == "csv":
        table = read_with_library(out, "csv")
        assert list(table.columns) == ["id", "segment", "score", "kind_0", "kind_1", "kind_2"]
        kind = table[["kind_0", "kind_1", "kind_2"]].to_numpy()
    else:
        table = pq.read_table(out).to_pandas()
        assert list(table.columns) == ["id", "segment", "score", "kind"]
        kind = np.array(table["kind"].tolist())
    np.testing.assert_allclose(table["score"], expected["score"].reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(kind, expected["kind"], rtol=1e-5)


# -- output format against the output file's extension ------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "says"),
    [
        ("x.parquet", "csv", "has the extension of parquet but --output_format is csv"),
        ("x.csv.gz", "parquet", "has the extension of csv but --output_format is parquet"),
        ("x.tsv", "jsonl", "has the extension of tsv but --output_format is jsonl"),
        ("x.parquet.gz", "parquet", "parquet files are compressed internally"),
    ],
)
def test_output_format_contradicting_the_extension_is_refused_first(
    name: str, fmt: str, says: str, tmp_path: Path, run_main: RunMain
) -> None:
    """Refused before the model is loaded or an input read: neither exists here."""
    result = run_main(
        "predict", "--model", str(tmp_path / "no-model.keras"),
        "--input_file", str(tmp_path / "no-input.csv"),
        "--output_file", str(tmp_path / name), "--output_format", fmt,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = error_of(result)
    assert says in message
    assert str(tmp_path / name) in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "fmt", "read"),
    [
        ("scores.out", "csv", lambda p: read_with_library(p, "csv")),
        ("scores.pq", "parquet", lambda p: pq.read_table(p).to_pandas()),
        ("scores.json", "jsonl", lambda p: read_with_library(p, "jsonl")),
    ],
)
def test_output_format_that_agrees_or_an_unknown_extension_is_written(
    name: str,
    fmt: str,
    read: Callable[[Path], Any],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    frame = make_frame(12, seed=7)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    out = tmp_path / name
    result = predict(run_main, mlp_model, source, "--output_file", str(out), "--output_format", fmt)
    assert result.returncode == 0, result.stderr
    table = read(out)
    assert list(table.columns) == ["id", "segment", "prediction"]
    assert table["id"].tolist() == frame["id"].tolist()


def test_output_format_to_stdout(tmp_path: Path, mlp_model: Path, run_main: RunMain) -> None:
    frame = make_frame(7, seed=8)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    result = predict(run_main, mlp_model, source, "--output_file", "-", "--output_format", "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '"id","segment","prediction"'
    assert len(lines) == 1 + len(frame)


def test_python_api_takes_the_label_options(list_model: Path) -> None:
    import batchpredict

    frame = make_frame(9, seed=9)
    predictor = batchpredict.load_predictor(
        str(list_model), class_names=tuple(KIND_NAMES), label_column="fruit", score_column="p"
    )
    scored = predictor.predict_frame(frame, features=FEATURES, keep_columns=["id"])
    assert list(scored.columns) == ["id", "score", "kind", "fruit", "p"]
    kind = direct(list_model, frame)["kind"]
    assert scored["fruit"].tolist() == [KIND_NAMES[i] for i in kind.argmax(axis=1)]
    with pytest.raises(UsageError, match="--score_column"):
        batchpredict.load_predictor(str(list_model), class_names=tuple(KIND_NAMES))
