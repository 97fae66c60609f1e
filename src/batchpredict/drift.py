"""Drift of a run's data against a baseline: both as stats files (README "Statistics and
drift"), compared column by column.

PSI (population stability index) is computed over the baseline's histogram bins, the
first and last open-ended, from the shares of values in each bin, baseline (p) vs this
run (q), each floored at 1e-4: `sum((p - q) * ln(p / q))`; for string and label columns
over the baseline's categories plus "other". KS is the largest difference between the
two CDFs, evaluated with both KLL sketches at the union of both columns' percentiles
(numeric columns only). Rule of thumb for PSI: under 0.1 stable, 0.1-0.25 moderate, over
0.25 a real shift.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from batchpredict.errors import UsageError

#: Each bin's share is floored here, so that an empty bin does not make PSI infinite.
SHARE_FLOOR = 1e-4
#: KS is evaluated at these ranks of each sketch (every percentile).
KS_RANKS = np.linspace(0.0, 1.0, 101).tolist()
#: What `--max_drift` is compared with.
MEASURE = "psi"
ROLES = (("features", "feature"), ("predictions", "prediction"))


def sketches() -> Any:
    """The datasketches module, imported (about 0.1 s) only by runs that use sketches."""
    import datasketches

    return datasketches


def kll_from_text(text: str) -> Any:
    """A `kll_doubles_sketch` from its base64 form in a stats file."""
    return sketches().kll_doubles_sketch.deserialize(base64.b64decode(text))


def frequent_from_text(text: str) -> Any:
    """A `frequent_strings_sketch` from its base64 form in a stats file."""
    return sketches().frequent_strings_sketch.deserialize(base64.b64decode(text))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two share vectors over the same bins, each share floored at `SHARE_FLOOR`."""
    p = np.maximum(np.asarray(expected, dtype=np.float64), SHARE_FLOOR)
    q = np.maximum(np.asarray(actual, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def check_columns(baseline: dict[str, Any], run: dict[str, Any], where: str) -> None:
    """UsageError when the baseline lacks a column of the run or the run one of the
    baseline's: the baseline is of other data or another model."""
    for key, role in ROLES:
        theirs = {c["name"] for c in baseline.get(key, [])}
        ours = {c["name"] for c in run.get(key, [])}
        if theirs != ours:
            missing = sorted(ours - theirs)
            extra = sorted(theirs - ours)
            parts = [f"lacks {role} column(s) {', '.join(missing)}"] if missing else []
            parts += [f"has {role} column(s) {', '.join(extra)} the run has not"] if extra else []
            raise UsageError(
                f"--baseline {where}: {' and '.join(parts)}; give a baseline made with the "
                "same model and features (batchpredict profile)"
            )


def compare(
    baseline: dict[str, Any], run: dict[str, Any], *, where: str, max_drift: float | None
) -> dict[str, Any]:
    """The DRIFT object of the stats file: PSI and KS of every feature and prediction of
    `run` against `baseline`, highest PSI first."""
    check_columns(baseline, run, where)
    measured = []
    for key, role in ROLES:
        base = {c["name"]: c for c in baseline[key]}
        for column in run[key]:
            reference = base[column["name"]]
            if reference.get("kind") != column.get("kind"):
                raise UsageError(
                    f"--baseline {where}: column {column['name']!r} is {reference.get('kind')} "
                    f"there and {column.get('kind')} in this run"
                )
            psi_value, ks_value = measure(reference, column)
            measured.append(
                {"name": column["name"], "role": role, "psi": psi_value, "ks": ks_value}
            )
    measured.sort(key=lambda c: -1.0 if c["psi"] is None else -c["psi"])
    exceeded = [
        c["name"]
        for c in measured
        if max_drift is not None and c["psi"] is not None and c["psi"] > max_drift
    ]
    return {
        "baseline": where,
        "max_drift": max_drift,
        "measure": MEASURE,
        "columns": measured,
        "exceeded": exceeded,
    }


def measure(reference: dict[str, Any], column: dict[str, Any]) -> tuple[float | None, float | None]:
    """(PSI, KS) of one column against the baseline's; None where there are no values."""
    if not reference.get("count") or not column.get("count"):
        return None, None
    if column["kind"] == "numeric":
        base_sketch, run_sketch = (
            kll_from_text(reference["sketch"]),
            kll_from_text(column["sketch"]),
        )
        return _numeric_psi(reference, base_sketch, run_sketch), _ks(base_sketch, run_sketch)
    return _categorical_psi(reference, column), None


def _numeric_psi(reference: dict[str, Any], base_sketch: Any, run_sketch: Any) -> float | None:
    """PSI over the baseline's bins: its interior edges split both sketches' PMFs."""
    histogram = reference.get("histogram")
    if not histogram:
        return None
    splits = np.unique(np.asarray(histogram["edges"][1:-1], dtype=np.float64)).tolist()
    if not splits:
        return 0.0
    return psi(base_sketch.get_pmf(splits), run_sketch.get_pmf(splits))


def _ks(base_sketch: Any, run_sketch: Any) -> float:
    points = np.unique(
        np.concatenate([base_sketch.get_quantiles(KS_RANKS), run_sketch.get_quantiles(KS_RANKS)])
    )
    points = points[np.isfinite(points)].tolist()
    if not points:
        return 0.0
    base = np.asarray(base_sketch.get_cdf(points))[:-1]
    ours = np.asarray(run_sketch.get_cdf(points))[:-1]
    return float(np.max(np.abs(base - ours)))


def _categorical_psi(reference: dict[str, Any], column: dict[str, Any]) -> float:
    """PSI over the baseline's categories (its labels, or its top values) plus "other"."""
    base_counts = _category_counts(reference)
    run_counts = _category_counts(column)
    categories = list(base_counts)
    p = [base_counts[c] / reference["count"] for c in categories]
    if column["kind"] == "string" and column.get("frequent_sketch"):
        sketch = frequent_from_text(column["frequent_sketch"])
        q = [sketch.get_estimate(c) / column["count"] for c in categories]
    else:
        q = [run_counts.get(c, 0) / column["count"] for c in categories]
    p.append(max(0.0, 1.0 - sum(p)))
    q.append(max(0.0, 1.0 - sum(q)))
    return psi(np.asarray(p), np.asarray(q))


def _category_counts(column: dict[str, Any]) -> dict[str, int]:
    if column["kind"] == "label":
        return dict(column.get("labels", {}))
    return {item["value"]: item["count"] for item in column.get("top", [])}


def most_moved(drift: dict[str, Any], limit: int = 5) -> list[str]:
    """`name=psi` of the columns that moved most, for the log line."""
    shown = [c for c in drift["columns"] if c["psi"] is not None][:limit]
    return [f"{c['name']}={c['psi']:.3g}" for c in shown]
