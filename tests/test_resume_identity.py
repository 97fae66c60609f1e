"""`--skip_existing` redoes an output when the model, a prediction option or an input
changed since its manifest record, and says why; it skips it only when all are the same.

Real Keras models (a `.keras` file and SavedModel exports), Parquet inputs written by
pyarrow, the CLI called in-process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from batchpredict import manifest as manifest_module
from batchpredict.manifest import (
    REASON_MODEL,
    REASON_OLD_RECORD,
    content_sha256,
)
from conftest import (
    N_FEATURES,
    Completed,
    make_frame,
    reference_predictions,
    write_with_library,
)
from stores import Store

RunMain = Callable[..., Completed]
DAYS = (1, 2, 3)


@pytest.fixture(scope="session")
def other_mlp_model(models_dir: Path) -> Path:
    """The architecture of `mlp_model` with other weights, as a retrained model would be."""
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(N_FEATURES,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    output = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    path = models_dir / "mlp_other_weights.keras"
    keras.Model(inputs, output).save(path)
    return path


@pytest.fixture(scope="session")
def saved_model_pair(models_dir: Path) -> tuple[Path, Path]:
    """One Keras model exported twice as a SavedModel, with other weights the second time:
    the two exports differ only in their variables."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(N_FEATURES,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    first, second = models_dir / "sm_first", models_dir / "sm_second"
    model.export(str(first), verbose=False)
    model.set_weights([w * 1.5 + 0.1 for w in model.get_weights()])
    model.export(str(second), verbose=False)
    return first, second


def write_days(folder: Path) -> dict[int, Path]:
    """One Parquet file per day under `folder/day=N/`, written by pyarrow."""
    paths = {}
    for day in DAYS:
        (folder / f"day={day}").mkdir(parents=True, exist_ok=True)
        frame = make_frame(40 + day, seed=day)
        frame.loc[3, "f1"] = np.nan  # a bad row, unless --fill_value fills it
        paths[day] = write_with_library(frame, folder / f"day={day}" / "part-0.parquet", "parquet")
    return paths


def predict(run_main: RunMain, model: Path | str, inputs: Path | str, out: Path | str, *extra: str,
            cwd: Path | None = None, env: dict[str, str] | None = None,
            code: int = 0) -> Completed:  # fmt: skip
    result = run_main(
        "predict", "--model", str(model), "--input_file", str(inputs), "--output_dir", str(out),
        "--features", "f0,f1,f2,f3", "--log_format", "json", "--no_progress",
        "--on_error", "skip", "--max_error_rate", "0.5",
        *extra, cwd=cwd, env=env,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    return result


def decisions(result: Completed) -> dict[str, str]:
    """Output (relative to its folder) -> "skipped" or the reason it was redone."""
    found = {}
    for line in result.log_lines():
        output = str(line.get("output", ""))
        name = output[output.index("day=") :] if "day=" in output else output
        if line["event"] == "output already complete, skipped":
            found[name] = "skipped"
        elif line["event"] == "output redone":
            found[name] = str(line["reason"])
    return found


def outputs() -> list[str]:
    return [f"day={day}/part-0.parquet" for day in DAYS]


def mtimes(out: Path) -> dict[str, int]:
    return {name: (out / name).stat().st_mtime_ns for name in outputs()}


def read_manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "_manifest.json").read_text())
    return data


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerun_with_the_same_model_skips_everything_and_the_manifest_says_what_made_it(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    write_days(tmp_path / "exports")
    out = tmp_path / "scored"
    first = predict(run_main, mlp_model, tmp_path / "exports", out, "--keep_columns", "id")
    [identified] = [line for line in first.log_lines() if line["event"] == "model identified"]
    assert identified["sha256"] == sha256_of(mlp_model)
    assert isinstance(identified["seconds"], float) and identified["files"] == 1
    before = mtimes(out)

    again = predict(
        run_main, mlp_model, tmp_path / "exports", out, "--keep_columns", "id", "--skip_existing"
    )
    assert decisions(again) == dict.fromkeys(outputs(), "skipped")
    assert mtimes(out) == before
    assert (out / "_SUCCESS").exists()

    manifest = read_manifest(out)
    assert manifest["manifest_version"] == 3
    assert manifest["model"]["sha256"] == sha256_of(mlp_model)
    assert (manifest["model"]["version"], manifest["model"]["signature"]) == (None, None)
    assert manifest["model"]["path"] == str(mlp_model)
    options = manifest["options"]
    assert options["keep_columns"] == ["id"] and options["fill_value"] is None
    assert options["on_error"] == "skip" and options["max_error_rate"] == 0.5
    assert options["prediction_column"] == "prediction" and "mapping" in options
    assert "batch_size" not in options and "device" not in options
    [(settings_id, made_with)] = manifest["made_with"].items()
    assert made_with == {
        "model": {"sha256": sha256_of(mlp_model), "version": None, "signature": None},
        "options": options,
        "versions": manifest["versions"],
    }
    assert [entry["output"] for entry in manifest["outputs"]] == outputs()
    for entry, day in zip(manifest["outputs"], DAYS, strict=True):
        assert entry["made_with"] == settings_id
        source = tmp_path / "exports" / f"day={day}" / "part-0.parquet"
        assert entry["inputs"] == [
            {"path": str(source.resolve()), "size": source.stat().st_size,
             "mtime": source.stat().st_mtime}
        ]  # fmt: skip
        assert entry["output_size"] == (out / entry["output"]).stat().st_size


def test_a_replaced_model_file_redoes_every_output_and_says_why(
    tmp_path: Path, mlp_model: Path, other_mlp_model: Path, run_main: RunMain
) -> None:
    write_days(tmp_path / "exports")
    model = tmp_path / "model.keras"
    shutil.copy(mlp_model, model)
    out = tmp_path / "scored"
    predict(run_main, model, tmp_path / "exports", out)
    shutil.copy(other_mlp_model, model)  # retrained: same name, other weights

    again = predict(run_main, model, tmp_path / "exports", out, "--skip_existing")
    assert decisions(again) == dict.fromkeys(outputs(), REASON_MODEL)
    source = pq.read_table(tmp_path / "exports" / "day=2" / "part-0.parquet").to_pandas()
    features = source.drop(index=3)[[f"f{j}" for j in range(N_FEATURES)]].to_numpy()
    expected = reference_predictions(other_mlp_model, features).reshape(-1)
    written = pq.read_table(out / "day=2" / "part-0.parquet").column("prediction").to_numpy()
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-6)
    assert read_manifest(out)["model"]["sha256"] == sha256_of(other_mlp_model)


def test_a_saved_model_with_other_variables_is_redone(
    tmp_path: Path, saved_model_pair: tuple[Path, Path], run_main: RunMain
) -> None:
    first, second = saved_model_pair
    write_days(tmp_path / "exports")
    model = tmp_path / "model"
    shutil.copytree(first, model)
    out = tmp_path / "scored"
    predict(run_main, model, tmp_path / "exports", out)
    recorded = read_manifest(out)["model"]
    assert recorded["signature"] == "serving_default" and recorded["kind"] == "saved_model"
    assert recorded["sha256"] == content_sha256(str(first))[0]
    before = pq.read_table(out / "day=1" / "part-0.parquet").column("prediction")

    # The variables as TensorFlow writes them: the data and its index, which holds the
    # data's checksums; saved_model.pb is untouched.
    for name in os.listdir(second / "variables"):
        shutil.copy(second / "variables" / name, model / "variables" / name)
    again = predict(run_main, model, tmp_path / "exports", out, "--skip_existing")
    assert decisions(again) == dict.fromkeys(outputs(), REASON_MODEL)
    after = pq.read_table(out / "day=1" / "part-0.parquet").column("prediction")
    assert not np.allclose(before.to_numpy(), after.to_numpy())
    changed = read_manifest(out)["model"]["sha256"]
    assert changed == content_sha256(str(model))[0] != recorded["sha256"]


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--fill_value", "0", "options changed: fill_value"),
        ("--keep_columns", "id", "options changed: keep_columns, mapping"),
        ("--prediction_column", "p_churn", "options changed: prediction_column"),
        ("--batch_size", "7", "skipped"),
    ],
)
def test_an_option_that_changes_predictions_redoes_and_others_do_not(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, option: str, value: str, reason: str
) -> None:
    write_days(tmp_path / "exports")
    out = tmp_path / "scored"
    predict(run_main, mlp_model, tmp_path / "exports", out, "--batch_size", "16")
    extra = [option, value] if option == "--batch_size" else ["--batch_size", "16", option, value]
    again = predict(run_main, mlp_model, tmp_path / "exports", out, *extra, "--skip_existing")
    assert decisions(again) == dict.fromkeys(outputs(), reason)


def test_inputs_named_relative_or_absolute_are_the_same_inputs(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    write_days(tmp_path / "exports")
    predict(run_main, mlp_model, "exports", "scored", cwd=tmp_path)
    out = tmp_path / "scored"
    before = mtimes(out)
    again = predict(
        run_main, mlp_model, tmp_path / "exports", out, "--skip_existing", cwd=tmp_path / "exports"
    )
    assert decisions(again) == dict.fromkeys(outputs(), "skipped")
    assert mtimes(out) == before
    recorded = [e["inputs"][0]["path"] for e in read_manifest(out)["outputs"]]
    assert recorded == [str((tmp_path / "exports" / name).resolve()) for name in outputs()]


def test_a_touched_input_is_redone_and_the_others_skipped(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    paths = write_days(tmp_path / "exports")
    out = tmp_path / "scored"
    predict(run_main, mlp_model, tmp_path / "exports", out)
    stat = paths[2].stat()
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    again = predict(run_main, mlp_model, tmp_path / "exports", out, "--skip_existing")
    assert decisions(again) == {
        "day=1/part-0.parquet": "skipped",
        "day=2/part-0.parquet": "input changed: mtime",
        "day=3/part-0.parquet": "skipped",
    }


def test_a_record_from_an_older_batchpredict_is_redone(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    write_days(tmp_path / "exports")
    out = tmp_path / "scored"
    predict(run_main, mlp_model, tmp_path / "exports", out)
    # What batchpredict wrote before it recorded the model: inputs by path, size, mtime.
    old_records = []
    for name in outputs():
        source = tmp_path / "exports" / name
        old_records.append(
            {
                "inputs": [
                    {
                        "path": str(source),
                        "size": source.stat().st_size,
                        "mtime": source.stat().st_mtime,
                    }
                ],
                "output": name,
                "output_size": (out / name).stat().st_size,
                "format": "parquet",
                "rows": 41,
                "rejected_rows": 0,
            }
        )
    (out / "_manifest.json").write_text(json.dumps({"written_at": 1.0, "outputs": old_records}))

    again = predict(run_main, mlp_model, tmp_path / "exports", out, "--skip_existing")
    assert decisions(again) == dict.fromkeys(outputs(), REASON_OLD_RECORD)
    assert read_manifest(out)["manifest_version"] == 3


def test_a_removed_or_rewritten_output_is_redone(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    write_days(tmp_path / "exports")
    out = tmp_path / "scored"
    predict(run_main, mlp_model, tmp_path / "exports", out)
    (out / "day=1" / "part-0.parquet").unlink()
    rewritten = out / "day=3" / "part-0.parquet"
    stat = rewritten.stat()
    os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    again = predict(run_main, mlp_model, tmp_path / "exports", out, "--skip_existing")
    assert decisions(again) == {
        "day=1/part-0.parquet": "output missing",
        "day=2/part-0.parquet": "skipped",
        "day=3/part-0.parquet": "output changed since it was recorded",
    }


def test_the_manifest_is_written_once_at_the_end_and_once_on_failure(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real_write = manifest_module.write_whole

    def counting_write(path: str, text: str, what: str = "") -> None:
        if path.endswith("_manifest.json"):
            writes.append(len(json.loads(text)["outputs"]))
        real_write(path, text, what)

    monkeypatch.setattr(manifest_module, "write_whole", counting_write)
    exports = tmp_path / "exports"
    for day in range(1, 9):
        (exports / f"day={day}").mkdir(parents=True)
        write_with_library(make_frame(20, seed=day), exports / f"day={day}" / "p.csv", "csv")
    out = tmp_path / "scored"
    predict(run_main, mlp_model, exports, out)
    assert writes == [8]  # once, at the end; not once per output
    assert not (out / "_manifest.journal").exists()

    # A failing run records what it finished before failing, for the next --skip_existing.
    writes.clear()
    bad = exports / "day=6" / "p.csv"
    bad.write_text("id,f0,f1,f2,f3,segment\n" + "1,x,2,3,4,a\n" * 20)
    failed = predict(run_main, mlp_model, exports, out, "--skip_existing", code=65)
    assert "day=6/p.csv" in failed.stderr
    assert writes == [8]  # on failure: 5 skipped, 3 kept from the previous run
    assert len(read_manifest(out)["outputs"]) == 8
    assert not (out / "_SUCCESS").exists()
    assert not (out / "_manifest.journal").exists()
    bad.write_text("id,f0,f1,f2,f3,segment\n" + "1,1,2,3,4,a\n" * 20)
    fixed = predict(run_main, mlp_model, exports, out, "--skip_existing")
    assert decisions(fixed) == {
        **{f"day={d}/p.csv": "skipped" for d in (1, 2, 3, 4, 5, 7, 8)},
        "day=6/p.csv": "input changed: mtime, size",
    }


def test_the_content_hash_covers_every_file_and_its_name(tmp_path: Path) -> None:
    model = tmp_path / "sm"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00" * 3_000_000)
    (model / "variables" / "variables.index").write_bytes(b"index")
    digest, files, size = content_sha256(str(model))
    assert (files, size) == (3, 3_000_010)

    copy = tmp_path / "elsewhere" / "sm"
    shutil.copytree(model, copy)
    assert content_sha256(str(copy))[0] == digest  # where it is does not matter

    data = copy / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(b"\x00" * 2_999_999 + b"\x01")  # one byte, past the first block
    assert content_sha256(str(copy))[0] != digest
    shutil.copytree(model, copy, dirs_exist_ok=True)
    assert content_sha256(str(copy))[0] == digest
    (copy / "variables" / "variables.index").rename(copy / "variables" / "other.index")
    assert content_sha256(str(copy))[0] != digest

    single = tmp_path / "m.keras"
    single.write_bytes(b"keras zip")
    assert content_sha256(str(single)) == (hashlib.sha256(b"keras zip").hexdigest(), 1, 9)


def test_a_model_and_inputs_in_a_bucket(
    store: Store,
    tmp_path: Path,
    mlp_model: Path,
    other_mlp_model: Path,
    run_main: RunMain,
) -> None:
    """The cached copy of a bucket's model is hashed (same bytes, same identity as a local
    file); inputs in a bucket are known by URI, size, modification time and ETag."""
    name = store.new_bucket()
    env = {**store.env, "BATCHPREDICT_CACHE_DIR": str(tmp_path / "cache")}
    store.upload(name, "models/churn.keras", mlp_model)
    for path in write_days(tmp_path / "exports").values():
        key = f"in/{path.parent.name}/part-0.parquet"
        store.upload(name, key, path)
    model, inputs = store.uri(name, "models/churn.keras"), store.uri(name, "in/")
    out = tmp_path / "out"
    predict(run_main, model, inputs, out, env=env)
    recorded = read_manifest(out)
    assert recorded["model"]["path"] == model
    assert recorded["model"]["loaded_from"].startswith(str(tmp_path / "cache"))
    assert recorded["model"]["sha256"] == sha256_of(mlp_model)
    source = recorded["outputs"][0]["inputs"][0]
    assert source["path"] == store.uri(name, "in/day=1/part-0.parquet")
    assert source["etag"] and source["size"] and source["mtime"]

    again = predict(run_main, model, inputs, out, "--skip_existing", env=env)
    assert decisions(again) == dict.fromkeys(outputs(), "skipped")

    store.upload(name, "models/churn.keras", other_mlp_model)
    frame = make_frame(40, seed=9)
    changed = write_with_library(frame, tmp_path / "changed.parquet", "parquet")
    store.upload(name, "in/day=3/part-0.parquet", changed)
    redone = decisions(predict(run_main, model, inputs, out, "--skip_existing", env=env))
    assert redone["day=1/part-0.parquet"] == REASON_MODEL
    assert redone["day=3/part-0.parquet"].startswith(f"{REASON_MODEL}; input changed: etag")
