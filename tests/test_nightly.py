"""The README's nightly routine, end to end with a real model and real files: a baseline
made by `profile`, a run against it into --output_dir, `verify` of that folder and a
`report` of its `_stats.json`, for a night like the reference data and a shifted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import N_FEATURES, make_frame, write_with_library

pytest.importorskip("matplotlib")

FEATURES = ",".join(f"f{j}" for j in range(N_FEATURES))


def _night(
    run_main: Callable[..., Any], model: Path, base: Path, tmp_path: Path, shift: float
) -> tuple[Any, Path]:
    frame = make_frame(5_000, seed=11)
    frame["f1"] += shift
    folder = tmp_path / f"exports_{shift}"
    folder.mkdir()
    data = write_with_library(frame, folder / "day.parquet", "parquet")
    out = tmp_path / f"scored_{shift}"
    result = run_main(
        "predict", "--model", str(model), "--input_file", str(data), "--features", FEATURES,
        "--output_dir", str(out), "--baseline", str(base), "--max_drift", "0.25",
    )  # fmt: skip
    return result, out


@pytest.fixture
def base(run_main: Callable[..., Any], mlp_model: Path, tmp_path: Path) -> Path:
    reference = write_with_library(make_frame(5_000, seed=4), tmp_path / "train.csv", "csv")
    base = tmp_path / "base.json"
    result = run_main(
        "profile", "--model", str(mlp_model), "--input_file", str(reference),
        "--features", FEATURES, "--stats_file", str(base), "--no_progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return base


def test_a_night_like_the_reference_is_complete_verified_and_reported(
    run_main: Callable[..., Any], mlp_model: Path, base: Path, tmp_path: Path
) -> None:
    result, out = _night(run_main, mlp_model, base, tmp_path, shift=0.0)
    assert result.returncode == 0, result.stderr
    assert (out / "_SUCCESS").exists()
    verified = run_main("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    page = tmp_path / "night.html"
    reported = run_main("report", str(out / "_stats.json"), "--output", str(page))
    assert reported.returncode == 0, reported.stderr
    html = page.read_text()
    assert "f1" in html and "over the limit" not in html and "<svg" in html


def test_a_shifted_night_is_written_not_marked_complete_and_reported_as_drift(
    run_main: Callable[..., Any], mlp_model: Path, base: Path, tmp_path: Path
) -> None:
    result, out = _night(run_main, mlp_model, base, tmp_path, shift=1.5)
    assert result.returncode == 3, result.stderr
    assert (out / "day.parquet").exists() and not (out / "_SUCCESS").exists()
    # Every output is still what the manifest recorded; the folder is not complete.
    verify_file = run_main("verify", str(out / "day.parquet"))
    assert verify_file.returncode == 0, verify_file.stderr
    verify_folder = run_main("verify", str(out))
    assert verify_folder.returncode == 65 and "_SUCCESS" in verify_folder.stderr
    page = tmp_path / "night.html"
    reported = run_main(
        "report", str(out / "_stats.json"), "--baseline", str(base), "--output", str(page)
    )
    assert reported.returncode == 0, reported.stderr
    html = page.read_text()
    drift_table = html[html.index("Drift") :]
    assert drift_table.index("f1") < drift_table.index("f0")  # the moved column first
    assert "over the limit" in html
