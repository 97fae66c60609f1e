"""benchmarks/bench.py runs end to end on a tiny input and writes the results it documents.

No timing assertions: the machine is shared, and the benchmark's numbers are ratios read by
people, not checked by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_run_writes_results_with_the_documented_keys(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench.py"),
        "--rows",
        "2000",
        "--formats",
        "csv",
        "--contenders",
        "batchpredict,seed_tuned",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads((tmp_path / "results.json").read_text())
    assert {"date", "command", "rows", "machine", "versions", "help_seconds", "formats"} <= set(
        report
    )
    assert report["rows"] == 2000
    assert list(report["formats"]) == ["csv"]
    csv = report["formats"]["csv"]
    assert {
        "startup_seconds",
        "processing_seconds",
        "stage_sum_seconds",
        "stage_max_seconds",
    } <= set(csv)
    assert set(csv["contenders"]) == {"batchpredict", "batchpredict_1row", "seed_tuned"}
    for name, result in csv["contenders"].items():
        assert result["status"] == "ok", (name, result["status"])
        assert {"seconds", "rows_per_second", "peak_rss_mib", "runs"} <= set(result)
        assert result["peak_rss_mib"] > 0
    assert {"speedup", "reported_seconds", "after_startup_seconds"} <= set(
        csv["contenders"]["batchpredict"]
    )
    assert "speedup" in csv["contenders"]["seed_tuned"]
    assert csv["stage_sum_seconds"] is None  # no stage was asked for

    markdown = (tmp_path / "results.md").read_text()
    assert "| contender | seconds | rows/s | peak RSS MiB | batchpredict speed-up |" in markdown
    assert (tmp_path / "work" / "csv-batchpredict.csv").exists()
