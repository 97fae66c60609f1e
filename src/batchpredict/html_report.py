"""`batchpredict report`: one self-contained HTML page from a stats file (README "Report").

The page needs no network: its styles are inline, it has no scripts, and its charts are
matplotlib figures saved as SVG and put in the page itself (text as SVG text, so no font
files). matplotlib is the `report` extra, imported only here, when a report is made.
Every string from a stats file (column names, values, paths) comes from user data and is
HTML-escaped, and none reaches matplotlib, which would read `$...$` as math.

`drift_between` measures the drift of two stats files (with `drift.compare`, as a run
does), for a report against a baseline the run was not compared with.
(The module is not named `report`: importing it would then replace the package's
`batchpredict.report` function with the module.)
"""

from __future__ import annotations

import html
import importlib
import io
import math
import re
from typing import Any

from batchpredict import atomic, drift, storage
from batchpredict.errors import ConfigError, DataError, OutputError

_INSTALL = "pip install 'batchpredict[report]'"
_MISSING = "—"


def write_report(stats_path: str, output: str, baseline_path: str | None = None) -> None:
    """Write the HTML report of the stats file at `stats_path` (a path or URI) to `output`
    atomically; with `baseline_path`, against that stats file."""
    _matplotlib()  # before reading anything: 78 without the extra
    for read in (stats_path, baseline_path):
        if read is not None and storage.identity(read) == storage.identity(output):
            raise OutputError(f"{output}: the report would overwrite the stats file it reads")
    stats = load_stats(stats_path)
    baseline = load_stats(baseline_path) if baseline_path is not None else None
    try:
        page = render_report(stats, baseline, baseline_name=baseline_path)
    except DataError as exc:
        against = f" against {baseline_path}" if baseline_path is not None else ""
        raise DataError(f"{stats_path}{against}: {exc}") from exc
    atomic.write_whole(output, page, "report")


def load_stats(path: str) -> dict[str, Any]:
    """The stats file at `path` (see `drift.load_stats`)."""
    return drift.load_stats(path)


# --- drift -----------------------------------------------------------------------------


def drift_between(
    stats: dict[str, Any],
    baseline: dict[str, Any],
    *,
    name: str | None = None,
    max_drift: float | None = None,
) -> dict[str, Any]:
    """The DRIFT object of `stats` against `baseline`, measured as a run measures it
    (`drift.compare`); a column the baseline lacks, or has of another kind, has null PSI
    and KS rather than failing the report."""
    return drift.compare(baseline, stats, where=name, max_drift=max_drift, strict=False)


def _sketch(column: dict[str, Any], owner: str) -> Any:
    """The column's KLL sketch, None when it has none; 65 when it is not one."""
    encoded = column.get("sketch")
    if not isinstance(encoded, str):
        return None
    return drift.kll_from_text(encoded, drift.where_column(column.get("name"), owner))


# --- the page --------------------------------------------------------------------------


def render_report(
    stats: dict[str, Any], baseline: dict[str, Any] | None, *, baseline_name: str | None = None
) -> str:
    """The HTML page of `stats` (a stats file's object), against `baseline` when given.

    The drift shown is the stats file's own when it was measured against `baseline_name`
    (or when no baseline is given); otherwise it is computed here (`drift_between`)."""
    drift = _dict(stats.get("drift")) or None
    computed = baseline is not None and (drift is None or drift.get("baseline") != baseline_name)
    if computed and baseline is not None:
        drift = drift_between(stats, baseline, name=baseline_name)
    charts = _Charts()
    body = [
        _header(stats, baseline_name if baseline is not None else None),
        _rows_section(stats),
        _timing_section(stats),
        _predictions_section(stats, baseline, charts),
        _drift_section(drift, computed),
        _features_section(stats, baseline),
    ]
    return _PAGE.format(title=_esc(_title(stats)), style=_STYLE, body="\n".join(body))


def _title(stats: dict[str, Any]) -> str:
    model = _dict(stats.get("model")).get("path")
    return f"batchpredict report: {model}" if model else "batchpredict report"


def _header(stats: dict[str, Any], baseline_name: str | None) -> str:
    model = _dict(stats.get("model"))
    inputs = [str(i) for i in _list(stats.get("inputs"))]
    rows = [
        ("Model", _esc(model.get("path"))),
        ("Model SHA-256", _esc(model.get("sha256"))),
        ("Kind", _esc(stats.get("kind"))),
        ("Written at", _esc(stats.get("written_at"))),
        ("Inputs", "<br>".join(_esc(i) for i in inputs) or _MISSING),
    ]
    if baseline_name is not None:
        rows.append(("Baseline", _esc(baseline_name)))
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h1>{_esc(_title(stats))}</h1>\n<table class='facts'>{cells}</table>"


def _rows_section(stats: dict[str, Any]) -> str:
    rows = _dict(stats.get("rows"))
    read, rejected = _number(rows.get("read")), _number(rows.get("rejected"))
    share = f" ({rejected / read:.2%} of rows read)" if read and rejected is not None else ""
    cells = [
        ("Rows read (in)", _fmt(rows.get("read"))),
        ("Rows written (out)", _fmt(rows.get("written"))),
        ("Rows rejected", _fmt(rows.get("rejected")) + share),
    ]
    body = "".join(f"<tr><th>{k}</th><td class='num'>{v}</td></tr>" for k, v in cells)
    return f"<h2>Rows</h2>\n<table class='facts'>{body}</table>"


def _timing_section(stats: dict[str, Any]) -> str:
    seconds = _number(stats.get("seconds"))
    read = _number(_dict(stats.get("rows")).get("read"))
    cells = [("Wall time (s)", _fmt(stats.get("seconds")))]
    if seconds and read is not None:
        cells.append(("Rows read per second", _fmt(read / seconds)))
    cells += [(f"{_esc(k)} (s)", _fmt(v)) for k, v in _dict(stats.get("timing")).items()]
    body = "".join(f"<tr><th>{k}</th><td class='num'>{v}</td></tr>" for k, v in cells)
    return f"<h2>Timing</h2>\n<table class='facts'>{body}</table>"


def _predictions_section(
    stats: dict[str, Any], baseline: dict[str, Any] | None, charts: _Charts
) -> str:
    parts = ["<h2>Prediction distribution</h2>"]
    theirs = {c.get("name"): c for c in _columns(baseline or {}, "predictions")}
    columns = _columns(stats, "predictions")
    if not columns:
        parts.append("<p>No prediction columns (a profile of the inputs).</p>")
    for column in columns:
        base = theirs.get(column.get("name"))
        parts.append(f"<h3>{_esc(column.get('name'))}</h3>")
        if column.get("kind") == "numeric":
            parts.append(charts.distribution(column, base))
            parts.append(_numeric_summary([column]))
        elif column.get("kind") == "label":
            theirs_labels = _label_counts(base) if base is not None else None
            parts.append(_counts_table("label", _label_counts(column), theirs_labels))
        else:
            theirs_top = _top_counts(base) if base is not None else None
            parts.append(_counts_table("value", _top_counts(column), theirs_top))
    return "\n".join(parts)


def _drift_section(drift: dict[str, Any] | None, computed: bool) -> str:
    if drift is None:
        return "<h2>Drift</h2>\n<p>No baseline: this run was not compared with another.</p>"
    exceeded = {str(n) for n in _list(drift.get("exceeded"))}
    limit = drift.get("max_drift")
    source = (
        "computed by the report from both stats files' sketches"
        if computed
        else "as the run measured it"
    )
    intro = f"Against {_esc(drift.get('baseline'))}, {source}; highest PSI first. " + (
        f"Limit ({_esc(drift.get('measure') or 'psi')}): {_fmt(limit)}; "
        f"{len(exceeded)} column(s) over it, marked."
        if limit is not None
        else "No limit applied (--max_drift)."
    )
    rows = []
    entries = [c for c in _list(drift.get("columns")) if isinstance(c, dict)]
    entries.sort(key=lambda c: -(_number(c.get("psi")) or 0) if c.get("psi") is not None else 1)
    for entry in entries:
        over = str(entry.get("name")) in exceeded
        mark = " class='exceeded'" if over else ""
        rows.append(
            f"<tr{mark}><td>{_esc(entry.get('name'))}</td><td>{_esc(entry.get('role'))}</td>"
            f"<td class='num'>{_fmt(entry.get('psi'))}</td>"
            f"<td class='num'>{_fmt(entry.get('ks'))}</td>"
            f"<td>{'over the limit' if over else ''}</td></tr>"
        )
    head = "<tr><th>column</th><th>role</th><th>PSI</th><th>KS</th><th></th></tr>"
    table = f"<table class='grid drift'>{head}{''.join(rows)}</table>"
    return f"<h2>Drift</h2>\n<p>{intro}</p>\n{table}"


