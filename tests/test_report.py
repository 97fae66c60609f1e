"""`batchpredict report`: the HTML page from stats files (real KLL sketches of numpy data),
its self-containment and escaping, the drift it computes against a baseline, and the
command's exit codes."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasketches import kll_doubles_sketch

import batchpredict
from batchpredict.html_report import drift_between, render_report

HOSTILE = "<script>alert(1)</script>"
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}


def numeric(name: str, values: np.ndarray, *, nulls: int = 0) -> dict[str, Any]:
    """A numeric COLUMN of the stats file format, with a real serialized KLL sketch."""
    values = np.asarray(values, dtype=float)
    sketch = kll_doubles_sketch(800)  # as runs write them (run_stats)
    sketch.update(values)
    counts, edges = np.histogram(values, bins=20)
    quantiles = {key: float(np.quantile(values, q)) for key, q in QUANTILES.items()}
    quantiles["p99"] = float(np.quantile(values, 0.99))
    return {
        "name": name,
        "kind": "numeric",
        "count": int(values.size),
        "nulls": nulls,
        "rejected": 0,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": quantiles,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "sketch": base64.b64encode(sketch.serialize()).decode("ascii"),
        "quantile_rank_error": sketch.normalized_rank_error(False),
    }


def categorical(name: str, values: list[str]) -> dict[str, Any]:
    """A string COLUMN: its top values, most frequent first."""
    found, counts = np.unique(np.asarray(values), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:20]
    top = [{"value": str(found[i]), "count": int(counts[i])} for i in order]
    return {
        "name": name,
        "kind": "string",
        "count": len(values),
        "nulls": 0,
        "rejected": 0,
        "distinct_estimate": float(len(found)),
        "top": top,
    }


def labels(name: str, counts: dict[str, int]) -> dict[str, Any]:
    return {"name": name, "kind": "label", "count": sum(counts.values()), "labels": counts}


def stats(
    features: list[dict[str, Any]],
    predictions: list[dict[str, Any]],
    *,
    rows: tuple[int, int, int] = (5000, 4990, 10),
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    read, written, rejected = rows
    return {
        "stats_version": 1,
        "kind": "run",
        "written_at": "2026-11-30T07:00:00Z",
        "model": {"path": "models/churn.keras", "sha256": "ab" * 32},
        "inputs": ["data/day=1/a.csv", "data/day=1/b.csv"],
        "rows": {"read": read, "written": written, "rejected": rejected},
        "seconds": 12.5,
        "timing": {"read": 3.25, "predict": 7.5, "write": 1.0},
        "features": features,
        "predictions": predictions,
        "drift": drift,
    }


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "base": rng.normal(0, 1, 5000),
        "mild": rng.normal(0.3, 1, 5000),
        "shifted": rng.normal(3, 1, 5000),
        "score_base": rng.beta(2, 5, 5000),
        "score_now": rng.beta(5, 2, 5000),
    }


@pytest.fixture(scope="module")
def pair(data: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(this run, baseline): x_same unchanged, x_mild a little moved, x_far far moved, the
    score reversed, a city column with a new favourite and labels flipped."""
    base = data["base"]
    baseline = stats(
        [
            numeric("x_same", base),
            numeric("x_mild", base),
            numeric("x_far", base),
            categorical("city", ["Paris"] * 60 + ["Lyon"] * 30 + ["Nice"] * 10),
        ],
        [numeric("score", data["score_base"]), labels("label", {"churn": 200, "stay": 800})],
    )
    run = stats(
        [
            numeric("x_same", base),
            numeric("x_mild", data["mild"]),
            numeric("x_far", data["shifted"]),
            categorical("city", ["Paris"] * 10 + ["Lyon"] * 30 + ["Nice"] * 60),
        ],
        [numeric("score", data["score_now"]), labels("label", {"churn": 800, "stay": 200})],
    )
    return run, baseline


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


