"""`--model` as a URI: models in a bucket, downloaded once into the local cache and used
from there, through the command; over every store of tests/stores.py (S3 through moto's
server, GCS through fake-gcs-server, Azure through Azurite), and S3's refusals through a
moto server checking keys."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchpredict import model_cache
from batchpredict.errors import ModelError, ReadWriteError
from conftest import (
    N_FEATURES,
    Completed,
    make_frame,
    read_with_library,
    start_moto_server,
    write_with_library,
)
from stores import Store

RunCli = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]
#: The fake credentials of the S3 servers here; they must never reach a message.
SECRET = "testing"


# --------------------------------------------------------------------------- helpers


def scaled_model(source: Path, target: Path, scale: float) -> Path:
    """`source` with every weight multiplied by `scale`, saved as a new .keras file."""
    import keras

    model = keras.saving.load_model(source, compile=False)
    model.set_weights([weight * scale for weight in model.get_weights()])
    model.save(target)
    return target


def scaled_reference(model_path: Path, features: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Predictions of `model_path` with its weights scaled, called directly."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    model.set_weights([weight * scale for weight in model.get_weights()])
    return keras.ops.convert_to_numpy(model(features.astype(np.float32))).reshape(-1)


def upload_tree(store: Store, bucket: str, local: Path, prefix: str) -> list[str]:
    """Upload every file below `local` under `prefix`; the keys, sorted."""
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        store.upload(bucket, key, path)
        keys.append(key)
    return keys


def entries(cache: Path) -> list[Path]:
    """Complete cache entries (not downloads in progress)."""
    if not cache.is_dir():
        return []
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def events(result: Completed) -> list[str]:
    return [str(line["event"]) for line in result.log_lines()]


def predict(
    run_main: RunCli, model: str, tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[Completed, Any, Any]:
    """Score a fixed local CSV with `model`; the result and the frame it scored."""
    frame = make_frame(200, seed=3)
    source = write_with_library(frame, tmp_path / "in.csv", "csv")
    out = tmp_path / "out.csv"
    out.unlink(missing_ok=True)
    result = run_main(
        "predict", "--model", model, "--input_file", str(source), "--output_file", str(out),
        "--keep_columns", "id,segment", *args, env=env,
    )  # fmt: skip
    return result, (read_with_library(out, "csv") if result.returncode == 0 else None), frame


@pytest.fixture
def cache_env(store: Store, tmp_path: Path) -> dict[str, str]:
    """The store's environment plus a cache folder of this test's own."""
    return {**store.env, "BATCHPREDICT_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def store_here(store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point this process at the store's server (for calling `model_cache.fetch`
    directly); the cache folder it uses."""
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BATCHPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------- cache root


def test_cache_root_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BATCHPREDICT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache.cache_root() == tmp_path / "home/.cache/batchpredict/models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache.cache_root() == tmp_path / "xdg/batchpredict/models"
    monkeypatch.setenv("BATCHPREDICT_CACHE_DIR", str(tmp_path / "mine"))
    assert model_cache.cache_root() == tmp_path / "mine"
    monkeypatch.setenv("BATCHPREDICT_CACHE_DIR", "")  # set but empty: not a folder
    assert model_cache.cache_root() == tmp_path / "xdg/batchpredict/models"


# --------------------------------------------------------------------------- Keras files


