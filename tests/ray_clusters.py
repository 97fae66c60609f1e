"""The two-node Ray cluster the cluster tests simulate on this machine
(`ray.cluster_utils.Cluster`): a head and a worker node, each with its own CPUs."""

from __future__ import annotations

from typing import Any

#: Each node's object store.
STORE_BYTES = 128 * 2**20
#: A model actor takes 2 of a node's 3 CPUs: one actor per node.
NODE_CPUS = 3


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
