"""The two-node Ray cluster the cluster tests simulate on this machine
(`ray.cluster_utils.Cluster`): a head and a worker node, each with its own CPUs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

#: Each node's object store.
STORE_BYTES = 128 * 2**20
#: A model actor takes 2 of a node's 3 CPUs: one actor per node.
NODE_CPUS = 3


@contextlib.contextmanager
def two_nodes_running(node_env: Mapping[str, str | None] | None = None) -> Iterator[Any]:
    """Two nodes up for the block (see `start_two_nodes`), started with `node_env` in their
    environment (None: a variable they must not have); then this process disconnected
    and the cluster shut down."""
    with pytest.MonkeyPatch.context() as patch:  # inherited by the nodes' processes
        for key, value in (node_env or {}).items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        cluster = start_two_nodes()
    try:
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def start_two_nodes() -> Any:
    """A head and a worker node of `NODE_CPUS` CPUs each, up, this process not connected
    (runs join with --ray_address); shut down again if they do not come up."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "object_store_memory": STORE_BYTES},
    )
    try:
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE_BYTES)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster
