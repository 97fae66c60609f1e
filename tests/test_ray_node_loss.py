"""`--engine ray` when Ray loses work: an input scored again after its actor was lost
replaces its staging files instead of adding rows, a dead actor's inputs go to the actors
alive, Ray's failures map to exit 74 and 78, and losing a worker node of
a two-node cluster (`ray.cluster_utils`) mid-run leaves the output folder committed and
complete, or as it was before the run."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batchpredict import ray_dispatch
from conftest import N_FEATURES, make_frame, write_with_library
from ray_clusters import two_nodes_running

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
FEATURES = [f"f{j}" for j in range(N_FEATURES)]
ROWS, FILES = 12000, 8


def test_an_input_scored_again_replaces_its_files_instead_of_adding_rows(
    tmp_path: Path, mlp_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the driver does after losing an actor: the same input, scored a second time
    (by another actor), writes into the same staging folder."""
    from batchpredict import ray_actor
    from batchpredict.config import RunConfig
    from batchpredict.sources import expand_inputs

    monkeypatch.setattr(ray_actor, "ray_runtime_node", lambda: "node")
    source = tmp_path / "d.csv"
    write_with_library(make_frame(40, seed=45), source, "csv")
    lines = source.read_text().splitlines()
    fields = lines[5].split(",")
    lines[5] = ",".join([*fields[:2], "", *fields[3:]])  # row 5 without f1: rejected
    lines.insert(20, "1,2,3")  # too few fields: the reader rejects it
    source.write_text("\n".join(lines) + "\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    config = RunConfig(
        model=str(mlp_model), input_files=(str(source),), output_dir=str(tmp_path / "out"),
        engine="ray", on_error="skip", max_error_rate=0.5, keep_columns=("id",),
        features=tuple(FEATURES), chunk_size=16, batch_size=8,
    )  # fmt: skip
    inputs = expand_inputs(config.input_files, None)
    actor = ray_actor.ModelActor(config, str(staging), "csv")
    actor.load()
    mapping, _ = actor.plan(inputs)
    attempts = [actor.score(0, inputs[0], mapping) for _ in range(2)]
    assert attempts[0].parts == attempts[1].parts
    # Chunks of 16 rows read (the reader drops the short record): row 5 left out of the first.
    assert [part.rows for part in attempts[0].parts] == [15, 16, 8]
    assert (attempts[0].read, attempts[0].rejected) == (41, 2)
    names = sorted(path.name for path in staging.iterdir())
    assert len(names) == 4, names  # three parts and one rejects part, whatever the attempts
    name = ray_actor.input_name(inputs[0])
    assert all(n.startswith((f"part-{name}-", f"rejects-{name}")) for n in names)
    rejected = [json.loads(line) for line in (staging / f"rejects-{name}.jsonl").open()]
    assert sorted((r["row"], r["column"] or "") for r in rejected) == [(5, "f1"), (20, "")]


def test_work_ray_lost_for_good_fails_with_74() -> None:
    from batchpredict.errors import ReadWriteError

    lost_kinds = (
        ray.exceptions.NodeDiedError("\x1b[36mnode 1f2e\x1b[39m died"),  # Ray's colours
        ray.exceptions.ActorDiedError(),
        ray.exceptions.ObjectLostError("ab" * 14, "owner", "call site"),
        ray.exceptions.WorkerCrashedError(),
    )
    for lost in lost_kinds:
        try:
            raise RuntimeError("the call failed") from lost
        except RuntimeError as exc:
            failure = ray_dispatch.cluster_failure(ray, exc)
        assert isinstance(failure, ReadWriteError) and failure.exit_code == 74
        assert str(failure).startswith("the Ray cluster lost work it could not run again: ")
        assert f": {type(lost).__name__}: " in str(failure) and "\x1b" not in str(failure)
    other = ValueError("a bug")
    assert ray_dispatch.cluster_failure(ray, other) is other


