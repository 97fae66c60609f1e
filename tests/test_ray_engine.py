"""`--engine ray`: the same predictions as the local engine, on a local Ray of two CPUs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import batchpredict
from batchpredict.errors import DataError
from conftest import (
    EXTENSIONS,
    FORMATS,
    N_FEATURES,
    Completed,
    make_frame,
    read_with_library,
    reference_predictions,
    write_with_library,
)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RunCli = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """One local Ray for the module, as CI runs it: two CPUs, no dashboard; its address."""
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield str(context.address_info["gcs_address"])
    ray.shutdown()


def parts(folder: Path, fmt: str) -> pd.DataFrame:
    """Every part file of a Ray run, in part order, as one frame."""
    files = sorted(folder.glob(f"part-*{EXTENSIONS[fmt]}"))
    assert files, f"no part files in {folder}"
    return pd.concat([read_with_library(f, fmt) for f in files], ignore_index=True)


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("fmt", FORMATS)
def test_ray_predictions_equal_the_local_engines(fmt: str, tmp_path: Path, mlp_model: Path) -> None:
    frame = make_frame(2500, seed=21)
    inputs = tmp_path / "in"
    inputs.mkdir()
    # Two files, so that there are several read tasks and parts.
    write_with_library(frame.iloc[:1200], inputs / f"a{EXTENSIONS[fmt]}", fmt)
    write_with_library(frame.iloc[1200:], inputs / f"b{EXTENSIONS[fmt]}", fmt)
    options: dict[str, Any] = {"keep_columns": ["id", "segment"], "chunk_size": 500}
    batchpredict.predict(
        model=str(mlp_model), input_file=str(inputs), output_dir=str(tmp_path / "local"), **options
    )
    summary = batchpredict.predict(
        model=str(mlp_model),
        input_file=str(inputs),
        output_dir=str(tmp_path / "ray"),
        engine="ray",
        preserve_order=True,
        **options,
    )
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (2500, 2500, 0)
    local = pd.concat(
        [read_with_library(tmp_path / "local" / f"{n}{EXTENSIONS[fmt]}", fmt) for n in "ab"],
        ignore_index=True,
    )
    on_ray = parts(tmp_path / "ray", fmt)
    assert on_ray["id"].tolist() == local["id"].tolist() == frame["id"].tolist()
    assert on_ray["segment"].tolist() == local["segment"].tolist()
    np.testing.assert_allclose(on_ray["prediction"], local["prediction"], rtol=1e-6, atol=1e-7)
    expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(on_ray["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ray" / "_SUCCESS").exists()
    manifest = json.loads((tmp_path / "ray" / "_manifest.json").read_text())
    assert manifest["engine"] == "ray" and manifest["model"]["sha256"]
    assert sum(output["rows"] for output in manifest["outputs"]) == 2500
    # Each part names the one input its rows came from, the parts in input order.
    sources = [[i["path"] for i in output["inputs"]] for output in manifest["outputs"]]
    assert all(len(paths) == 1 for paths in sources)
    assert [Path(paths[0]).stem for paths in sources] == sorted(
        Path(paths[0]).stem for paths in sources
    )
    assert {Path(paths[0]).stem for paths in sources} == {"a", "b"}
    assert all(len(output["sha256"]) == 64 for output in manifest["outputs"])
    assert manifest["made_with"] and manifest["versions"]["pyarrow"]
    assert batchpredict.verify(str(tmp_path / "ray")).ok
    assert not (tmp_path / "ray" / "_temporary").exists()


@pytest.mark.usefixtures("local_ray")
def test_ray_bad_rows_go_to_one_rejects_file(tmp_path: Path, mlp_model: Path) -> None:
    frame = make_frame(300, seed=5)
    source = tmp_path / "d.csv"
    write_with_library(frame, source, "csv")
    lines = source.read_text().splitlines()
    fields = lines[10].split(",")
    lines[10] = ",".join([*fields[:2], "", *fields[3:]])  # row 10 without f1: a bad row
    lines.insert(50, "1,2,3")  # a row with too few fields
    source.write_text("\n".join(lines) + "\n")
    summary = batchpredict.predict(
        model=str(mlp_model),
        input_file=str(source),
        output_dir=str(tmp_path / "out"),
        keep_columns=["id", "segment"],
        engine="ray",
        on_error="skip",
        max_error_rate=0.05,
    )
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (301, 299, 2)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "_rejects.jsonl").open()]
    assert sorted(r["row"] for r in rejects) == [10, 50]
    assert {r["source"] for r in rejects} == {str(source)}
    written = parts(tmp_path / "out", "csv")
    assert len(written) == 299 and 10 not in written["id"].tolist()


@pytest.mark.usefixtures("local_ray")
def test_ray_bad_row_fails_the_run_and_commits_nothing(tmp_path: Path, mlp_model: Path) -> None:
    frame = make_frame(100, seed=6)
    frame.loc[40, "f2"] = None  # a missing feature: a bad row without --fill_value
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.parquet").write_text("previous run")
    with pytest.raises(DataError) as raised:
        batchpredict.predict(
            model=str(mlp_model),
            input_file=str(source),
            output_dir=str(out),
            keep_columns=["id"],
            engine="ray",
        )
    # The actor's own error, not Ray's traceback around it.
    assert str(raised.value).startswith(f"{source}: row 41, column 'f2': ")
    assert "\n" not in str(raised.value) and "ray::" not in str(raised.value)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    assert (out / "part-00000.parquet").read_text() == "previous run"


def _stats_columns(path: Path) -> dict[str, dict[str, Any]]:
    """The features and predictions of a stats file by name, without their sketches."""
    document = json.loads(path.read_text())
    return {
        column["name"]: {k: v for k, v in column.items() if k in ("count", "nulls", "mean", "std")}
        for column in [*document["features"], *document["predictions"]]
    }


@pytest.mark.usefixtures("local_ray")
def test_ray_statistics_equal_the_local_engines_and_drift_is_checked(
    tmp_path: Path, mlp_model: Path
) -> None:
    frame = make_frame(3000, seed=31)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_with_library(frame.iloc[:1400], inputs / "a.parquet", "parquet")
    write_with_library(frame.iloc[1400:], inputs / "b.parquet", "parquet")
    options: dict[str, Any] = {"features": FEATURES, "chunk_size": 500}
    local_stats = tmp_path / "local.json"
    batchpredict.predict(
        model=str(mlp_model), input_file=str(inputs), output_dir=str(tmp_path / "local"),
        stats_file=str(local_stats), **options,
    )  # fmt: skip
    summary = batchpredict.predict(
        model=str(mlp_model), input_file=str(inputs), output_dir=str(tmp_path / "ray"),
        engine="ray", stats_file=str(tmp_path / "ray.json"), baseline=str(local_stats),
        max_drift=0.1, **options,
    )  # fmt: skip
    on_ray, local = _stats_columns(tmp_path / "ray.json"), _stats_columns(local_stats)
    assert list(on_ray) == list(local) == [*FEATURES, "prediction"]
    for name, column in local.items():
        assert on_ray[name]["count"] == column["count"] == 3000
        assert on_ray[name]["nulls"] == column["nulls"]
        assert on_ray[name]["mean"] == pytest.approx(column["mean"], rel=1e-9, abs=1e-12)
        assert on_ray[name]["std"] == pytest.approx(column["std"], rel=1e-9)
    assert json.loads((tmp_path / "ray" / "_stats.json").read_text())["rows"]["read"] == 3000
    assert summary.drift is not None and summary.drift["exceeded"] == []
    assert (tmp_path / "ray" / "_SUCCESS").exists()


@pytest.mark.usefixtures("local_ray")
def test_ray_drift_past_max_drift_commits_the_parts_without_success(
    tmp_path: Path, mlp_model: Path
) -> None:
    from batchpredict.errors import DriftError

    baseline = str(tmp_path / "base.json")
    reference = write_with_library(make_frame(2000, seed=8), tmp_path / "ref.parquet", "parquet")
    batchpredict.profile(str(mlp_model), str(reference), baseline, features=FEATURES)
    frame = make_frame(2000, seed=8)
    frame["f3"] = frame["f3"] * 3
    data = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    out = tmp_path / "out"
    with pytest.raises(DriftError) as raised:
        batchpredict.predict(
            str(mlp_model), str(data), output_dir=str(out), features=FEATURES,
            engine="ray", baseline=baseline, max_drift=0.25,
        )  # fmt: skip
    assert raised.value.summary.drifted[0] == "f3"
    assert len(parts(out, "parquet")) == 2000 and (out / "_manifest.json").exists()
    assert (out / "_stats.json").exists() and not (out / "_SUCCESS").exists()


def test_cli_joins_a_running_ray(
    local_ray: str, tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    frame = make_frame(400, seed=8)
    source = write_with_library(frame, tmp_path / "d.jsonl", "jsonl")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_dir", str(tmp_path / "out"), "--keep_columns", "id,segment",
        "--engine", "ray", "--ray_address", "auto", "--output_format", "avro",
        "--ray_concurrency", "1", "--ray_gpus_per_worker", "0",
        # `auto` takes the cluster RAY_ADDRESS names: this module's, not another Ray on the
        # machine (another test worker's, another user's), which `auto` could join instead.
        env={"RAY_ADDRESS": local_ray},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.log_lines()
    assert lines[0]["event"] == "run started" and lines[-1]["event"] == "run finished"
    started = next(line for line in lines if line["event"] == "ray engine started")
    assert (started["actors"], started["gpus_per_actor"]) == (1, 0.0)
    assert started["cluster_cpus"] == 2
    written = parts(tmp_path / "out", "avro").sort_values("id", ignore_index=True)
    assert written["id"].tolist() == frame["id"].tolist()
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    ("resources", "gpus", "actors"),
    [
        ({"CPU": 2.0}, 0.0, 1),
        ({"CPU": 16.0}, 0.0, 4),
        ({"CPU": 16.0, "GPU": 4.0}, 1.0, 4),
        ({"CPU": 16.0, "GPU": 4.0}, 0.5, 8),
    ],
)
def test_default_actors_one_per_gpu_else_one_per_four_cpus(
    resources: dict[str, float], gpus: float, actors: int
) -> None:
    from batchpredict.ray_engine import _default_concurrency

    assert _default_concurrency(resources, gpus) == actors


def test_a_model_an_actor_cannot_load_exits_78_with_one_json_line_on_stderr(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """A real process: Ray's core writes to file descriptor 2 as it starts, past Python."""
    broken = tmp_path / "broken.keras"
    broken.write_text("not a model")
    source = write_with_library(make_frame(10), tmp_path / "d.csv", "csv")
    result = run_cli(
        "predict", "--model", str(broken), "--input_file", str(source),
        "--output_dir", str(tmp_path / "out"), "--engine", "ray", "--log_format", "json",
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("{") for line in lines), lines  # nothing but our log lines
    failed = json.loads(lines[-1])
    assert failed["error"].startswith(f"cannot load Keras model {broken}")
    assert "\n" not in failed["error"] and "ray::" not in failed["error"]
    assert not (tmp_path / "out").exists()


