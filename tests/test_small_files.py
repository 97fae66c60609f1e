"""Many small inputs: rows of consecutive files share model calls yet every input gets its
own output, rows and rejects as before; the manifest is journaled while the run goes, and
a run that dies mid-way is resumed from its journal.

Real Keras model (`mlp_model`), CSV and JSON lines written by pyarrow and pandas, the CLI
called in-process."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import conftest
from batchpredict import manifest as manifest_module
from batchpredict.journal import JOURNAL
from conftest import N_FEATURES, Completed, make_frame, read_with_library

RunMain = Callable[..., Completed]
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def write_parts(folder: Path, count: int, rows: int, fmt: str = "csv") -> list[Path]:
    """`count` small inputs under `folder/part-NN/`, ids running on across files."""
    paths = []
    for i in range(count):
        frame = make_frame(rows, seed=i)
        frame["id"] += i * 1000
        (folder / f"part-{i:02d}").mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{i:02d}" / f"d.{'jsonl' if fmt == 'jsonl' else fmt}"
        paths.append(conftest.write_with_library(frame, path, fmt))
    return paths


def predict(run_main: RunMain, inputs: Path, out: Path, model: Path, *extra: str) -> Completed:
    return run_main(
        "predict", "--model", str(model), "--input_file", str(inputs), "--output_dir", str(out),
        "--features", ",".join(FEATURES), "--keep_columns", "id", "--log_format", "json",
        "--no_progress", *extra,
    )  # fmt: skip


def event(result: Completed, name: str) -> dict[str, Any]:
    [found] = [line for line in result.log_lines() if line["event"] == name]
    return found


def decisions(result: Completed) -> dict[str, str]:
    """Output folder name (`part-NN`) -> "skipped" or the reason it was redone."""
    found = {}
    for line in result.log_lines():
        name = Path(str(line.get("output", ""))).parent.name
        if line["event"] == "output already complete, skipped":
            found[name] = "skipped"
        elif line["event"] == "output redone":
            found[name] = str(line["reason"])
    return found


def test_small_inputs_share_model_calls_and_keep_their_outputs_rows_and_rejects(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    inputs = tmp_path / "in"
    paths = write_parts(inputs, 12, 9)
    # Bad rows in two files: the 3rd data row of part-02 and the 9th (last) of part-07.
    bad = {2: 3, 7: 9}
    for part, row in bad.items():
        frame = read_with_library(paths[part], "csv")
        frame.loc[row - 1, "f1"] = np.nan
        conftest.write_with_library(frame, paths[part], "csv")
    # part-05 is JSON lines: an output of another format in the same group.
    paths[5].unlink()
    conftest.write_with_library(make_frame(9, seed=5).assign(id=lambda f: f.id + 5000),
                       paths[5].with_suffix(".jsonl"), "jsonl")  # fmt: skip
    out = tmp_path / "out"
    result = predict(run_main, inputs, out, mlp_model, "--batch_size", "16",
                     "--on_error", "skip", "--max_error_rate", "0.2")  # fmt: skip
    assert result.returncode == 0, result.stderr

    finished = event(result, "run finished")
    assert (finished["rows_in"], finished["rows_out"], finished["rows_rejected"]) == (108, 106, 2)
    # One model call over all 106 rows: 7 batches of 16, not one call (at least) per file.
    assert finished["batches_per_device"] == {"/CPU:0": math.ceil(106 / 16)}

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    names = [f"part-{i:02d}/d.{'jsonl' if i == 5 else 'csv'}" for i in range(12)]
    assert written == sorted([*names, "_SUCCESS", "_manifest.json", "_rejects.jsonl"])
    for i, name in enumerate(names):
        fmt = "jsonl" if i == 5 else "csv"
        source = read_with_library(inputs / name, fmt)
        if i in bad:
            source = source.drop(index=bad[i] - 1)
        output = read_with_library(out / name, fmt)
        assert output["id"].tolist() == source["id"].tolist(), name
        features = source[FEATURES].to_numpy()
        expected = conftest.reference_predictions(mlp_model, features).reshape(-1)
        np.testing.assert_allclose(output["prediction"], expected, rtol=1e-5, atol=1e-6)

    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["row"], r["column"]) for r in rejects] == [
        (str(paths[2]), 3, "f1"),
        (str(paths[7]), 9, "f1"),
    ]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [(e["output"], e["rows"], e["rejected_rows"]) for e in manifest["outputs"]] == [
        (name, 9 - (i in bad), int(i in bad)) for i, name in enumerate(names)
    ]


def test_an_input_over_the_error_rate_fails_after_the_ones_before_it_are_committed(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    inputs = tmp_path / "in"
    paths = write_parts(inputs, 6, 10)
    frame = read_with_library(paths[3], "csv")
    frame.loc[:4, "f0"] = np.nan  # half of part-03 is bad
    conftest.write_with_library(frame, paths[3], "csv")
    out = tmp_path / "out"
    result = predict(run_main, inputs, out, mlp_model, "--on_error", "skip",
                     "--max_error_rate", "0.2")  # fmt: skip
    assert result.returncode == 65
    assert f"5 of 10 rows rejected for {out / 'part-03' / 'd.csv'}" in result.stderr
    assert "not committed" not in result.stderr  # the rows before were scored once
    written = sorted(p.parent.name for p in out.rglob("d.csv"))
    assert written == ["part-00", "part-01", "part-02"]
    for i in range(3):
        ids = read_with_library(out / f"part-0{i}" / "d.csv", "csv")["id"].tolist()
        assert ids == [i * 1000 + n for n in range(1, 11)]  # each row once
    recorded = json.loads((out / "_manifest.json").read_text())["outputs"]
    assert [e["output"] for e in recorded] == [f"part-0{i}/d.csv" for i in range(3)]
    assert not (out / "_SUCCESS").exists() and not (out / JOURNAL).exists()


def test_an_output_that_cannot_be_written_leaves_no_temporary_file(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    inputs = tmp_path / "in"
    paths = write_parts(inputs, 5, 10)
    conftest.write_with_library(make_frame(300, seed=3), paths[3], "csv")  # too large
    out = tmp_path / "out"
    result = predict(run_main, inputs, out, mlp_model, "--max_output_bytes", "4000")
    assert result.returncode == 74, result.stderr
    assert "--max_output_bytes" in result.stderr
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    # Outputs are committed by several threads: those committed before the failure are
    # in place (whole), and the manifest records only outputs that are. The failed one,
    # and any temporary, is not.
    whole = {f"part-0{i}/d.csv" for i in (0, 1, 2, 4)}
    assert "_manifest.json" in left and left - {"_manifest.json"} <= whole
    recorded = {e["output"] for e in json.loads((out / "_manifest.json").read_text())["outputs"]}
    assert recorded <= left and "part-03/d.csv" not in recorded


@pytest.fixture
def killed_run(
    tmp_path: Path, mlp_model: Path, run_main: RunMain, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, list[Path]]:
    """A run over 6 inputs that dies like a killed process when it reaches part-04 (a bad
    row, and no chance to write the manifest): the journal is all that is left."""
    inputs = tmp_path / "in"
    paths = write_parts(inputs, 6, 10)
    good = paths[4].read_bytes()
    paths[4].write_text("id,f0,f1,f2,f3,segment\n1,x,2,3,4,a\n")
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        patched.setattr(manifest_module.Manifest, "flush", lambda self: None)
        assert predict(run_main, inputs, out, mlp_model).returncode == 65
    paths[4].write_bytes(good)  # the same bytes as before: redone for its changed mtime
    assert not (out / "_manifest.json").exists() and not (out / "_SUCCESS").exists()
    return inputs, out, paths


def test_a_killed_run_is_resumed_from_its_journal(
    killed_run: tuple[Path, Path, list[Path]], mlp_model: Path, run_main: RunMain
) -> None:
    inputs, out, _ = killed_run
    journal = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    assert [line["output"] for line in journal if "output" in line] == [
        f"part-0{i}/d.csv" for i in range(4)
    ]
    before = {i: (out / f"part-0{i}" / "d.csv").stat().st_mtime_ns for i in range(4)}

    again = predict(run_main, inputs, out, mlp_model, "--skip_existing")
    assert again.returncode == 0, again.stderr
    assert decisions(again) == {
        **{f"part-0{i}": "skipped" for i in range(4)},
        **{f"part-0{i}": "not in the manifest" for i in (4, 5)},
    }
    assert {i: (out / f"part-0{i}" / "d.csv").stat().st_mtime_ns for i in range(4)} == before
    assert not (out / JOURNAL).exists() and (out / "_SUCCESS").exists()
    recorded = json.loads((out / "_manifest.json").read_text())["outputs"]
    assert [e["output"] for e in recorded] == [f"part-0{i}/d.csv" for i in range(6)]


def test_a_torn_last_journal_line_is_ignored(
    killed_run: tuple[Path, Path, list[Path]], mlp_model: Path, run_main: RunMain
) -> None:
    inputs, out, _ = killed_run
    text = (out / JOURNAL).read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    assert json.loads(last)["output"] == "part-03/d.csv"
    (out / JOURNAL).write_text(text[: len(text) - len(last) // 2])  # cut mid-line

    again = predict(run_main, inputs, out, mlp_model, "--skip_existing")
    assert again.returncode == 0, again.stderr
    assert decisions(again) == {
        **{f"part-0{i}": "skipped" for i in range(3)},
        **{f"part-0{i}": "not in the manifest" for i in (3, 4, 5)},
    }


def test_a_journal_without_its_settings_line_redoes_its_outputs(
    killed_run: tuple[Path, Path, list[Path]], mlp_model: Path, run_main: RunMain
) -> None:
    inputs, out, _ = killed_run
    lines = (out / JOURNAL).read_text().splitlines()
    assert "output" not in json.loads(lines[0])  # the (model, options) the records name
    (out / JOURNAL).write_text("\n".join(lines[1:]) + "\n")
    again = predict(run_main, inputs, out, mlp_model, "--skip_existing")
    assert again.returncode == 0, again.stderr
    assert set(decisions(again).values()) == {
        manifest_module.REASON_OLD_RECORD,
        "not in the manifest",
    }


def test_on_a_store_the_journal_is_uploaded_in_segments_and_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Object stores cannot append: lines go up as numbered segments, read back in order;
    a segment cut short loses only its torn line."""
    fsspec = pytest.importorskip("fsspec")
    from batchpredict import journal as journal_module

    memory = fsspec.filesystem("memory")
    folder = "memory://journal-test/out"
    journal = journal_module.Journal(folder)
    monkeypatch.setattr(journal_module, "UPLOAD_SECONDS", 0.0)
    journal.append({"output": "a.csv"})
    journal.append({"output": "b.csv"})
    monkeypatch.setattr(journal_module, "UPLOAD_SECONDS", 3600.0)
    journal.append({"output": "c.csv"})  # pending
    segments = sorted(memory.find("/journal-test/out"))
    assert segments == [f"/journal-test/out/{JOURNAL}.{n:06d}" for n in (1, 2)]
    journal.sync()
    memory.pipe(f"/journal-test/out/{JOURNAL}.000004", b'{"output": "d.csv"}\n{"outp')
    assert [line["output"] for line in journal_module.Journal(folder).read()] == [
        "a.csv", "b.csv", "c.csv", "d.csv",
    ]  # fmt: skip
    journal.remove()
    assert memory.find("/journal-test/out") == []
