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
import binascii
import json
import math
from typing import Any

import numpy as np

from batchpredict import storage
from batchpredict.errors import DataError, UsageError, error_text

#: Each bin's share is floored here, so that an empty bin does not make PSI infinite.
SHARE_FLOOR = 1e-4
#: KS is evaluated at these ranks of each sketch (every percentile).
KS_RANKS = np.linspace(0.0, 1.0, 101).tolist()
#: What `--max_drift` is compared with.
MEASURE = "psi"
ROLES = (("features", "feature"), ("predictions", "prediction"))


#: The stats file format this reads and writes (README "Statistics and drift").
STATS_VERSION = 1


def load_stats(path: str, option: str = "") -> dict[str, Any]:
    """The stats file at `path` (given as `option`, if by one): 66 when it cannot be read,
    65 when it is not a stats file of this version."""
    where = f"{option} {path}".strip()
    try:
        document = json.loads(storage.read_bytes(path))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise DataError(f"{where}: not a stats file: not JSON: {error_text(exc)}") from exc
    if not isinstance(document, dict):
        raise DataError(f"{where}: not a stats file: not a JSON object")
    version = document.get("stats_version")
    if version != STATS_VERSION or isinstance(version, bool):
        raise DataError(
            f"{where}: not a stats file: stats_version {json.dumps(version)[:40]} is not "
            f"{STATS_VERSION}, the version this reads; make one with batchpredict profile or "
            "--stats_file"
        )
    for key in ("features", "predictions"):
        if not isinstance(document.get(key), list):
            raise DataError(f"{where}: not a stats file: no {key} list")
    return document


def sketches() -> Any:
    """The datasketches module, imported (about 0.1 s) only by runs that use sketches."""
    import datasketches

    return datasketches


def kll_from_text(text: str, where: str = "a column") -> Any:
    """A `kll_doubles_sketch` from its base64 form in a stats file; DataError (65) saying
    `where` it was (`column 'x' of the baseline`) when it is not one."""
    return _decoded(sketches().kll_doubles_sketch, text, where, "a KLL sketch")


def frequent_from_text(text: str, where: str = "a column") -> Any:
    """A `frequent_strings_sketch` from its base64 form in a stats file."""
    return _decoded(sketches().frequent_strings_sketch, text, where, "a frequent-items sketch")


def where_column(name: Any, owner: str | None = None) -> str:
    """`column 'x'` (`of the baseline`), the name shortened: it comes from user data."""
    return f"column {str(name)[:60]!r}" + (f" of {owner}" if owner else "")


def _decoded(kind: Any, text: str, where: str, what: str) -> Any:
    try:
        return kind.deserialize(base64.b64decode(text, validate=True))
    except (TypeError, ValueError, RuntimeError, binascii.Error) as exc:
        raise DataError(f"{where}: sketch is not {what}: {error_text(exc)}") from exc


def bin_shares(sketch: Any, edges: list[float]) -> list[float]:
    """The shares of a sketch's values in the bins of `edges`, the first and last bins
    open-ended (each bin holds its left edge)."""
    splits = np.unique(np.asarray(edges[1:-1], dtype=np.float64)).tolist()
    return [float(share) for share in sketch.get_pmf(splits)] if splits else [1.0]


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
    baseline: dict[str, Any],
    run: dict[str, Any],
    *,
    where: str | None,
    max_drift: float | None,
    strict: bool = True,
) -> dict[str, Any]:
    """The DRIFT object of the stats file: PSI and KS of every feature and prediction of
    `run` against `baseline`, highest PSI first (unknown last). `strict` (a run's
    `--baseline`): a column the baseline lacks, or has of another kind, is a UsageError;
    otherwise (a report against any stats file) its PSI and KS are None."""
    if strict:
        check_columns(baseline, run, str(where))
    measured = []
    for key, role in ROLES:
        base = {c.get("name"): c for c in baseline.get(key, [])}
        for column in run.get(key, []):
            reference = base.get(column.get("name"))
            if reference is None or reference.get("kind") != column.get("kind"):
                if strict:
                    raise UsageError(
                        f"--baseline {where}: column {column['name']!r} is "
                        f"{(reference or {}).get('kind')} there and {column.get('kind')} in "
                        "this run"
                    )
                psi_value, ks_value = None, None
            else:
                psi_value, ks_value = measure(reference, column)
            measured.append(
                {"name": column["name"], "role": role, "psi": psi_value, "ks": ks_value}
            )
    measured.sort(key=lambda c: math.inf if c["psi"] is None else -c["psi"])
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
        if not reference.get("sketch") or not column.get("sketch"):
            return None, None
        base_sketch = kll_from_text(
            reference["sketch"], where_column(column["name"], "the baseline")
        )
        run_sketch = kll_from_text(column["sketch"], where_column(column["name"]))
        return _numeric_psi(reference, base_sketch, run_sketch), _ks(base_sketch, run_sketch)
    return _categorical_psi(reference, column), None


def _numeric_psi(reference: dict[str, Any], base_sketch: Any, run_sketch: Any) -> float | None:
    """PSI over the baseline's bins: its interior edges split both sketches' PMFs."""
    edges = (reference.get("histogram") or {}).get("edges")
    if not edges or len(edges) < 2:
        return None
    return psi(
        np.asarray(bin_shares(base_sketch, edges)), np.asarray(bin_shares(run_sketch, edges))
    )


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
        sketch = frequent_from_text(column["frequent_sketch"], where_column(column["name"]))
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
