"""`--engine ray` on a two-node cluster simulated on this machine (`ray.cluster_utils`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import N_FEATURES, make_frame, reference_predictions, write_with_library

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
FEATURES = [f"f{j}" for j in range(N_FEATURES)]
STORE_BYTES = 128 * 2**20
#: A model actor takes 2 of a node's 3 CPUs: one actor per node, a CPU left for reading.
NODE_CPUS = 3


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[list[str]]:
    """A head and a worker node of 3 CPUs each, this process connected; their node ids."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "object_store_memory": STORE_BYTES},
    )
    try:
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE_BYTES)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_two_node_cluster_scores_every_row_as_the_reference(
    two_nodes: list[str], tmp_path: Path, mlp_model: Path, run_main: Callable[..., Any]
) -> None:
    frame = make_frame(4000, seed=41)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(4):  # a read task per file, spread over the nodes
        part = frame.iloc[index * 1000 : (index + 1) * 1000]
        write_with_library(part, inputs / f"d{index}.parquet", "parquet")
    out = tmp_path / "out"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(inputs),
        "--output_dir", str(out), "--keep_columns", "id", "--features", ",".join(FEATURES),
        "--chunk_size", "250", "--engine", "ray", "--ray_concurrency", "2",
        "--ray_cpus_per_worker", "2",  # one actor per node (NODE_CPUS)
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    used = next(line for line in result.log_lines() if line["event"] == "ray nodes used")
    rows_per_node = used["rows_per_node"]
    print("rows per node:", rows_per_node)
    # Which node scores which block is Ray's choice: the first actor ready may take all
    # of a job this small. Every row is scored on a node of the cluster, and logged there.
    assert len(two_nodes) == 2 and set(rows_per_node) <= set(two_nodes)
    assert sum(rows_per_node.values()) == 4000
    written = pd.concat(
        [pd.read_parquet(f) for f in sorted(out.glob("part-*.parquet"))], ignore_index=True
    )
    assert written["id"].tolist() == frame["id"].tolist()  # parts follow the inputs
    expected = reference_predictions(mlp_model, frame[FEATURES].to_numpy()).reshape(-1)
    np.testing.assert_allclose(written["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert (out / "_SUCCESS").exists()