def test_keras_model_from_a_bucket_predicts_like_the_local_one_and_downloads_once(
    store: Store, cache_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    name = store.new_bucket()
    store.upload(name, "models/mlp.keras", mlp_model)
    uri = store.uri(name, "models/mlp.keras")
    cache = Path(cache_env["BATCHPREDICT_CACHE_DIR"])

    first, out, frame = predict(run_main, uri, tmp_path, cache_env)
    assert first.returncode == 0, first.stderr
    expected = scaled_reference(mlp_model, frame[FEATURES].to_numpy())
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert out["id"].tolist() == frame["id"].tolist()
    assert "model downloaded" in events(first) and "model cache hit" not in events(first)
    [entry] = entries(cache)
    cached = entry / "mlp.keras"
    assert cached.read_bytes() == mlp_model.read_bytes()
    [started] = [line for line in first.log_lines() if line["event"] == "run started"]
    assert (started["model"], started["model_cache"]) == (uri, str(cached))
    before = (entry.stat().st_ino, cached.stat().st_ino, cached.stat().st_mtime_ns)

    second, out_again, _ = predict(run_main, uri, tmp_path, cache_env)
    assert second.returncode == 0, second.stderr
    np.testing.assert_allclose(out_again["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert "model cache hit" in events(second) and "model downloaded" not in events(second)
    assert entries(cache) == [entry]
    assert (entry.stat().st_ino, cached.stat().st_ino, cached.stat().st_mtime_ns) == before
    assert SECRET not in first.stderr + second.stderr


def test_a_replaced_model_object_is_downloaded_again(
    store: Store, cache_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    name = store.new_bucket()
    uri = store.uri(name, "models/mlp.keras")
    cache = Path(cache_env["BATCHPREDICT_CACHE_DIR"])
    store.upload(name, "models/mlp.keras", mlp_model)
    first, _, _ = predict(run_main, uri, tmp_path, cache_env)
    assert first.returncode == 0, first.stderr
    [old_entry] = entries(cache)

    replacement = scaled_model(mlp_model, tmp_path / "retrained.keras", 2.0)
    store.upload(name, "models/mlp.keras", replacement)
    second, out, frame = predict(run_main, uri, tmp_path, cache_env)
    assert second.returncode == 0, second.stderr
    assert "model downloaded" in events(second)
    expected = scaled_reference(mlp_model, frame[FEATURES].to_numpy(), 2.0)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert len(entries(cache)) == 2 and old_entry in entries(cache)  # used within 7 days
    [new_entry] = [entry for entry in entries(cache) if entry != old_entry]
    assert (new_entry / "mlp.keras").read_bytes() == replacement.read_bytes()


# --------------------------------------------------------------------------- TF-Serving


@pytest.fixture(scope="module")
def serving_export(tmp_path_factory: pytest.TempPathFactory, mlp_model: Path) -> Path:
    """A TF-Serving base folder: version 1 is the MLP with weights x3, version 2 the MLP."""
    import keras

    base = tmp_path_factory.mktemp("serving") / "scorer"
    model = keras.saving.load_model(mlp_model, compile=False)
    for version, scale in ((1, 3.0), (2, 1.0)):
        variant = keras.models.clone_model(model)
        variant.set_weights([weight * scale for weight in model.get_weights()])
        variant.export(base / str(version), verbose=False)
    assert (base / "2" / "variables").is_dir()
    return base


@pytest.mark.parametrize(("version", "scale"), [(None, 1.0), (1, 3.0)])
def test_serving_base_in_a_bucket_downloads_only_the_chosen_version(
    version: int | None,
    scale: float,
    store: Store,
    cache_env: dict[str, str],
    tmp_path: Path,
    mlp_model: Path,
    serving_export: Path,
    run_main: RunCli,
) -> None:
    name = store.new_bucket()
    upload_tree(store, name, serving_export, "exports/scorer")
    uri = store.uri(name, "exports/scorer/")  # a trailing slash, as users copy prefixes
    args = ["--model_version", str(version)] if version is not None else []
    result, out, frame = predict(run_main, uri, tmp_path, cache_env, *args)
    assert result.returncode == 0, result.stderr
    expected = scaled_reference(mlp_model, frame[FEATURES].to_numpy(), scale)
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-6)
    chosen = version or 2
    started = next(line for line in result.log_lines() if line["event"] == "run started")
    assert started["model_version"] == chosen
    assert started["model"] == uri and str(started["model_cache"]).endswith(f"scorer/{chosen}")
    [entry] = entries(Path(cache_env["BATCHPREDICT_CACHE_DIR"]))
    downloaded = sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file())
    expected_files = sorted(
        f"scorer/{p.relative_to(serving_export).as_posix()}"
        for p in (serving_export / str(chosen)).rglob("*")
        if p.is_file()
    )
    assert [f for f in downloaded if not f.startswith(".")] == expected_files
    assert any(f.endswith("variables.index") for f in expected_files)


def test_a_missing_version_in_a_bucket_exits_78_listing_the_versions(
    store: Store, cache_env: dict[str, str], tmp_path: Path, serving_export: Path, run_main: RunCli
) -> None:
    name = store.new_bucket()
    upload_tree(store, name, serving_export, "exports/scorer")
    uri = store.uri(name, "exports/scorer")
    result, _, _ = predict(run_main, uri, tmp_path, cache_env, "--model_version", "7")
    assert result.returncode == 78, result.stderr
    assert f"{uri} has no version 7; available versions: 1, 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert entries(Path(cache_env["BATCHPREDICT_CACHE_DIR"])) == []  # nothing downloaded


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("models/missing.keras", "model path does not exist: {uri}"),
        ("models/nothing-here/", "model path does not exist: {uri}"),
        (None, "model path does not exist: {uri} (no {noun}"),
    ],
    ids=["missing-key", "empty-prefix", "missing-bucket"],
)
def test_missing_models_exit_78_naming_the_uri(
    key: str | None, expected: str, store: Store, cache_env: dict[str, str], tmp_path: Path,
    run_main: RunCli,
) -> None:  # fmt: skip
    if key is None:
        uri = store.uri("no-such-bucket-4711", "mlp.keras")
    else:
        uri = store.uri(store.new_bucket(), key)
    noun = "container" if store.scheme == "abfs" else "bucket"
    result, _, _ = predict(run_main, uri, tmp_path, cache_env)
    assert result.returncode == 78, result.stderr
    assert expected.format(uri=uri.rstrip("/"), noun=noun) in result.stderr
    assert all(secret not in result.stderr for secret in store.secrets)
    assert "Traceback" not in result.stderr


def test_a_model_the_store_refuses_exits_78_naming_the_uri(
    store: Store, tmp_path: Path, mlp_model: Path, run_main: RunCli
) -> None:
    refused_env = store.refusing_env()
    name = store.new_bucket()
    store.upload(name, "m/mlp.keras", mlp_model)
    uri = store.uri(name, "m/mlp.keras")
    env = {**refused_env, "BATCHPREDICT_CACHE_DIR": str(tmp_path / "cache")}
    result, _, _ = predict(run_main, uri, tmp_path, env)
    assert result.returncode == 78, result.stderr
    assert f"model path is unreadable: {uri}" in result.stderr
    assert "access denied" in result.stderr.lower()
    assert all(secret not in result.stderr for secret in store.secrets)
    assert entries(tmp_path / "cache") == []


@pytest.fixture
def locked_s3(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A second S3 server that enforces credentials after its first two requests (which
    create a bucket and a model in it): the environment and the model's URI."""
    boto3 = pytest.importorskip("boto3")
    proc, server_env = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "2"})
    try:
        env = {
            **server_env,
            "AWS_ACCESS_KEY_ID": SECRET,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "BATCHPREDICT_CACHE_DIR": str(tmp_path / "cache"),
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=SECRET,
            aws_secret_access_key=SECRET,
        )
        client.create_bucket(Bucket="locked-models")
        client.put_object(Bucket="locked-models", Key="m/mlp.keras", Body=b"not read")
        yield env, "s3://locked-models/m/mlp.keras"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_model_the_credentials_may_not_read_exits_78_naming_the_uri(
    locked_s3: tuple[dict[str, str], str], tmp_path: Path, run_main: RunCli
) -> None:
    env, uri = locked_s3
    result, _, _ = predict(run_main, uri, tmp_path, env)
    assert result.returncode == 78, result.stderr
    assert f"model path is unreadable: {uri}" in result.stderr
    assert "access denied" in result.stderr.lower()
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_prefix_without_a_model_is_a_model_error_naming_the_uri(
    store: Store, store_here: Path
) -> None:
    name = store.new_bucket()
    store.put(name, "exports/readme.txt", b"hello")
    store.put(name, "exports/latest/saved_model.pb", b"x")
    uri = store.uri(name, "exports")
    expected = f"^{re.escape(uri)} is not a SavedModel or Keras model"
    with pytest.raises(ModelError, match=expected) as caught:
        model_cache.fetch(uri)
    assert "found latest/, readme.txt" in str(caught.value)
    with pytest.raises(ModelError, match="is not a supported model file"):
        model_cache.fetch(f"{uri}/readme.txt")
    assert entries(store_here) == []


