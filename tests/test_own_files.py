"""The files batchpredict owns on a shared machine: the lock and metrics files are never
followed through a symbolic link, what it writes gets the umask's permissions, and the
model cache is used only when it is private and its entries match what was downloaded."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpredict import model_cache
from batchpredict.errors import ModelError, OutputError
from batchpredict.locking import hold_lock
from conftest import Completed, make_frame, write_with_library
from test_hostile_files import assert_bounded, run_measured

RunMain = Callable[..., Completed]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_with_library(make_frame(8), tmp_path / "in.csv", "csv")


def predict(run_main: RunMain, model: Path, data: Path, *args: str) -> Completed:
    out = data.parent / "out.csv"
    return run_main(
        "predict", "--model", str(model), "--input_file", str(data), "--output_file", str(out),
        "--keep_columns", "id,segment", *args,
    )  # fmt: skip


# --------------------------------------------------------------------------- lock file


def test_symlinked_lock_is_refused_and_its_target_untouched(
    tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite\n")
    link = tmp_path / "job.lock"
    link.symlink_to(target)
    result = predict(run_main, mlp_model, data, "--lock_file", str(link))
    assert result.returncode == 73, result.stderr
    assert f"{link}: refusing the lock file: it is a symbolic link" in result.stderr
    assert target.read_text() == "do not overwrite\n"
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_symlinked_lock_is_refused_in_time_and_memory(
    tmp_path: Path, data: Path, mlp_model: Path
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite\n")
    link = tmp_path / "job.lock"
    link.symlink_to(target)
    result = run_measured(
        "predict", "--model", str(mlp_model), "--input_file", str(data),
        "--output_file", str(tmp_path / "out.csv"), "--keep_columns", "id,segment",
        "--lock_file", str(link),
    )  # fmt: skip
    assert_bounded(result, 73)
    assert target.read_text() == "do not overwrite\n"


def test_dangling_lock_link_does_not_create_its_target(
    tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    target = tmp_path / "planted"
    link = tmp_path / "job.lock"
    link.symlink_to(target)
    result = predict(run_main, mlp_model, data, "--lock_file", str(link))
    assert result.returncode == 73, result.stderr
    assert "symbolic link" in result.stderr
    assert not target.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_lock_that_is_not_a_regular_file_is_refused(
    kind: str, tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    lock = tmp_path / "job.lock"
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    result = predict(run_main, mlp_model, data, "--lock_file", str(lock))
    if kind == "directory":  # the command line already refuses a folder (usage, 2)
        assert result.returncode == 2, result.stderr
        assert "is a directory" in result.stderr
    else:
        assert result.returncode == 73, result.stderr
        assert f"{lock}: refusing the lock file: it is not a regular file" in result.stderr
    with pytest.raises(OutputError, match="refusing the lock file"), hold_lock(str(lock)):
        pass


def test_lock_still_locks_and_records_the_pid(
    tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    lock = tmp_path / "job.lock"
    assert predict(run_main, mlp_model, data, "--lock_file", str(lock)).returncode == 0
    assert lock.read_text() == f"{os.getpid()}\n"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another holder
        result = predict(run_main, mlp_model, data, "--lock_file", str(lock))
    finally:
        os.close(fd)
    assert result.returncode == 75, result.stderr


def test_lock_file_with_other_content_is_locked_but_not_overwritten(
    tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    lock = tmp_path / "job.lock"
    lock.write_text("a,b\n1,2\n")
    assert predict(run_main, mlp_model, data, "--lock_file", str(lock)).returncode == 0
    assert lock.read_text() == "a,b\n1,2\n"


def test_hard_linked_lock_file_is_not_overwritten(
    tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    other = tmp_path / "other"
    other.write_text("")
    lock = tmp_path / "job.lock"
    os.link(other, lock)
    assert predict(run_main, mlp_model, data, "--lock_file", str(lock)).returncode == 0
    assert other.read_text() == ""


# --------------------------------------------------------------------------- metrics file


def test_symlinked_metrics_file_is_refused_and_its_target_not_read(
    tmp_path: Path, data: Path, mlp_model: Path, run_main: RunMain
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("db_password 12345\n")
    metrics = tmp_path / "metrics.prom"
    metrics.symlink_to(secret)
    result = predict(run_main, mlp_model, data, "--metrics_file", str(metrics))
    assert result.returncode == 73, result.stderr
    assert f"{metrics}: refusing the metrics file: it is a symbolic link" in result.stderr
    assert metrics.is_symlink() and secret.read_text() == "db_password 12345\n"
    assert not (tmp_path / "out.csv").exists(), "refused before any work"


def test_write_metrics_never_reads_a_link_planted_later(tmp_path: Path) -> None:
    from batchpredict.errors import OutputError
    from batchpredict.metrics import write_metrics

    secret = tmp_path / "secret.txt"
    secret.write_text("db_password 12345\n")
    metrics = tmp_path / "metrics.prom"
    metrics.symlink_to(secret)
    with pytest.raises(OutputError, match="symbolic link"):
        write_metrics(
            str(metrics), job="j", succeeded=True, finished_at=1.0, duration_seconds=1.0,
            rows=1, rejected_rows=0, exit_code=0,
        )  # fmt: skip
    assert metrics.is_symlink()


# --------------------------------------------------------------------------- modes


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda value: os.umask(value) and None
    os.umask(saved)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions(
    mask: int,
    expected: int,
    umask: Callable[[int], None],
    tmp_path: Path,
    mlp_model: Path,
    run_main: RunMain,
) -> None:
    source = write_with_library(make_frame(8), tmp_path / "in.csv", "csv")
    lines = source.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",bad", 1)  # one bad row, for a rejects file
    source.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    umask(mask)
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(source),
        "--output_dir", str(out_dir), "--keep_columns", "id,segment",
        "--on_error", "skip", "--max_error_rate", "0.5",
        "--metrics_file", str(tmp_path / "m.prom"), "--summary_file", str(tmp_path / "s.json"),
        "--lock_file", str(tmp_path / "job.lock"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = [tmp_path / "m.prom", tmp_path / "s.json", tmp_path / "job.lock"]
    written += [p for p in out_dir.iterdir() if p.is_file()]
    assert len(written) >= 6, written  # output, rejects, manifest, _SUCCESS at least
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes == dict.fromkeys(modes, expected)
    assert json.loads((tmp_path / "s.json").read_text())["rows_rejected"] == 1


# --------------------------------------------------------------------------- model cache


@pytest.fixture
def bucket_model(
    bucket: Any, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, mlp_model: Path
) -> str:
    """The URI of `mlp_model` in a fresh bucket, this process pointed at the S3 server."""
    client, name = bucket
    client.upload_file(str(mlp_model), name, "models/mlp.keras")
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{name}/models/mlp.keras"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(model_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache"


def cached_file(uri: str) -> Path:
    return Path(model_cache.fetch(uri).path)


def test_cache_root_is_created_private_and_records_checksums(
    bucket_model: str, cache: Path, mlp_model: Path
) -> None:
    path = cached_file(bucket_model)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    record = json.loads((path.parent / ".entry.json").read_text())
    expected = hashlib.sha256(mlp_model.read_bytes()).hexdigest()
    assert record["files"] == {"mlp.keras": {"size": mlp_model.stat().st_size, "sha256": expected}}


def test_cache_root_writable_by_others_is_refused(bucket_model: str, cache: Path) -> None:
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(ModelError) as caught:
        model_cache.fetch(bucket_model)
    message = str(caught.value)
    assert f"refusing the model cache folder {cache}: it is writable by group or others" in message
    assert f"chmod go-w {cache}" in message
    assert list(cache.iterdir()) == [], "nothing downloaded into it"


def test_cache_root_of_another_user_is_refused(bucket_model: str, cache: Path) -> None:
    cache.mkdir(mode=0o755)
    os.chown(cache, 65534, 65534)
    with pytest.raises(ModelError, match=r"owned by uid 65534, not by this user"):
        model_cache.fetch(bucket_model)


def test_cache_entry_of_another_user_is_refused(bucket_model: str, cache: Path) -> None:
    entry = cached_file(bucket_model).parent
    os.chown(entry, 65534, 65534)
    with pytest.raises(ModelError, match=rf"refusing the model cache folder {entry}: it is owned"):
        model_cache.fetch(bucket_model)


def test_a_changed_cache_file_is_caught_by_its_checksum_and_fetched_again(
    bucket_model: str, cache: Path, mlp_model: Path
) -> None:
    path = cached_file(bucket_model)
    tampered = bytearray(path.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(tampered))
    assert cached_file(bucket_model) == path
    assert path.read_bytes() == mlp_model.read_bytes()


def test_a_planted_entry_without_checksums_is_fetched_again(
    bucket_model: str, cache: Path, mlp_model: Path, two_in_two_out_model: Path
) -> None:
    path = cached_file(bucket_model)
    record = json.loads((path.parent / ".entry.json").read_text())
    del record["files"]  # as an older batchpredict, or someone planting a model, writes it
    (path.parent / ".entry.json").write_text(json.dumps(record))
    path.write_bytes(two_in_two_out_model.read_bytes())
    assert cached_file(bucket_model) == path
    assert path.read_bytes() == mlp_model.read_bytes()


def test_a_file_added_to_an_entry_makes_it_fetched_again(bucket_model: str, cache: Path) -> None:
    path = cached_file(bucket_model)
    (path.parent / "saved_model.pb").write_bytes(b"planted")
    cached_file(bucket_model)
    assert not (path.parent / "saved_model.pb").exists()


def test_predict_with_a_cache_others_can_write_exits_78(
    bucket_model: str, cache: Path, data: Path, run_main: RunMain
) -> None:
    cache.mkdir()
    cache.chmod(0o777)
    result = run_main(
        "predict", "--model", bucket_model, "--input_file", str(data),
        "--output_file", str(data.parent / "out.csv"), "--keep_columns", "id,segment",
        env={model_cache.CACHE_DIR_VARIABLE: str(cache)},
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert "writable by group or others" in result.stderr


@pytest.mark.slow
def test_a_planted_cache_entry_is_replaced_in_time_and_memory(
    bucket_model: str, cache: Path, data: Path, two_in_two_out_model: Path
) -> None:
    """Another model planted in a cache entry (checksums dropped, as an older batchpredict
    wrote them): the run fetches the real model again and scores with it."""
    path = cached_file(bucket_model)
    record = json.loads((path.parent / ".entry.json").read_text())
    del record["files"]
    (path.parent / ".entry.json").write_text(json.dumps(record))
    path.write_bytes(two_in_two_out_model.read_bytes())
    result = run_measured(
        "predict", "--model", bucket_model, "--input_file", str(data),
        "--output_file", str(data.parent / "out.csv"), "--keep_columns", "id,segment",
        env={model_cache.CACHE_DIR_VARIABLE: str(cache)},
    )  # fmt: skip
    assert_bounded(result, 0)
    assert "prediction" in (data.parent / "out.csv").read_text().splitlines()[0]
