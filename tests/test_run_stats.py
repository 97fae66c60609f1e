"""Run statistics and drift: the stats file of real runs of a saved model over real files,
checked against NumPy over the same data; drift against a baseline trips --max_drift."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchpredict.drift import compare
from batchpredict.run_stats import QUANTILES, RunStats
from conftest import N_FEATURES, make_frame, read_with_library, write_with_library
from stores import Store

FEATURES = ",".join(f"f{j}" for j in range(N_FEATURES))


def _in(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    return folder


def _stats(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _column(document: dict[str, Any], name: str) -> dict[str, Any]:
    columns = document["features"] + document["predictions"]
    return next(c for c in columns if c["name"] == name)


def _rank(values: np.ndarray, value: float) -> float:
    """The normalized rank of `value` among `values` (share at or below it)."""
    return float(np.searchsorted(np.sort(values), value, side="right")) / len(values)


@pytest.fixture
def day(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = make_frame(20_000, seed=3)
    return write_with_library(frame, tmp_path / "day.parquet", "parquet"), frame


def test_stats_file_matches_numpy_within_the_sketch_rank_error(
    run_main: Callable[..., Any], mlp_model: Path, day: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    data, frame = day
    stats_file = tmp_path / "stats.json"
    out = tmp_path / "out.parquet"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data), "--features", FEATURES,
        "--output_file", str(out), "--stats_file", str(stats_file), "--chunk_size", "3000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = _stats(stats_file)
    assert document["stats_version"] == 1 and document["kind"] == "run"
    digest = hashlib.sha256(mlp_model.read_bytes()).hexdigest()
    assert document["model"] == {"path": str(mlp_model), "sha256": digest}
    assert document["rows"] == {"read": 20_000, "written": 20_000, "rejected": 0}
    assert [c["name"] for c in document["features"]] == FEATURES.split(",")
    predictions = read_with_library(out, "parquet")["prediction"].to_numpy()
    for name, values in [(f"f{j}", frame[f"f{j}"].to_numpy()) for j in range(N_FEATURES)] + [
        ("prediction", predictions.astype(np.float64))
    ]:
        column = _column(document, name)
        assert column["count"] == len(values) and column["nulls"] == 0
        assert column["mean"] == pytest.approx(values.mean(), rel=1e-6, abs=1e-9)
        assert column["std"] == pytest.approx(values.std(), rel=1e-6)
        assert (column["min"], column["max"]) == (values.min(), values.max())
        error = column["quantile_rank_error"]
        assert 0 < error < 0.01
        for key, rank in QUANTILES.items():
            assert abs(_rank(values, column["quantiles"][key]) - rank) <= error, (name, key)
        histogram = column["histogram"]
        assert len(histogram["edges"]) == 21 and len(histogram["counts"]) == 20
        assert sum(histogram["counts"]) == column["count"]
        exact, _ = np.histogram(values, bins=histogram["edges"])
        assert np.abs(np.asarray(histogram["counts"]) - exact).max() <= 2 * error * len(values)


def test_nulls_and_rejected_rows_are_counted_per_column(
    run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path
) -> None:
    frame = make_frame(50, seed=4)
    frame.loc[[3, 7], "f1"] = np.nan
    data = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    stats_file = tmp_path / "stats.json"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data), "--features", FEATURES,
        "--output_file", str(tmp_path / "o.parquet"), "--stats_file", str(stats_file),
        "--on_error", "skip", "--max_error_rate", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = _stats(stats_file)
    f1 = _column(document, "f1")
    assert (f1["count"], f1["nulls"], f1["rejected"]) == (48, 2, 2)
    f0 = _column(document, "f0")
    assert (f0["count"], f0["nulls"], f0["rejected"]) == (48, 0, 0)  # the kept rows only
    assert f0["mean"] == pytest.approx(frame["f0"].drop([3, 7]).mean())
    assert document["rows"] == {"read": 50, "written": 48, "rejected": 2}


def test_labels_are_counted_and_the_summary_keeps_compact_stats(
    run_main: Callable[..., Any], mlp_model: Path, day: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    data, _ = day
    out = tmp_path / "out.csv"
    summary = tmp_path / "summary.json"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data), "--features", FEATURES,
        "--output_file", str(out), "--class_names", "no,yes", "--summary_file", str(summary),
        "--stats_file", str(tmp_path / "stats.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = read_with_library(out, "csv")
    statistics = json.loads(summary.read_text())["statistics"]
    label = next(c for c in statistics["predictions"] if c["name"] == "label")
    assert label["kind"] == "label"
    assert label["labels"] == written["label"].value_counts().to_dict()
    assert label["count"] == 20_000
    score = next(c for c in statistics["predictions"] if c["name"] == "score")
    assert score["count"] == 20_000 and "sketch" not in score and "histogram" not in score


def test_string_columns_get_top_values_and_a_distinct_estimate() -> None:
    stats = RunStats()
    cities = ["Paris"] * 50 + ["Lyon"] * 30 + ["Nice"] * 15 + [None] * 5
    table = pa.table({"city": pa.array(cities), "x": pa.array(np.arange(100.0))})
    good = np.ones(100, dtype=bool)
    good[:10] = False  # ten Paris rows rejected, for another column
    stats.observe_read(table, good, [])
    other = RunStats()
    other.observe_read(pa.table({"city": ["Lyon", "Rome"], "x": [1.0, 2.0]}), None, [])
    stats.merge(other)
    (city, x), _ = stats.columns(["city", "x"])
    assert city["kind"] == "string" and city["nulls"] == 5
    assert city["count"] == 40 + 31 + 15 + 1
    assert city["top"][:3] == [
        {"value": "Paris", "count": 40},
        {"value": "Lyon", "count": 31},
        {"value": "Nice", "count": 15},
    ]
    assert city["distinct_estimate"] == pytest.approx(4, abs=0.1)
    assert x["count"] == 92


def test_merging_collectors_equals_one_over_all_the_data() -> None:
    rng = np.random.default_rng(7)
    tables = [
        pa.table({"a": rng.normal(size=n), "b": rng.exponential(size=n)}) for n in (5000, 7000)
    ]
    merged, whole = RunStats(), RunStats()
    for table in tables:
        part = RunStats()
        part.observe_read(table, None, [])
        part.observe_predictions({"out": table.column("a").to_numpy()[:, None]}, {"out": "p"})
        merged.merge(part)
    whole.observe_read(pa.concat_tables(tables), None, [])
    all_a = np.concatenate([t.column("a").to_numpy() for t in tables])
    whole.observe_predictions({"out": all_a[:, None]}, {"out": "p"})
    (one_features, one_predictions), (two_features, two_predictions) = (
        merged.columns(),
        whole.columns(),
    )
    for mine, theirs in zip(
        one_features + one_predictions, two_features + two_predictions, strict=True
    ):
        assert mine["count"] == theirs["count"] == 12_000
        for key in ("mean", "std"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-12)
        assert (mine["min"], mine["max"]) == (theirs["min"], theirs["max"])
        for key, value in mine["quantiles"].items():
            assert abs(value - theirs["quantiles"][key]) <= 0.05 * (theirs["max"] - theirs["min"])


def _profile(run_main: Callable[..., Any], model: Path, data: Path, stats_file: Path) -> None:
    result = run_main(
        "profile", "--model", str(model), "--input_file", str(data), "--features", FEATURES,
        "--stats_file", str(stats_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_profile_writes_a_baseline_and_writes_no_predictions(
    run_main: Callable[..., Any], mlp_model: Path, day: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    data, frame = day
    base = tmp_path / "base.json"
    _profile(run_main, mlp_model, data, base)
    document = _stats(base)
    assert document["kind"] == "profile" and document["drift"] is None
    assert document["model"]["sha256"] == hashlib.sha256(mlp_model.read_bytes()).hexdigest()
    assert document["rows"]["read"] == 20_000
    assert _column(document, "f2")["mean"] == pytest.approx(frame["f2"].mean())
    assert _column(document, "prediction")["count"] == 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json", "day.parquet"]


@pytest.fixture
def baseline(run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path) -> Path:
    data = write_with_library(make_frame(20_000, seed=5), tmp_path / "ref.parquet", "parquet")
    base = tmp_path / "base.json"
    _profile(run_main, mlp_model, data, base)
    return base


def _predict_dir(
    run_main: Callable[..., Any], model: Path, data: Path, out: Path, *options: str
) -> Any:
    return run_main(
        "predict", "--model", str(model), "--input_file", str(data), "--features", FEATURES,
        "--output_dir", str(out), *options,
    )  # fmt: skip


def test_an_unshifted_copy_does_not_drift(
    run_main: Callable[..., Any], mlp_model: Path, baseline: Path, tmp_path: Path
) -> None:
    data = write_with_library(make_frame(20_000, seed=5), _in(tmp_path) / "d.csv", "csv")
    out = tmp_path / "out"
    result = _predict_dir(
        run_main, mlp_model, data, out, "--baseline", str(baseline), "--max_drift", "0.1"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "_SUCCESS").exists() and (out / "d.csv").exists()
    drift = _stats(out / "_stats.json")["drift"]
    assert drift["exceeded"] == [] and drift["max_drift"] == 0.1 and drift["measure"] == "psi"
    assert {c["name"] for c in drift["columns"]} == {*FEATURES.split(","), "prediction"}
    assert all(c["psi"] < 0.02 and c["ks"] < 0.02 for c in drift["columns"])
    assert any(line.get("event") == "drift" for line in result.log_lines())


def test_a_shifted_copy_trips_max_drift_with_exit_3_and_no_success_marker(
    run_main: Callable[..., Any], mlp_model: Path, baseline: Path, tmp_path: Path
) -> None:
    frame = make_frame(20_000, seed=5)
    frame["f0"] += 1.0
    data = write_with_library(frame, _in(tmp_path) / "d.csv", "csv")
    out = tmp_path / "out"
    metrics = tmp_path / "job.prom"
    summary = tmp_path / "summary.json"
    result = _predict_dir(
        run_main, mlp_model, data, out, "--baseline", str(baseline), "--max_drift", "0.2",
        "--metrics_file", str(metrics), "--summary_file", str(summary),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "drift past --max_drift 0.2 in f0" in result.stderr
    assert not (out / "_SUCCESS").exists()
    assert len(read_with_library(out / "d.csv", "csv")) == 20_000  # written and valid
    assert (out / "_manifest.json").exists()
    drift = _stats(out / "_stats.json")["drift"]
    assert drift["exceeded"] == ["f0"] and drift["columns"][0]["name"] == "f0"
    assert drift["columns"][0]["psi"] > 0.2 and drift["columns"][0]["ks"] > 0.2
    text = metrics.read_text()
    assert 'batchpredict_drift{column="f0",job="batchpredict",measure="psi"}' in text
    assert "batchpredict_last_exit_code" in text
    reported = json.loads(summary.read_text())
    assert (reported["status"], reported["exit_code"]) == ("drifted", 3)
    # The next run of the job reads its metrics file back.
    again = _predict_dir(run_main, mlp_model, data, out, "--metrics_file", str(metrics))
    assert again.returncode == 0, again.stderr


def test_a_baseline_of_other_columns_is_refused_before_reading(
    run_main: Callable[..., Any], mlp_model: Path, baseline: Path, tmp_path: Path
) -> None:
    document = _stats(baseline)
    document["features"][0]["name"] = "other"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(document))
    data = write_with_library(make_frame(100), _in(tmp_path) / "d.csv", "csv")
    result = _predict_dir(run_main, mlp_model, data, tmp_path / "out", "--baseline", str(wrong))
    assert result.returncode == 2
    assert "lacks feature column(s) f0" in result.stderr
    assert not (tmp_path / "out" / "d.csv").exists()
    wrong.write_text("{}")
    result = _predict_dir(run_main, mlp_model, data, tmp_path / "out", "--baseline", str(wrong))
    assert result.returncode == 65 and "not a stats file" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max_drift", "0.2"], "--max_drift needs --baseline"),
        (["--stats_file", "-"], "--stats_file must be a path or URI"),
    ],
)
def test_statistics_options_that_cannot_work_are_usage_errors(
    run_main: Callable[..., Any], tmp_path: Path, options: list[str], message: str
) -> None:
    result = run_main(
        "predict", "--model", "m.keras", "--input_file", "a.csv", "--output_dir",
        str(tmp_path / "o"), *options,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr


def test_without_statistics_options_none_are_gathered(
    run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path
) -> None:
    data = write_with_library(make_frame(100), _in(tmp_path) / "d.csv", "csv")
    summary = tmp_path / "summary.json"
    result = _predict_dir(
        run_main, mlp_model, data, tmp_path / "out", "--summary_file", str(summary)
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out" / "_stats.json").exists()
    assert (tmp_path / "out" / "_SUCCESS").exists()
    reported = json.loads(summary.read_text())
    assert reported["statistics"] is None and reported["drift"] is None


def test_drift_of_categories_uses_the_baseline_labels() -> None:
    def labelled(counts: dict[str, int]) -> dict[str, Any]:
        column = {"name": "label", "kind": "label", "count": sum(counts.values())}
        return {"features": [], "predictions": [{**column, "labels": counts}]}

    same = compare(
        labelled({"a": 50, "b": 50}), labelled({"a": 5, "b": 5}), where="b", max_drift=0.1
    )
    assert same["columns"][0]["psi"] == pytest.approx(0.0) and same["exceeded"] == []
    moved = compare(
        labelled({"a": 50, "b": 50}), labelled({"a": 9, "c": 1}), where="b", max_drift=0.1
    )
    assert moved["exceeded"] == ["label"] and moved["columns"][0]["ks"] is None


def test_stats_file_in_object_storage(
    run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path, store: Store
) -> None:
    name = store.new_bucket()
    data = write_with_library(make_frame(500), tmp_path / "d.parquet", "parquet")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data), "--features", FEATURES,
        "--output_file", str(tmp_path / "o.parquet"),
        "--stats_file", store.uri(name, "stats/a.json"), env=store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(store.get(name, "stats/a.json"))["rows"]["read"] == 500


def test_the_library_profiles_and_raises_drift_error_after_committing(
    mlp_model: Path, tmp_path: Path
) -> None:
    import batchpredict
    from batchpredict.errors import DriftError, ExitCode

    reference = write_with_library(make_frame(5000, seed=8), tmp_path / "ref.parquet", "parquet")
    base = str(tmp_path / "base.json")
    document = batchpredict.profile(str(mlp_model), str(reference), base, features=FEATURES)
    assert document["kind"] == "profile" and _stats(Path(base))["rows"]["read"] == 5000
    frame = make_frame(5000, seed=8)
    frame["f3"] = frame["f3"] * 3
    data = write_with_library(frame, _in(tmp_path) / "d.parquet", "parquet")
    out = tmp_path / "out"
    with pytest.raises(DriftError) as raised:
        batchpredict.predict(
            str(mlp_model), str(data), output_dir=str(out), features=FEATURES,
            baseline=base, max_drift=0.25,
        )  # fmt: skip
    assert raised.value.exit_code == ExitCode.DRIFT == 3
    summary = raised.value.summary
    assert isinstance(summary, batchpredict.RunSummary)
    assert summary.drifted[0] == "f3" and summary.rows_out == 5000  # f3 moved most
    assert (out / "d.parquet").exists() and not (out / "_SUCCESS").exists()


def test_profile_takes_the_prediction_column_options_of_predict(
    run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path
) -> None:
    data = write_with_library(make_frame(3000, seed=9), _in(tmp_path) / "d.parquet", "parquet")
    base = tmp_path / "base.json"
    labels = ("--class_names", "no,yes", "--score_column", "p_label")
    result = run_main(
        "profile", "--model", str(mlp_model), "--input_file", str(data), "--features", FEATURES,
        "--stats_file", str(base), *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = [c["name"] for c in _stats(base)["predictions"]]
    assert names == ["prediction", "label", "p_label"]
    out = tmp_path / "out"
    result = _predict_dir(run_main, mlp_model, data, out, "--baseline", str(base), *labels)
    assert result.returncode == 0, result.stderr
    drift = _stats(out / "_stats.json")["drift"]
    label = next(c for c in drift["columns"] if c["name"] == "label")
    assert label["psi"] == pytest.approx(0.0, abs=1e-9) and label["ks"] is None