class _Tables(HTMLParser):
    """Each table's rows as lists of cell texts, and each row's class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[tuple[str, list[str]]]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append((dict(attrs).get("class") or "", []))
        elif tag == "tr":
            self.tables[-1][1].append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1][1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def drift_rows(page: str) -> list[tuple[str, list[str]]]:
    parser = _Tables()
    parser.feed(page)
    (rows,) = [rows for cls, rows in parser.tables if "drift" in cls.split()]
    return rows[1:]  # without the heading


# --- drift_between ---------------------------------------------------------------------


def column_drift(drift: dict[str, Any], name: str = "x_same") -> dict[str, Any]:
    (column,) = [c for c in drift["columns"] if c["name"] == name]
    return column


def exact_psi(base: np.ndarray, now: np.ndarray, edges: list[float]) -> float:
    inner = np.asarray(edges[1:-1])
    p = np.bincount(np.searchsorted(inner, base, side="right"), minlength=len(edges) - 1)
    q = np.bincount(np.searchsorted(inner, now, side="right"), minlength=len(edges) - 1)
    p = np.maximum(p / p.sum(), 1e-4)
    q = np.maximum(q / q.sum(), 1e-4)
    return float(np.sum((p - q) * np.log(p / q)))


def exact_ks(base: np.ndarray, now: np.ndarray) -> float:
    points = np.sort(np.concatenate([base, now]))
    cdf_base = np.searchsorted(np.sort(base), points, side="right") / base.size
    cdf_now = np.searchsorted(np.sort(now), points, side="right") / now.size
    return float(np.max(np.abs(cdf_base - cdf_now)))


def test_drift_of_the_same_data_is_zero_and_of_shifted_data_large(
    pair: tuple[dict[str, Any], dict[str, Any]], data: dict[str, np.ndarray]
) -> None:
    run, baseline = pair
    drift = drift_between(run, baseline, name="base.json", max_drift=0.2)
    by_name = {c["name"]: c for c in drift["columns"]}
    # Two sketches of the same values: each within its rank error, so PSI is near 0.
    assert by_name["x_same"]["psi"] < 0.01
    assert by_name["x_same"]["ks"] < 0.03
    edges = baseline["features"][0]["histogram"]["edges"]
    for name, now in (("x_mild", data["mild"]), ("x_far", data["shifted"])):
        # Near the exact answers: this run's shares come from its sketch (1.3% rank error).
        assert by_name[name]["psi"] == pytest.approx(
            exact_psi(data["base"], now, edges), rel=0.1, abs=0.05
        )
        assert by_name[name]["ks"] == pytest.approx(exact_ks(data["base"], now), abs=0.03)
    assert 0.05 < by_name["x_mild"]["psi"] < 0.2
    assert by_name["x_far"]["psi"] > 3
    assert by_name["x_far"]["ks"] > 0.8
    assert by_name["city"]["psi"] > 1 and by_name["city"]["ks"] is None
    assert by_name["label"]["psi"] > 0.5 and by_name["label"]["role"] == "prediction"
    assert by_name["score"]["role"] == "prediction" and by_name["score"]["psi"] > 1
    psis = [c["psi"] for c in drift["columns"]]
    assert psis == sorted(psis, reverse=True)
    assert drift["baseline"] == "base.json" and drift["measure"] == "psi"
    assert set(drift["exceeded"]) == {"x_far", "city", "label", "score"}


@pytest.mark.parametrize("shift", [0.0, 0.4, 2.0])
def test_drift_is_the_documented_psi_and_ks(shift: float) -> None:
    """With samples small enough for exact sketches (n <= k), PSI over the baseline's bins
    (outer bins open-ended, shares floored) and KS are the exact ones."""
    rng = np.random.default_rng(3)
    base, now = rng.normal(0, 1, 150), rng.normal(shift, 1.5, 180)
    baseline = stats([numeric("x", base)], [])
    run = stats([numeric("x", now)], [])
    (column,) = drift_between(run, baseline)["columns"]
    edges = baseline["features"][0]["histogram"]["edges"]
    assert column["psi"] == pytest.approx(exact_psi(base, now, edges), rel=1e-9)
    assert column["ks"] == pytest.approx(exact_ks(base, now), abs=1 / 180)


def test_drift_of_another_sample_of_the_same_distribution_is_small(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """Other bins than the baseline's: this run's shares come from its sketch, still
    under 0.1, the usual "no shift" PSI."""
    run, baseline = pair
    other = np.random.default_rng(8).normal(0, 1, 5000)
    drift = drift_between({**run, "features": [numeric("x_same", other)]}, baseline)
    column = column_drift(drift)
    assert column["name"] == "x_same" and 0 < column["psi"] < 0.1 and column["ks"] < 0.05


def test_drift_of_a_column_the_baseline_lacks_is_unknown_and_last(
    pair: tuple[dict[str, Any], dict[str, Any]], data: dict[str, np.ndarray]
) -> None:
    run, baseline = pair
    run = {**run, "features": [*run["features"], numeric("x_new", data["base"])]}
    drift = drift_between(run, baseline, max_drift=0.0)
    assert drift["columns"][-1] == {"name": "x_new", "role": "feature", "psi": None, "ks": None}
    assert "x_new" not in drift["exceeded"]
    assert drift_between(run, baseline)["exceeded"] == []  # no limit, nothing exceeded


# --- the page --------------------------------------------------------------------------


def test_the_page_is_self_contained(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    run, baseline = pair
    page = render_report(run, baseline, baseline_name="base.json")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "<img" not in page and "<iframe" not in page and "<!DOCTYPE svg" not in page
    references = re.findall(r"""(?:href|src)\s*=\s*["']?([^"'\s>]*)""", page)
    assert references and all(r.startswith("#") for r in references)
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids of the inlined figures collide"
    # One chart per numeric prediction, the run over the baseline (legend as SVG text).
    assert page.count("<figure><svg") == 1
    assert ">baseline<" in page and ">this run<" in page


def test_the_page_shows_rows_timing_and_header(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    run, _ = pair
    page = render_report({**run, "rows": {"read": 12345, "written": 12000, "rejected": 345}}, None)
    assert "Rows read (in)</th><td class='num'>12,345<" in page
    assert "Rows written (out)</th><td class='num'>12,000<" in page
    assert "Rows rejected</th><td class='num'>345 (2.79% of rows read)<" in page
    assert "Wall time (s)</th><td class='num'>12.5<" in page
    assert "predict (s)</th><td class='num'>7.5<" in page
    assert "models/churn.keras" in page and "data/day=1/b.csv" in page
    assert "2026-11-30T07:00:00Z" in page
    assert "No baseline" in page  # no drift block, no baseline given
    assert page.count("<figure><svg") == 1  # the score's histogram alone


def test_the_drift_table_is_sorted_by_psi_and_marks_the_exceeded(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    run, baseline = pair
    drift = drift_between(run, baseline, name="base.json", max_drift=0.2)
    rows = drift_rows(render_report({**run, "drift": drift}, None))
    names = [cells[0] for _, cells in rows]
    assert names == [c["name"] for c in drift["columns"]]
    assert names[-2:] == ["x_mild", "x_same"]
    psis = [float(cells[2]) for _, cells in rows]
    assert psis == sorted(psis, reverse=True) and psis[0] > psis[-1]
    marked = {cells[0] for cls, cells in rows if cls == "exceeded"}
    assert marked == set(drift["exceeded"]) == {"x_far", "city", "label", "score"}


def test_the_run_drift_is_shown_when_it_was_against_that_baseline(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """The stats file's own drift stands (with its limit) when it was measured against the
    baseline given; against another baseline the report computes it."""
    run, baseline = pair
    recorded = {
        "baseline": "base.json",
        "max_drift": 0.5,
        "measure": "psi",
        "columns": [{"name": "x_same", "role": "feature", "psi": 0.777, "ks": 0.1}],
        "exceeded": ["x_same"],
    }
    same = drift_rows(
        render_report({**run, "drift": recorded}, baseline, baseline_name="base.json")
    )
    assert same == [("exceeded", ["x_same", "feature", "0.777", "0.1", "over the limit"])]
    page = render_report({**run, "drift": recorded}, baseline, baseline_name="base.json")
    assert "as the run measured it" in page and "Limit (psi): 0.5; 1 column(s) over it" in page
    other = drift_rows(
        render_report({**run, "drift": recorded}, baseline, baseline_name="old.json")
    )
    assert len(other) == 6 and "0.777" not in str(other)
    assert [cells[0] for _, cells in other][-1] == "x_same"
    page = render_report({**run, "drift": recorded}, baseline, baseline_name="old.json")
    assert "Against old.json, computed by the report" in page and "No limit applied" in page


def test_hostile_names_and_values_are_escaped(data: dict[str, np.ndarray]) -> None:
    """Names and values come from user data: none reaches the page as markup, nor
    matplotlib as math (`$...$`)."""
    run = stats(
        [numeric(HOSTILE, data["base"]), categorical("c", ['"><img src=x onerror=alert(1)>'])],
        [numeric("$\\frac{1}{$", data["score_base"]), labels("l", {"<b>x</b>": 3})],
    )
    run["model"]["path"] = "</title><script>x()</script>"
    run["timing"] = {"<i>read</i>": 1.0}
    baseline = {**run, "features": run["features"][:1]}
    page = render_report(run, baseline, baseline_name="<base>.json")
    assert "<script" not in page and "<img" not in page and "<b>x" not in page
    assert "<i>read" not in page and "<base>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "$\\frac{1}{$" in page


def test_a_column_without_statistics_does_not_break_the_page() -> None:
    broken = stats(
        [{"name": "x", "kind": "numeric", "count": 0, "histogram": None, "sketch": None}],
        [{"name": "p", "kind": "numeric", "histogram": {"edges": [0, 1], "counts": "?"}}],
    )
    broken["rows"] = {"read": None}
    broken["timing"] = "?"
    page = render_report(broken, broken, baseline_name="b.json")
    assert "No histogram." in page and "Rows read (in)</th><td class='num'>—<" in page


# --- the command and the library ---------------------------------------------------------


def test_report_writes_the_page(
    run_main: Callable[..., Any], tmp_path: Path, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    run, baseline = pair
    stats_path = write_json(tmp_path / "run_stats.json", run)
    base_path = write_json(tmp_path / "base.json", baseline)
    output = tmp_path / "report.html"
    result = run_main(
        "report", str(stats_path), "--baseline", str(base_path), "--output", str(output)
    )
    assert result.returncode == 0, result.stderr
    page = output.read_text(encoding="utf-8")
    assert drift_rows(page)[0][1][0] == "x_far"
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob("*.tmp"))
    assert any(line.get("event") == "report written" for line in result.log_lines())


def test_the_library_call_writes_the_same_page(
    tmp_path: Path, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    run, baseline = pair
    stats_path = write_json(tmp_path / "s.json", run)
    base_path = write_json(tmp_path / "b.json", baseline)
    batchpredict.report(str(stats_path), str(tmp_path / "r.html"), baseline=str(base_path))
    assert drift_rows((tmp_path / "r.html").read_text(encoding="utf-8"))[0][1][0] == "x_far"
    assert callable(batchpredict.report)  # not shadowed by a module of the same name


def test_stats_files_and_the_page_at_uris(
    run_main: Callable[..., Any], pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.pipe("/stats/day=2/_stats.json", json.dumps(pair[0]).encode())
    memory.pipe("/stats/day=1/_stats.json", json.dumps(pair[1]).encode())
    try:
        result = run_main(
            "report",
            "memory://stats/day=2/_stats.json",
            "--baseline",
            "memory://stats/day=1/_stats.json",
            "--output",
            "memory://reports/day=2.html",
        )
        assert result.returncode == 0, result.stderr
        page = memory.cat("/reports/day=2.html").decode("utf-8")
        assert drift_rows(page)[0][1][0] == "x_far"
        assert memory.find("/reports") == ["/reports/day=2.html"]
    finally:
        for folder in ("/stats", "/reports"):
            if memory.exists(folder):
                memory.rm(folder, recursive=True)


@pytest.mark.parametrize("which", ["stats", "baseline"])
def test_a_missing_stats_file_is_66(
    run_main: Callable[..., Any], tmp_path: Path, which: str, pair: Any
) -> None:
    present = write_json(tmp_path / "present.json", pair[0])
    missing = tmp_path / "missing.json"
    stats_path, base_path = (missing, present) if which == "stats" else (present, missing)
    output = tmp_path / "r.html"
    result = run_main(
        "report", str(stats_path), "--baseline", str(base_path), "--output", str(output)
    )
    assert result.returncode == 66
    assert f"{missing}: no such file" in result.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not a stats file: not JSON"),
        ("[1, 2]", "not a stats file: not a JSON object"),
        ('{"stats_version": 2}', "stats_version 2 is not 1"),
        ('{"kind": "run"}', "stats_version null is not 1"),
        (b"\xff\xfe", "not a stats file: not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not a stats file: not JSON"),
    ],
)
def test_a_file_that_is_not_a_stats_file_is_65(
    run_main: Callable[..., Any], tmp_path: Path, content: str | bytes, says: str
) -> None:
    path = tmp_path / "stats.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    result = run_main("report", str(path), "--output", str(tmp_path / "r.html"))
    assert result.returncode == 65
    (failure,) = [line for line in result.log_lines() if line.get("event") == "run failed"]
    assert str(failure["error"]).startswith(f"{path}: ") and says in str(failure["error"])
    assert "\n" not in str(failure["error"])
    assert not (tmp_path / "r.html").exists()


def test_a_sketch_that_is_not_one_is_65(
    run_main: Callable[..., Any], tmp_path: Path, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    run, baseline = pair
    bad = {**baseline, "features": [{**baseline["features"][0], "sketch": "bm90IGEgc2tldGNo"}]}
    stats_path = write_json(tmp_path / "s.json", run)
    base_path = write_json(tmp_path / "b.json", bad)
    result = run_main(
        "report", str(stats_path), "--baseline", str(base_path), "--output", str(tmp_path / "r")
    )
    assert result.returncode == 65
    assert (
        f"{stats_path} against {base_path}: column 'x_same' of the baseline: sketch is not a "
        "KLL sketch" in result.stderr
    )


def test_the_page_never_overwrites_a_stats_file(
    run_main: Callable[..., Any], tmp_path: Path, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    stats_path = write_json(tmp_path / "s.json", pair[0])
    base_path = write_json(tmp_path / "b.json", pair[1])
    for output in (stats_path, base_path):
        result = run_main(
            "report", str(stats_path), "--baseline", str(base_path), "--output", str(output)
        )
        assert result.returncode == 73
        assert f"{output}: the report would overwrite the stats file it reads" in result.stderr
        assert json.loads(output.read_text(encoding="utf-8"))["stats_version"] == 1


def test_without_matplotlib_the_report_is_78_and_says_how_to_install(
    run_main: Callable[..., Any],
    tmp_path: Path,
    pair: tuple[dict[str, Any], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    stats_path = write_json(tmp_path / "s.json", pair[0])
    output = tmp_path / "r.html"
    result = run_main("report", str(stats_path), "--output", str(output))
    assert result.returncode == 78
    assert "pip install 'batchpredict[report]'" in result.stderr
    assert not output.exists()


@pytest.mark.slow
def test_help_and_early_failures_import_neither_matplotlib_nor_tensorflow() -> None:
    """--help imports neither; a report that fails at once (66) does not load TensorFlow."""
    code = (
        "import sys\n"
        "from batchpredict import cli\n"
        "for args in (['--help'], ['report', '--help']):\n"
        "    assert cli.main(args) == 0\n"
        "heavy = ('matplotlib', 'tensorflow', 'datasketches')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "assert cli.main(['report', '/nonexistent/s.json', '--output', '/nonexistent/r']) == 66\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