def test_an_unwritable_cache_is_an_io_error_naming_the_cache(
    store: Store, store_here: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = store.new_bucket()
    store.put(name, "m/mlp.keras", b"bytes")
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("BATCHPREDICT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    expected = re.escape(f"model cache at {tmp_path / 'a-file'}")
    with pytest.raises(ReadWriteError, match=expected):
        model_cache.fetch(store.uri(name, "m/mlp.keras"))


# --------------------------------------------------------------------------- the cache itself


def test_concurrent_fetches_agree_on_one_entry(store: Store, store_here: Path) -> None:
    name = store.new_bucket()
    store.put(name, "m/mlp.keras", os.urandom(1 << 20))
    uri = store.uri(name, "m/mlp.keras")
    start = threading.Barrier(6)
    results: list[str] = []
    failures: list[Exception] = []

    def fetch() -> None:
        start.wait()
        try:
            results.append(model_cache.fetch(uri).path)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert len(set(results)) == 1 and len(results) == 6
    # No half-written entry and no leftover temporary folder, whoever won.
    assert [p.name for p in store_here.iterdir() if p.name.startswith(".")] == []
    [entry] = entries(store_here)
    assert (entry / "mlp.keras").stat().st_size == 1 << 20


def test_old_entries_of_the_same_uri_are_pruned_after_seven_days(
    store: Store, store_here: Path
) -> None:
    name = store.new_bucket()
    uri = store.uri(name, "m/mlp.keras")
    store.put(name, "m/mlp.keras", b"old")
    old = Path(model_cache.fetch(uri).path).parent
    store.put(name, "m/mlp.keras", b"recent")
    recent = Path(model_cache.fetch(uri).path).parent
    store.put(name, "m/other.keras", b"old")
    other_uri = Path(model_cache.fetch(store.uri(name, "m/other.keras")).path).parent
    week_ago = time.time() - model_cache.PRUNE_AFTER_SECONDS - 60
    for entry in (old, other_uri):
        os.utime(entry / ".last-used", (week_ago, week_ago))
    os.utime(recent / ".last-used", (time.time() - 3600, time.time() - 3600))

    store.put(name, "m/mlp.keras", b"current")
    current = Path(model_cache.fetch(uri).path)
    assert current.read_bytes() == b"current"
    assert not old.exists()  # same URI, unused for a week
    assert recent.exists()  # same URI, used an hour ago
    assert other_uri.exists()  # another URI: not this run's business
    assert sorted(entries(store_here)) == sorted([current.parent, recent, other_uri])


def test_a_missing_object_in_fetch_is_a_model_error(store: Store, store_here: Path) -> None:
    name = store.new_bucket()
    expected = re.escape(f"model path does not exist: {store.uri(name, 'x.keras')}")
    with pytest.raises(ModelError, match=expected):
        model_cache.fetch(store.uri(name, "x.keras"))
