"""`--engine ray` on a two-node cluster simulated on this machine (`ray.cluster_utils`):
the work dealt to both nodes, and inputs and outputs in a bucket (moto on the loopback).
Losing a node is in test_ray_node_loss.py (a cluster of its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import N_FEATURES, make_frame, reference_predictions, s3_keys, write_with_library
from ray_clusters import two_nodes_running

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


@pytest.fixture(scope="module")
def two_nodes(s3_env: dict[str, str]) -> Iterator[Any]:
    """A head and a worker node of 3 CPUs each, not connected: each run joins it with
    --ray_address, as a driver does. The nodes hold the S3 credentials, as a cluster's
    nodes have their own (instance roles); the endpoint is the run's, which it passes on."""
    node_env: dict[str, str | None] = {**s3_env, "AWS_ENDPOINT_URL": None}
    with two_nodes_running(node_env) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _disconnect() -> Iterator[None]:
    """Each run joins the cluster itself, with its own runtime environment."""
    yield
    ray.shutdown()


def _node_ids(cluster: Any) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


def _ray_options(cluster: Any) -> tuple[str, ...]:
    return (
        "--engine", "ray", "--ray_address", cluster.address, "--ray_concurrency", "2",
        "--ray_cpus_per_worker", "2",  # one actor per node (NODE_CPUS)
    )  # fmt: skip


def _rows_per_node(result: Any) -> dict[str, int]:
    used = next(line for line in result.log_lines() if line["event"] == "ray nodes used")
    rows_per_node: dict[str, int] = used["rows_per_node"]
    print("rows per node:", rows_per_node)
    return rows_per_node


def test_a_two_node_cluster_scores_every_row_as_the_reference_on_both_nodes(
    two_nodes: Any, tmp_path: Path, mlp_model: Path, run_main: Callable[..., Any]
) -> None:
    # More files than actors: each actor is dealt inputs while it has room for a call.
    frame = make_frame(24000, seed=41)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(4):
        part = frame.iloc[index * 6000 : (index + 1) * 6000]
        write_with_library(part, inputs / f"d{index}.parquet", "parquet")
    out = tmp_path / "out"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(inputs),
        "--output_dir", str(out), "--keep_columns", "id", "--features", ",".join(FEATURES),
        "--chunk_size", "200", *_ray_options(two_nodes),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows_per_node = _rows_per_node(result)
    # Calls queue on both placed actors (the least busy gets the next input), whichever
    # loaded its model first: both nodes score.
    assert set(rows_per_node) == _node_ids(two_nodes) and len(rows_per_node) == 2
    assert sum(rows_per_node.values()) == 24000
    written = pd.concat(
        [pd.read_parquet(f) for f in sorted(out.glob("part-*.parquet"))], ignore_index=True
    )
    assert written["id"].tolist() == frame["id"].tolist()  # parts follow the inputs
    expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(written["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert (out / "_SUCCESS").exists()


def test_a_two_node_cluster_reads_and_writes_a_bucket_as_the_local_engine(
    two_nodes: Any,
    bucket: Any,
    s3_env: dict[str, str],
    tmp_path: Path,
    mlp_model: Path,
    run_main: Callable[..., Any],
) -> None:
    """One Parquet file of 4 row groups for 2 actors: each is dealt a range of them."""
    client, name = bucket
    frame = make_frame(8000, seed=42)
    local = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), local, row_group_size=2000)
    client.upload_file(str(local), name, "in/d.parquet")
    common = (
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/in/d.parquet",
        "--keep_columns", "id,segment", "--features", ",".join(FEATURES),
        "--chunk_size", "250", "--batch_size", "250",
    )  # fmt: skip
    local_run = run_main(*common, "--output_dir", f"s3://{name}/local", env=s3_env)
    assert local_run.returncode == 0, local_run.stderr
    result = run_main(
        *common, "--output_dir", f"s3://{name}/ray", *_ray_options(two_nodes), env=s3_env
    )
    assert result.returncode == 0, result.stderr
    assert set(_rows_per_node(result)) == _node_ids(two_nodes)
    keys = s3_keys(client, name, "ray/")
    parts = [key for key in keys if key.startswith("ray/part-")]
    assert keys == sorted([*parts, "ray/_SUCCESS", "ray/_manifest.json"])
    by_ray = pd.concat([_read(client, name, key, tmp_path) for key in parts], ignore_index=True)
    by_local = _read(client, name, "local/d.parquet", tmp_path)
    assert len(by_ray) == 8000
    pd.testing.assert_frame_equal(by_ray, by_local)  # the parts in the file's order


def _read(client: Any, bucket: str, key: str, tmp_path: Path) -> pd.DataFrame:
    local = tmp_path / "downloaded.parquet"
    client.download_file(bucket, key, str(local))
    return pd.read_parquet(local)


def test_a_pool_the_cluster_cannot_hold_fails_with_78_and_writes_nothing(
    two_nodes: Any,
    tmp_path: Path,
    mlp_model: Path,
    run_main: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchpredict import ray_dispatch

    monkeypatch.setattr(ray_dispatch, "ACTORS_READY_SECONDS", 5)
    source = tmp_path / "in"
    source.mkdir()
    for index in range(3):  # an input for each actor (there are never more actors)
        write_with_library(
            make_frame(100, seed=46 + index), source / f"d{index}.parquet", "parquet"
        )
    out = tmp_path / "out"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_dir", str(out), "--features", ",".join(FEATURES), "--engine", "ray",
        "--ray_address", two_nodes.address, "--ray_concurrency", "3",
        "--ray_cpus_per_worker", "2",  # two fit, one per node: the third never starts
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert "the cluster did not start 3 model actors within 5 s" in result.stderr
    assert not out.exists() or not list(out.iterdir())