def test_without_ray_the_engine_exits_78_with_the_install_hint(
    tmp_path: Path, mlp_model: Path, run_cli: RunCli
) -> None:
    hidden = tmp_path / "no_ray"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    source = write_with_library(make_frame(10), tmp_path / "d.csv", "csv")
    result = run_cli(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_dir", str(tmp_path / "out"), "--engine", "ray",
        env={"PYTHONPATH": str(hidden)},
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert "pip install 'batchpredict[ray]'" in result.stderr


def test_the_workers_get_the_runs_s3_endpoint_and_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--s3_endpoint_url` reaches Ray's workers through the run's runtime environment,
    without this process's environment being changed for it."""
    from batchpredict import ray_engine
    from batchpredict.config import RunConfig

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-workers")
    config = RunConfig(model="m", input_files=("a",), s3_endpoint_url="http://127.0.0.1:9")
    assert ray_engine._runtime_env(config) == {
        "env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    }
    assert ray_engine._runtime_env(RunConfig(model="m", input_files=("a",))) is None


@pytest.mark.usefixtures("local_ray")
def test_ray_parts_hold_a_chunk_of_rows_whatever_the_readers_batches(
    tmp_path: Path, mlp_model: Path
) -> None:
    frame = make_frame(1200, seed=8)
    source = tmp_path / "d.jsonl"  # its reader's batches follow bytes, not rows
    write_with_library(frame, source, "jsonl")
    batchpredict.predict(
        model=str(mlp_model),
        input_file=str(source),
        output_dir=str(tmp_path / "out"),
        keep_columns=["id"],
        features=FEATURES,
        engine="ray",
        chunk_size=500,
        batch_size=100,  # chunks are whole batches: --chunk_size rounded up to them
        # Read in blocks of at most 20,001 bytes: batches of about 200 rows, not 500.
        max_record_bytes=20_000,
    )
    files = sorted((tmp_path / "out").glob("part-*.jsonl"))
    assert [len(read_with_library(f, "jsonl")) for f in files] == [500, 500, 200]
    assert parts(tmp_path / "out", "jsonl")["id"].tolist() == frame["id"].tolist()


@pytest.mark.usefixtures("local_ray")
def test_a_model_actor_may_take_every_cpu_of_the_cluster(tmp_path: Path, mlp_model: Path) -> None:
    """One actor of 2 CPUs on a Ray of 2: nothing else of the run waits for a CPU."""
    frame = make_frame(900, seed=9)
    source = write_with_library(frame, tmp_path / "d.parquet", "parquet")
    finished: list[Any] = []

    def run() -> None:
        finished.append(
            batchpredict.predict(
                model=str(mlp_model),
                input_file=str(source),
                output_dir=str(tmp_path / "out"),
                keep_columns=["id"],
                features=FEATURES,
                engine="ray",
                chunk_size=300,
                ray_concurrency=1,
                ray_cpus_per_worker=2,
            )
        )

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=240)
    assert finished, "the run did not end within 240 s: something waited for a CPU"
    assert finished[0].rows_out == 900
    assert parts(tmp_path / "out", "parquet")["id"].tolist() == frame["id"].tolist()