def _features_section(stats: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    columns = _columns(stats, "features")
    parts = ["<h2>Features</h2>"]
    numeric = [c for c in columns if c.get("kind") == "numeric"]
    if numeric:
        parts.append(_numeric_summary(numeric))
    theirs = {c.get("name"): c for c in _columns(baseline or {}, "features")}
    for column in columns:
        if column.get("kind") == "numeric":
            continue
        base = theirs.get(column.get("name"))
        parts.append(f"<h3>{_esc(column.get('name'))} ({_esc(column.get('kind'))})</h3>")
        facts = (
            f"{_fmt(column.get('count'))} values, {_fmt(column.get('nulls'))} null, "
            f"{_fmt(column.get('rejected'))} rejected, about "
            f"{_fmt(column.get('distinct_estimate'))} distinct"
        )
        parts.append(f"<p>{facts}</p>")
        theirs_top = _top_counts(base) if base is not None else None
        parts.append(_counts_table("value", _top_counts(column), theirs_top))
    if not columns:
        parts.append("<p>No feature statistics.</p>")
    return "\n".join(parts)


_SUMMARY_FIELDS = ("count", "nulls", "rejected", "mean", "std", "min")


def _numeric_summary(columns: list[dict[str, Any]]) -> str:
    """One row per numeric column: counts, moments, quantiles and a small histogram."""
    quantile_names = ("p01", "p25", "p50", "p75", "p99")
    head = "".join(
        f"<th>{h}</th>" for h in ("column", *_SUMMARY_FIELDS, *quantile_names, "max", "histogram")
    )
    rows = []
    for column in columns:
        quantiles = _dict(column.get("quantiles"))
        values = [column.get(f) for f in _SUMMARY_FIELDS]
        values += [quantiles.get(q) for q in quantile_names] + [column.get("max")]
        cells = "".join(f"<td class='num'>{_fmt(v)}</td>" for v in values)
        spark = _sparkline(_floats(_dict(column.get("histogram")).get("counts")) or [])
        rows.append(f"<tr><td>{_esc(column.get('name'))}</td>{cells}<td>{spark}</td></tr>")
    return _scrolling(f"<table class='grid'><tr>{head}</tr>{''.join(rows)}</table>")


def _counts_table(what: str, ours: dict[str, float], theirs: dict[str, float] | None) -> str:
    """Values (or labels) with their counts and shares, and the baseline's shares."""
    total = sum(ours.values())
    total_theirs = sum(theirs.values()) if theirs else 0
    head = f"<tr><th>{what}</th><th>count</th><th>share</th>"
    head += "<th>baseline share</th></tr>" if theirs is not None else "</tr>"
    rows = []
    for value, count in ours.items():
        share = f"{count / total:.2%}" if total else _MISSING
        row = f"<tr><td>{_esc(value)}</td><td class='num'>{_fmt(count)}</td>"
        row += f"<td class='num'>{share}</td>"
        if theirs is not None:
            base = theirs.get(value)
            shown = f"{base / total_theirs:.2%}" if base is not None and total_theirs else "—"
            row += f"<td class='num'>{shown}</td>"
        rows.append(row + "</tr>")
    if not rows:
        return "<p>No values.</p>"
    return _scrolling(f"<table class='grid'>{head}{''.join(rows)}</table>")


def _scrolling(table: str) -> str:
    """A table that may be wider than the window (the numeric summary has 14 columns; a
    value is user data of any length) scrolls in its own box, not the page."""
    return f"<div class='scroll'>{table}</div>"


def _sparkline(counts: list[float], width: int = 120, height: int = 28) -> str:
    """A small inline SVG bar chart of histogram counts (no matplotlib: one per column)."""
    top = max(counts, default=0)
    if top <= 0:
        return ""
    step = width / len(counts)
    bars = "".join(
        f"<rect x='{i * step:.1f}' y='{height - c / top * height:.1f}' "
        f"width='{max(step - 1, 0.5):.1f}' height='{c / top * height:.1f}'/>"
        for i, c in enumerate(counts)
    )
    return (
        f"<svg class='spark' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"xmlns='http://www.w3.org/2000/svg' role='img'>{bars}</svg>"
    )


# --- charts ----------------------------------------------------------------------------


def _matplotlib() -> Any:
    """matplotlib, or 78 saying how to install the extra."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError as exc:
        raise ConfigError(f"the report needs matplotlib: {_INSTALL}") from exc


class _Charts:
    """matplotlib figures (no pyplot, so no global state) as SVG for the page; each
    figure's element ids get a prefix of its own, as all share one HTML document."""

    def __init__(self) -> None:
        self.count = 0

    def distribution(self, column: dict[str, Any], base: dict[str, Any] | None) -> str:
        """This run's histogram as shares; with the baseline's column, both as shares of
        the same bins spanning both (from their sketches), so that neither is clipped."""
        if base is not None and base.get("kind") == "numeric":
            ours, theirs = _sketch(column, "this run"), _sketch(base, "the baseline")
            edges = _spanning_edges(ours, theirs)
            if edges is not None:
                series = [
                    ("baseline", drift.bin_shares(theirs, edges)),
                    ("this run", drift.bin_shares(ours, edges)),
                ]
                caption = f"<figcaption>{_BOTH}</figcaption></figure>"
                return self._figure(edges, series).replace("</figure>", caption)
        histogram = _dict(column.get("histogram"))
        edges, counts = _floats(histogram.get("edges")), _floats(histogram.get("counts"))
        if edges is None or counts is None or len(edges) != len(counts) + 1:
            return "<p>No histogram.</p>"
        total = sum(counts)
        return self._figure(edges, [("this run", [c / total if total else 0.0 for c in counts])])

    def _figure(self, edges: list[float], series: list[tuple[str, list[float]]]) -> str:
        matplotlib = _matplotlib()
        figure_module = importlib.import_module("matplotlib.figure")
        self.count += 1
        settings = {"svg.fonttype": "none", "svg.hashsalt": f"chart{self.count}"}
        with matplotlib.rc_context(settings):
            figure = figure_module.Figure(figsize=(7, 2.8), layout="constrained")
            axes = figure.subplots()
            for (label, shares), style in zip(series, _STYLES, strict=False):
                axes.stairs(shares, edges, label=label, **style)
            axes.set_xlabel("value")
            axes.set_ylabel("share of rows")
            if len(series) > 1:
                axes.legend()
            buffer = io.StringIO()
            metadata = dict.fromkeys(("Date", "Creator", "Format", "Type"))
            figure.savefig(buffer, format="svg", metadata=metadata)
        return _inline_svg(buffer.getvalue(), f"c{self.count}-")


_BOTH = (
    "Shares of rows in equal bins over both ranges, from each run's quantile sketch. PSI "
    "(Drift) counts over the baseline's own bins."
)
#: Bins of the chart of a run against its baseline.
_CHART_BINS = 30


def _spanning_edges(ours: Any, theirs: Any) -> list[float] | None:
    """Equal bins from the lowest to the highest value of both sketches (None without
    both)."""
    if ours is None or theirs is None or ours.is_empty() or theirs.is_empty():
        return None
    low = min(ours.get_min_value(), theirs.get_min_value())
    high = max(ours.get_max_value(), theirs.get_max_value())
    if high <= low:  # one value: a bin around it, as numpy does
        low, high = low - 0.5, high + 0.5
    step = (high - low) / _CHART_BINS
    return [low + i * step for i in range(_CHART_BINS)] + [high]


_STYLES = (
    {"fill": True, "alpha": 0.35, "color": "#7f7f7f"},
    {"fill": False, "linewidth": 2, "color": "#1f77b4"},
)
_SVG_START = re.compile(r"<svg\b")
_ID = re.compile(r'\bid="([^"]+)"')
_REFERENCE = re.compile(r'(url\(#|href="#)([^)"]+)')


def _inline_svg(svg: str, prefix: str) -> str:
    """An SVG document as an element of the page: no XML prolog or DOCTYPE, its ids and
    the in-document references to them prefixed."""
    start = _SVG_START.search(svg)
    element = svg[start.start() :] if start else svg
    element = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', element)
    element = _REFERENCE.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", element)
    return f"<figure>{element}</figure>"


# --- reading a stats object defensively --------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _columns(stats: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [c for c in _list(stats.get(key)) if isinstance(c, dict)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _floats(value: Any) -> list[float] | None:
    """A list of finite numbers, else None."""
    numbers = [_number(v) for v in _list(value)]
    return None if not numbers or None in numbers else [n for n in numbers if n is not None]


def _label_counts(column: dict[str, Any]) -> dict[str, float]:
    labels = _dict(column.get("labels"))
    return {str(k): n for k, v in labels.items() if (n := _number(v)) is not None}


def _top_counts(column: dict[str, Any]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for entry in _list(column.get("top")):
        count = _number(_dict(entry).get("count"))
        if count is not None:
            counts[str(_dict(entry).get("value"))] = count
    return counts


def _fmt(value: Any) -> str:
    """A number for the page: integers with separators, others to 4 significant digits."""
    number = _number(value)
    if number is None:
        return _MISSING if value is None else _esc(value)
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:.4g}"


def _esc(value: Any) -> str:
    return _MISSING if value is None else html.escape(str(value), quote=True)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 72em; }
h1 { font-size: 1.4em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.2em 0.7em; text-align: left; vertical-align: top; }
div.scroll { overflow-x: auto; }
table.grid { font-size: 0.92em; }
table.grid th { border-bottom: 1px solid #999; }
table.grid td { border-bottom: 1px solid #eee; }
table.facts th { font-weight: 600; padding-right: 2em; }
table.facts td { overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.exceeded td { background: #fde2e1; font-weight: 600; }
svg.spark rect { fill: #1f77b4; }
figure { margin: 0.5em 0; } figure svg { max-width: 100%; height: auto; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""