class _Actor:
    """A model actor's interface, whose process ends (as if its node were lost) at the
    call named by `dies_at`: "load", "score" or "" (never)."""

    def __init__(self, dies_at: str) -> None:
        self.dies_at = dies_at

    def placed(self) -> int:
        return os.getpid()

    def load(self) -> float:
        if self.dies_at == "load":
            os._exit(1)
        return time.time()

    def plan(self, inputs: list[str]) -> tuple[str, int]:
        return "mapping", os.getpid()

    def score(self, position: int, item: str, mapping: str) -> tuple[int, str, str]:
        if self.dies_at == "score":
            os._exit(1)
        return position, item, mapping


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A Ray of this process's own; the workers unpickle this module's classes by value
    (they cannot import a test module)."""
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _planned_and_scored(actors: list[Any], inputs: list[str]) -> tuple[Any, int, list[Any]]:
    """Plan and score `inputs` on `actors`: the pool, the pid that planned, the results."""
    scoring = ray_dispatch.Scoring(ray, actors)
    try:
        mapping, planned_by = scoring.plan(inputs)  # type: ignore[arg-type]
        done = scoring.run(inputs, mapping)  # type: ignore[arg-type]
    finally:
        scoring.stop()
    return scoring, planned_by, done


def test_the_inputs_of_a_dead_actor_go_to_the_actors_alive(local_ray: None) -> None:
    actor_class = ray.remote(_Actor).options(num_cpus=0, max_restarts=0)
    actors = [actor_class.remote("score"), actor_class.remote("")]
    inputs = [f"d{index}.csv" for index in range(20)]
    scoring, _, done = _planned_and_scored(actors, inputs)
    # Each input once, every call given the mapping the plan made.
    assert sorted(done) == [(index, item, "mapping") for index, item in enumerate(inputs)]
    assert len(scoring.actors) == 1  # the dead one no longer gets inputs


def test_an_actor_lost_while_loading_leaves_the_plan_and_the_inputs_to_the_others(
    local_ray: None,
) -> None:
    actor_class = ray.remote(_Actor).options(num_cpus=0, max_restarts=0)
    actors = [actor_class.remote("load"), actor_class.remote("")]
    alive_pid = ray.get(actors[1].placed.remote())
    inputs = [f"d{index}.csv" for index in range(6)]
    _, planned_by, done = _planned_and_scored(actors, inputs)
    assert planned_by == alive_pid
    assert sorted(done) == [(index, item, "mapping") for index, item in enumerate(inputs)]


def test_a_pool_whose_every_actor_died_fails_with_74(local_ray: None) -> None:
    from batchpredict.errors import ReadWriteError

    actors = [ray.remote(_Actor).options(num_cpus=0).remote("score") for _ in range(2)]
    inputs = [f"d{index}.csv" for index in range(5)]
    scoring = ray_dispatch.Scoring(ray, actors)
    try:
        with pytest.raises(ReadWriteError, match=r"every model actor .* was lost") as lost:
            scoring.plan(inputs)  # type: ignore[arg-type]
            scoring.run(inputs, "mapping")  # type: ignore[arg-type]
    finally:
        scoring.stop()
    assert lost.value.exit_code == 74


@pytest.fixture(scope="module")
def doomed_cluster() -> Iterator[Any]:
    """A head and a worker node of 3 CPUs each, this process not connected (the run under
    test joins with --ray_address). The test kills the worker node: a cluster of its own."""
    with two_nodes_running() as cluster:
        yield cluster


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _model_actor_scoring(raylet_pid: int) -> bool:
    """Whether a model actor started by this raylet is scoring an input (Ray titles an
    actor's process `ray::ModelActor.score` while it runs one)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            title = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # the process ended
        if parent == raylet_pid and b"ModelActor.score" in title:
            return True
    return False


def _kill_when_scoring(cluster: Any, finished: threading.Event, killed: threading.Event) -> None:
    """Kill the worker node, hard, once its model actor is scoring an input."""
    from ray._private import ray_constants

    (node,) = cluster.worker_nodes
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    while not finished.is_set():
        if _model_actor_scoring(raylet):
            cluster.remove_node(node, allow_graceful=False)
            killed.set()
            return
        time.sleep(0.01)


def test_losing_a_node_mid_run_leaves_a_complete_output_or_the_previous_one(
    doomed_cluster: Any, tmp_path: Path, mlp_model: Path, run_main: Callable[..., Any]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    frame = make_frame(ROWS, seed=43)
    size = ROWS // FILES
    for index in range(FILES):  # more inputs than actors, each of many small chunks
        rows = frame.iloc[index * size : (index + 1) * size]
        write_with_library(rows, inputs / f"d{index}.parquet", "parquet")
    earlier_input = tmp_path / "earlier.parquet"
    write_with_library(make_frame(300, seed=44), earlier_input, "parquet")
    out = tmp_path / "out"
    common = (
        "--model", str(mlp_model), "--output_dir", str(out), "--keep_columns", "id",
        "--features", ",".join(FEATURES), "--engine", "ray",
        "--ray_address", doomed_cluster.address, "--ray_concurrency", "2",
        "--ray_cpus_per_worker", "2",  # one actor per node (NODE_CPUS)
    )  # fmt: skip
    earlier = run_main("predict", "--input_file", str(earlier_input), *common)
    assert earlier.returncode == 0, earlier.stderr
    before = _files(out)
    finished, killed = threading.Event(), threading.Event()
    killer = threading.Thread(target=_kill_when_scoring, args=(doomed_cluster, finished, killed))
    killer.start()
    try:
        result = run_main("predict", "--input_file", str(inputs), "--chunk_size", "100", *common)
    finally:
        finished.set()
        killer.join()
    assert killed.is_set(), "the run ended before the worker node's actor scored an input"
    used = [line for line in result.log_lines() if line["event"] == "ray nodes used"]
    lost = [line for line in result.log_lines() if line["event"] == "ray model actor lost"]
    print("exit", result.returncode, used, "actors lost:", len(lost))
    if result.returncode:
        print(result.stderr.strip().splitlines()[-1])
    if result.returncode == 0:  # Ray ran the lost work again on the head node
        parts = sorted(out.glob("part-*.parquet"))
        written = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
        assert sorted(written["id"]) == sorted(frame["id"])  # every row, exactly once
        manifest = json.loads((out / "_manifest.json").read_text())
        assert sorted(output["output"] for output in manifest["outputs"]) == [p.name for p in parts]
        assert sum(output["rows"] for output in manifest["outputs"]) == ROWS
        assert (out / "_SUCCESS").exists() and not (out / "_temporary").exists()
        assert run_main("verify", str(out)).returncode == 0  # the parts as recorded
    else:  # nothing of this run: the earlier run's outputs as they were, no staging
        assert result.returncode == 74, result.stderr
        assert _files(out) == before
