"""Input expansion (files, globs, directories) and output planning (names, collisions)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchpredict.config import RunConfig
from batchpredict.errors import InputMissingError, OutputError, UsageError
from batchpredict.outputs import plan_outputs
from batchpredict.sources import expand_inputs


def touch(path: Path, text: str = "a\n1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config(tmp_path: Path, **options: object) -> RunConfig:
    return RunConfig(model="m.keras", input_files=(str(tmp_path),), **options)  # type: ignore[arg-type]


def test_directory_expands_sorted_and_skips_markers_and_own_outputs(tmp_path: Path) -> None:
    for name in (
        "b.csv",
        "a.parquet",
        "sub/c.jsonl",
        "_SUCCESS",
        ".a.csv.tmp",
        "a.predictions.csv",
        "x.rejects.jsonl",
        "notes.txt",
        "_tmp/d.csv",
    ):
        touch(tmp_path / name)
    found = expand_inputs((str(tmp_path),), None)
    assert [os.path.relpath(f.path, tmp_path) for f in found] == [
        "a.parquet",
        "b.csv",
        "sub/c.jsonl",
    ]
    assert [f.format for f in found] == ["parquet", "csv", "jsonl"]
    assert found[2].relative_path == "sub/c.jsonl"


def test_glob_root_is_the_fixed_prefix(tmp_path: Path) -> None:
    touch(tmp_path / "exports" / "date=2" / "part-0.csv")
    touch(tmp_path / "exports" / "date=1" / "part-0.csv")
    found = expand_inputs((str(tmp_path / "exports" / "*" / "*.csv"),), None)
    assert [f.relative_path for f in found] == ["date=1/part-0.csv", "date=2/part-0.csv"]


def test_repeated_inputs_keep_order_and_drop_duplicates(tmp_path: Path) -> None:
    b, a = touch(tmp_path / "b.csv"), touch(tmp_path / "a.csv")
    found = expand_inputs((str(b), str(a), str(tmp_path / "*.csv")), None)
    assert [f.path for f in found] == [str(b), str(a)]


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("missing.csv", InputMissingError, "no such file"),
        ("nothing-*.csv", InputMissingError, "matched no input file"),
        ("empty.csv", InputMissingError, "is empty"),
        ("data.xyz", UsageError, "--input_format"),
    ],
)
def test_bad_inputs(tmp_path: Path, name: str, error: type[Exception], message: str) -> None:
    touch(tmp_path / "empty.csv", "")
    touch(tmp_path / "data.xyz")
    with pytest.raises(error, match=message):
        expand_inputs((str(tmp_path / name),), None)


def test_default_output_is_beside_the_input(tmp_path: Path) -> None:
    inputs = expand_inputs(
        (str(touch(tmp_path / "day.csv.gz")), str(touch(tmp_path / "x.parquet"))), None
    )
    targets = plan_outputs(inputs, config(tmp_path))
    assert [t.path for t in targets] == [
        str(tmp_path / "day.predictions.csv.gz"),
        str(tmp_path / "x.predictions.parquet"),
    ]


def test_output_dir_swaps_extension_when_format_changes(tmp_path: Path) -> None:
    inputs = expand_inputs((str(touch(tmp_path / "in" / "p" / "a.csv.gz")),), None)
    targets = plan_outputs(
        inputs, config(tmp_path, output_dir=str(tmp_path / "out"), output_format="parquet")
    )
    assert targets[0].path == str(tmp_path / "out" / "a.parquet")
    assert targets[0].format == "parquet"


def test_two_inputs_mapping_to_one_output_are_refused(tmp_path: Path) -> None:
    a = touch(tmp_path / "x" / "part-0.csv")
    b = touch(tmp_path / "y" / "part-0.csv")
    inputs = expand_inputs((str(a), str(b)), None)
    with pytest.raises(OutputError, match="would both be written"):
        plan_outputs(inputs, config(tmp_path, output_dir=str(tmp_path / "out")))


def test_output_may_not_be_an_input_even_through_a_link(tmp_path: Path) -> None:
    source = touch(tmp_path / "a.csv")
    (tmp_path / "link.csv").symlink_to(source)
    inputs = expand_inputs((str(source),), None)
    with pytest.raises(OutputError, match="overwrite the input"):
        plan_outputs(inputs, config(tmp_path, output_file=str(tmp_path / "link.csv")))


def test_output_file_format_from_its_extension(tmp_path: Path) -> None:
    inputs = expand_inputs((str(touch(tmp_path / "a.csv")),), None)
    targets = plan_outputs(inputs, config(tmp_path, output_file=str(tmp_path / "o.jsonl")))
    assert targets[0].format == "jsonl"


@pytest.fixture(params=["local", "memory"])
def folder(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[str], None]]]:
    """A folder to expand inputs in, on the local disk or in fsspec's in-memory store:
    both go through the same listing and matching."""
    if request.param == "local":

        def write(name: str) -> None:
            touch(tmp_path / name)

        yield str(tmp_path), write
        return
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    root = f"/sources-{uuid.uuid4().hex}"

    def put(name: str) -> None:
        memory.pipe(f"{root}/{name}", b"a\n1\n")

    yield f"memory://{root}", put
    memory.rm(root, recursive=True)


def test_globs_match_within_a_name_and_across_folders_only_with_double_star(
    folder: tuple[str, Callable[[str], None]],
) -> None:
    """A wildcard stays within one name, `**` crosses folders, a pattern ending in `/`
    takes the files below the folders it matches, and `_`- or `.`-prefixed folders are
    skipped by globs as by directories: alike on the local disk and in a store."""
    root, put = folder
    for name in ("a.csv", "day=1/b.csv", "day=2/deep/c.csv", "_tmp/d.csv", ".hidden/e.csv"):
        put(name)

    def found(pattern: str) -> list[str]:
        return [item.relative_path for item in expand_inputs((f"{root}/{pattern}",), None)]

    assert found("*.csv") == ["a.csv"]
    assert found("*/*.csv") == ["day=1/b.csv"]
    assert found("**/*.csv") == ["a.csv", "day=1/b.csv", "day=2/deep/c.csv"]
    assert found("day=*/") == ["day=1/b.csv", "day=2/deep/c.csv"]
    assert [i.relative_path for i in expand_inputs((root,), None)] == [
        "a.csv",
        "day=1/b.csv",
        "day=2/deep/c.csv",
    ]
    with pytest.raises(InputMissingError, match="matched no input file"):
        found("*/d.csv")
