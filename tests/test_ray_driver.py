"""What the driver of `--engine ray` decides before any actor runs, without starting Ray:
how it deals its inputs to the model actors (one input per call, Parquet files split into
row-group ranges when there are fewer files than actors, and fewer actors, said in a
warning, when the inputs cannot be split), and a `--ray_address` where nothing answers
failing at once (78) instead of Ray's client retrying it for minutes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from batchpredict import ray_engine
from batchpredict.config import RunConfig
from batchpredict.errors import ConfigError
from batchpredict.ray_actor import input_name
from batchpredict.sources import expand_inputs
from conftest import make_frame, write_with_library


def _parquet(path: Path, rows: int, group_rows: int) -> Path:
    table = pa.Table.from_pandas(make_frame(rows, seed=3), preserve_index=False)
    pq.write_table(table, path, row_group_size=group_rows)
    return path


def test_a_parquet_file_is_dealt_as_row_group_ranges_to_fewer_files_than_actors(
    tmp_path: Path,
) -> None:
    source = _parquet(tmp_path / "d.parquet", 800, 200)  # 4 row groups
    inputs = expand_inputs((str(source),), None)
    dealt = ray_engine._dealt_inputs(inputs, 2)
    assert [(item.row_groups.first, item.row_groups.last) for item in dealt if item.row_groups] == [
        (0, 1),
        (2, 3),
    ]
    assert {item.path for item in dealt} == {str(source)}
    assert [item.row_groups.rows_before for item in dealt if item.row_groups] == [0, 400]
    assert len({input_name(item) for item in dealt}) == 2  # each range's files their own


def test_inputs_that_cannot_be_split_start_fewer_actors_and_say_so(tmp_path: Path) -> None:
    source = write_with_library(make_frame(50), tmp_path / "d.csv", "csv")
    inputs = expand_inputs((str(source),), None)
    dealt = ray_engine._dealt_inputs(inputs, 4)
    assert dealt == inputs
    with capture_logs() as logs:
        ray_engine._log_pool({"address": "local"}, len(dealt), 4)
    started, warning = logs
    assert (started["event"], started["actors"]) == ("ray engine started", 1)
    assert warning["event"] == "fewer inputs than model actors"
    assert (warning["actors"], warning["asked"]) == (1, 4)
    assert "split the input into more files" in warning["hint"]


def test_as_many_inputs_as_actors_are_dealt_as_they_are(tmp_path: Path) -> None:
    for index in range(3):
        _parquet(tmp_path / f"d{index}.parquet", 100, 20)
    inputs = expand_inputs((str(tmp_path),), None)
    assert ray_engine._dealt_inputs(inputs, 3) == inputs
    assert ray_engine._dealt_inputs(inputs, 2) == inputs  # more inputs than actors
    with capture_logs() as logs:
        ray_engine._log_pool({"address": "local"}, 2, 2)
    assert [line["event"] for line in logs] == ["ray engine started"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once it is closed


class _RayNotStarted:
    """`ray` as the engine sees it before joining: not initialised, never to be."""

    def is_initialized(self) -> bool:
        return False

    def init(self, **options: Any) -> None:
        raise AssertionError("ray.init must not be called for an address nothing answers")


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_answers_fails_with_78_before_ray_is_joined(
    scheme: str,
) -> None:
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    config = RunConfig(model="m", input_files=("a",), output_dir="o", ray_address=address)
    with pytest.raises(ConfigError) as refused:
        ray_engine._start_ray(_RayNotStarted(), config)
    assert str(refused.value).startswith(f"--ray_address {address}: no Ray cluster answers")
    assert refused.value.exit_code == 78


def test_an_address_that_takes_connections_is_left_to_ray() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert ray_engine._unreachable(f"127.0.0.1:{port}", 5) is None
        assert ray_engine._unreachable(f"ray://127.0.0.1:{port}", 5) is None
    for found_by_ray in ("auto", "local", "not an address"):
        assert ray_engine._unreachable(found_by_ray, 5) is None
