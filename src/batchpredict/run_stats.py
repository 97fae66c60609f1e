"""Statistics of every run's data, gathered from the chunks as they stream past the model.

For each file column feeding the model and each prediction column, `RunStats` keeps what
the stats file (`--stats_file`, `_stats.json`, `batchpredict profile`; format: README
"Statistics and drift") reports, in memory that does not grow with the rows:

- numeric: count, nulls, rejected; mean and standard deviation as streaming sums (Chan's
  merge of per-chunk means and squared deviations: exact, unlike the sketch); min, max;
  quantiles and a 20-bin histogram from a KLL sketch (`kll_doubles_sketch`, k=800: ranks
  within about 0.35%). The histogram's counts are the sketch's PMF times the count, so they
  are approximate within the same rank error, and sum to the count exactly.
- string: count, a distinct estimate (HLL) and the most frequent values from a
  `frequent_strings_sketch`: bounded memory and mergeable, and exact while a column holds
  fewer than 768 distinct values (an exact dict would grow with an ID-like column).
  Each chunk's values are counted by Arrow first, so the sketches see each distinct
  value of a chunk once.
- label: exact counts per label (as many as there are class names).

Collectors of separate threads or processes `merge`; one over all data equals the merge.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict import drift, storage
from batchpredict.atomic import write_whole
from batchpredict.config import RunConfig
from batchpredict.observe import get_logger
from batchpredict.summary import Counts

STATS_VERSION = drift.STATS_VERSION
#: The stats file an `--output_dir` gets, beside `_manifest.json`.
STATS_NAME = "_stats.json"
#: KLL's accuracy parameter: normalized rank error about 0.35%, about 20 KB a column (at
#: k=200, 1.3%, the sketch's own error put PSI near 0.05 for identical distributions).
KLL_K = 800
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
QUANTILES["p99"] = 0.99
HISTOGRAM_BINS = 20
TOP_VALUES = 20
#: HLL of 2^12 buckets: distinct estimates within about 1.6%.
HLL_LG_K = 12
#: Frequent-strings map of 2^10 slots: exact counts up to 768 distinct values.
FREQUENT_LG_MAX = 10
#: A prediction output of at most this many values a row gets one column per value
#: (`name_0`, `name_1`, ... as in CSV output); a wider one, one column of all its values.
MAX_SPLIT_OUTPUT = 32


def _number(value: float) -> float | None:
    """A finite number as itself, else None (JSON has no NaN or infinity)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _sketch_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class NumericStats:
    """A numeric column: counts, streaming moments, and a KLL sketch of its values."""

    kind = "numeric"

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.nulls = 0
        self.rejected = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.sketch = drift.sketches().kll_doubles_sketch(KLL_K)

    def add_values(self, values: np.ndarray) -> None:
        """Add non-null float64 values (one dimension), vectorised: no loop per value."""
        n = int(values.size)
        if n == 0:
            return
        # The binding takes a C-contiguous, writable float64 array whole (one call, no
        # Python loop); Arrow's zero-copy arrays are read-only.
        values = np.require(values, np.float64, ["C", "W"])
        mean = float(values.mean())
        deviations = values - mean
        # einsum, not dot: BLAS threads fight the model's for the cores.
        self._combine(n, mean, float(np.einsum("i,i->", deviations, deviations)))
        self.sketch.update(values)  # it keeps the exact min and max too

    def add_column(self, column: pa.ChunkedArray, good: np.ndarray | None) -> None:
        """Add a column as read (all rows): nulls and NaNs of every row are counted, the
        values of the rows kept (`good`) are added; a list column adds its elements."""
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            self.nulls += column.null_count
            kept = column if good is None else column.filter(pa.array(good))
            column, good = pc.list_flatten(kept), None
        values = _floats(column)
        missing = np.isnan(values)
        nulls = int(np.count_nonzero(missing))
        self.nulls += nulls
        if nulls or good is not None:
            values = values[~missing if good is None else (~missing & good)]
        self.add_values(values)

    def _combine(self, n: int, mean: float, m2: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def merge(self, other: NumericStats) -> None:
        self.nulls += other.nulls
        self.rejected += other.rejected
        if other.count:
            self._combine(other.count, other.mean, other.m2)
            self.sketch.merge(other.sketch)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (to send a worker's statistics to the driver): the sketch as bytes."""
        return {**self.__dict__, "sketch": self.sketch.serialize()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        sketch = drift.sketches().kll_doubles_sketch.deserialize(state["sketch"])
        self.__dict__.update({**state, "sketch": sketch})

    @property
    def min(self) -> float:
        return math.inf if self.count == 0 else float(self.sketch.get_min_value())

    @property
    def max(self) -> float:
        return -math.inf if self.count == 0 else float(self.sketch.get_max_value())

    def document(self) -> dict[str, Any]:
        """The column as the stats file has it."""
        empty = self.count == 0
        return {
            "name": self.name,
            "kind": self.kind,
            "count": self.count,
            "nulls": self.nulls,
            "rejected": self.rejected,
            "mean": None if empty else _number(self.mean),
            "std": None if empty else _number(math.sqrt(self.m2 / self.count)),
            "min": None if empty else _number(self.min),
            "max": None if empty else _number(self.max),
            "quantiles": self._quantiles(),
            "histogram": self._histogram(),
            "sketch": _sketch_text(self.sketch.serialize()),
            "quantile_rank_error": self.sketch.normalized_rank_error(False),
        }

    def _quantiles(self) -> dict[str, float | None]:
        if self.count == 0:
            return dict.fromkeys(QUANTILES)
        values = self.sketch.get_quantiles(list(QUANTILES.values()))
        return {key: _number(v) for key, v in zip(QUANTILES, values, strict=True)}

    def _histogram(self) -> dict[str, Any] | None:
        """20 equal-width bins from min to max (the last one closed), counted from the
        sketch's PMF: approximate within its rank error; the counts sum to the count."""
        if self.count == 0 or not (math.isfinite(self.min) and math.isfinite(self.max)):
            return None
        edges = np.linspace(self.min, self.max, HISTOGRAM_BINS + 1)
        if self.min == self.max:
            counts = [self.count] + [0] * (HISTOGRAM_BINS - 1)
        else:
            shares = self.sketch.get_pmf(edges[1:-1].tolist())
            counts = whole_counts(np.asarray(shares) * self.count, self.count)
        return {"edges": edges.tolist(), "counts": counts}


def whole_counts(shares: np.ndarray, total: int) -> list[int]:
    """`shares` (summing to about `total`) rounded to whole numbers summing to `total`
    exactly, the largest remainders rounded up."""
    floors = np.floor(np.clip(shares, 0, None)).astype(np.int64)
    short = total - int(floors.sum())
    if short > 0:
        order = np.argsort(-(shares - floors), kind="stable")
        floors[order[:short]] += 1
    elif short < 0:
        for index in np.argsort(-floors, kind="stable"):
            take = min(int(floors[index]), -short)
            floors[index] -= take
            short += take
            if short == 0:
                break
    return [int(c) for c in floors]


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric (or boolean) column as float64, nulls as NaN."""
    if column.type != pa.float64():
        column = pc.cast(column, pa.float64(), safe=False)
    if isinstance(column, pa.ChunkedArray):
        return np.asarray(column.to_numpy(), dtype=np.float64)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


class StringStats:
    """A string column: counts, a distinct estimate and the most frequent values."""

    kind = "string"

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.nulls = 0
        self.rejected = 0
        self.distinct = drift.sketches().hll_sketch(HLL_LG_K)
        self.frequent = drift.sketches().frequent_strings_sketch(FREQUENT_LG_MAX)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (to send a worker's statistics to the driver): sketches as bytes."""
        return {
            **self.__dict__,
            "distinct": self.distinct.serialize_compact(),
            "frequent": self.frequent.serialize(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        sketches = drift.sketches()
        self.__dict__.update(
            {
                **state,
                "distinct": sketches.hll_sketch.deserialize(state["distinct"]),
                "frequent": sketches.frequent_strings_sketch.deserialize(state["frequent"]),
            }
        )

    def add_column(self, column: pa.ChunkedArray, good: np.ndarray | None) -> None:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            self.nulls += column.null_count
            column = column if good is None else column.filter(pa.array(good))
            column, good = pc.list_flatten(column), None
        self.nulls += column.null_count
        kept = column if good is None else column.filter(pa.array(good))
        try:
            text = pc.cast(kept, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return  # bytes that are not UTF-8: their nulls are counted, values left out
        self.add_counts(pc.value_counts(text))

    def add_counts(self, counted: pa.StructArray) -> None:
        """Add Arrow's `value_counts` of some values: each distinct value once."""
        for value, times in zip(
            counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True
        ):
            if value is None:
                continue
            self.count += times
            self.distinct.update(value)
            self.frequent.update(value, times)

    def merge(self, other: StringStats) -> None:
        self.count += other.count
        self.nulls += other.nulls
        self.rejected += other.rejected
        union = drift.sketches().hll_union(HLL_LG_K)
        union.update(self.distinct)
        union.update(other.distinct)
        self.distinct = union.get_result()
        self.frequent.merge(other.frequent)

    def top(self) -> list[dict[str, Any]]:
        items = self.frequent.get_frequent_items(
            drift.sketches().frequent_items_error_type.NO_FALSE_NEGATIVES
        )
        ranked = sorted(items, key=lambda item: (-item[1], item[0]))[:TOP_VALUES]
        return [{"value": value, "count": int(estimate)} for value, estimate, _, _ in ranked]

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "count": self.count,
            "nulls": self.nulls,
            "rejected": self.rejected,
            "distinct_estimate": self.distinct.get_estimate() if self.count else 0.0,
            "top": self.top(),
            "sketch": _sketch_text(self.distinct.serialize_compact()),
            "frequent_sketch": _sketch_text(self.frequent.serialize()),
        }


class LabelStats:
    """A labelled prediction column: exact counts per label."""

    kind = "label"

    def __init__(self, name: str) -> None:
        self.name = name
        self.labels: Counter[str] = Counter()
        self.nulls = 0
        self.rejected = 0

    @property
    def count(self) -> int:
        return sum(self.labels.values())

    def add_column(self, column: pa.Array | pa.ChunkedArray, good: np.ndarray | None) -> None:
        counted = pc.value_counts(column)
        for value, times in zip(
            counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True
        ):
            if value is not None:
                self.labels[str(value)] += times

    def merge(self, other: LabelStats) -> None:
        self.labels.update(other.labels)

    def document(self) -> dict[str, Any]:
        ranked = dict(sorted(self.labels.items(), key=lambda item: (-item[1], item[0])))
        return {"name": self.name, "kind": self.kind, "count": self.count, "labels": ranked}


ColumnStats = NumericStats | StringStats | LabelStats


class Problem(Protocol):
    """A rejected row's first problem (`conversion.RowProblem`): the column it names."""

    @property
    def column(self) -> str: ...


def _is_numeric(kind: pa.DataType) -> bool:
    """Numbers (or lists of them): what `NumericStats` takes; the rest is text to it."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    number = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    return bool(number or pa.types.is_boolean(kind) or pa.types.is_decimal(kind))


class RunStats:
    """The statistics of one run (or one worker's share of it): features, then predictions,
    each in the order first seen."""

    def __init__(self) -> None:
        self.features: dict[str, ColumnStats] = {}
        self.predictions: dict[str, ColumnStats] = {}

    def observe_read(
        self, table: pa.Table, good: np.ndarray | None, problems: Sequence[Problem]
    ) -> None:
        """A chunk as read (the model's columns, every row): its nulls, the rows rejected
        because of each column, and the values of the rows kept (`good`: None for all)."""
        rejected = Counter(problem.column for problem in problems)
        for name in table.column_names:
            column = table.column(name)
            stats = self.features.get(name)
            if stats is None:
                stats = NumericStats(name) if _is_numeric(column.type) else StringStats(name)
                self.features[name] = stats
            stats.rejected += rejected.get(name, 0)
            stats.add_column(column, good)

    def observe_predictions(
        self,
        predictions: Mapping[str, np.ndarray],
        names: Mapping[str, str],
        labels: Iterable[tuple[str, pa.Array]] = (),
    ) -> None:
        """The model's outputs (by tensor name, named as columns by `names`) and the label
        columns made from them (`labels`: the label and its score)."""
        for tensor, column in names.items():
            values = np.asarray(predictions[tensor])
            rows = len(values)
            flat = values.reshape(rows, -1).astype(np.float64, copy=False)
            width = flat.shape[1]
            if width == 1:
                self._numeric(column).add_values(_finite_or_counted(flat[:, 0], self, column))
            elif width <= MAX_SPLIT_OUTPUT:
                for i in range(width):
                    name = f"{column}_{i}"
                    self._numeric(name).add_values(_finite_or_counted(flat[:, i], self, name))
            else:
                self._numeric(column).add_values(_finite_or_counted(flat.ravel(), self, column))
        for name, array in labels:
            if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
                stats = self.predictions.setdefault(name, LabelStats(name))
                stats.add_column(array, None)
            else:
                self._numeric(name).add_values(_finite_or_counted(_floats(array), self, name))

    def _numeric(self, name: str) -> NumericStats:
        stats = self.predictions.get(name)
        if stats is None:
            stats = self.predictions[name] = NumericStats(name)
        assert isinstance(stats, NumericStats)
        return stats

    def merge(self, other: RunStats) -> None:
        """Add another collector's statistics (another thread's or worker's rows)."""
        for mine, theirs in (
            (self.features, other.features),
            (self.predictions, other.predictions),
        ):
            for name, stats in theirs.items():
                if name not in mine:
                    mine[name] = type(stats)(name)
                _merge(mine[name], stats)

    def columns(
        self, features: Sequence[str] = ()
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The features (`features` first, in that order, even if no row was seen) and the
        predictions, as the stats file has them."""
        order = [*features, *(name for name in self.features if name not in features)]
        described = [(self.features.get(name) or NumericStats(name)).document() for name in order]
        return described, [stats.document() for stats in self.predictions.values()]


def _merge(mine: ColumnStats, theirs: ColumnStats) -> None:
    if type(mine) is not type(theirs):
        raise ValueError(f"column {mine.name!r} is {mine.kind} here and {theirs.kind} there")
    mine.merge(theirs)  # type: ignore[arg-type]  # the same class, checked above


def _finite_or_counted(values: np.ndarray, stats: RunStats, name: str) -> np.ndarray:
    """The non-NaN values; NaNs are counted as nulls of the prediction column `name`."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    column = stats._numeric(name)
    column.nulls += int(missing.sum())
    kept: np.ndarray = values[~missing]
    return kept


# -- the run's stats file ---------------------------------------------------------------------
class StatsRun:
    """One run's statistics: the collector the scorer feeds, the baseline they are compared
    with (read before any work, so that a bad one fails at once), and where they go."""

    def __init__(self, config: RunConfig, kind: str = "run") -> None:
        self.config = config
        self.kind = kind
        self.collector = RunStats()
        self.baseline = None if config.baseline is None else load_baseline(config.baseline)

    def check_features(self, features: Sequence[str]) -> None:
        """UsageError, before any row is read, when the baseline's features are not the
        run's (the prediction columns are compared at the end)."""
        if self.baseline is None:
            return
        assert self.config.baseline is not None
        drift.check_columns(
            {"features": self.baseline["features"]},
            {"features": [{"name": name} for name in features]},
            self.config.baseline,
        )

    def finish(
        self,
        *,
        model: str,
        sha256: str | None,
        inputs: Sequence[str],
        counts: Counts,
        seconds: float | None,
        features: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The stats document (with drift against the baseline), written to `--stats_file`
        and, with `--output_dir`, to its `_stats.json`; logs the `drift` line."""
        described, predicted = self.collector.columns(features)
        document: dict[str, Any] = {
            "stats_version": STATS_VERSION,
            "kind": self.kind,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"path": model, "sha256": sha256},
            "inputs": list(inputs),
            "rows": {"read": counts.read, "written": counts.written, "rejected": counts.rejected},
            "seconds": None if seconds is None else round(seconds, 3),
            "timing": {},
            "features": described,
            "predictions": predicted,
            "drift": None,
        }
        if self.baseline is not None:
            assert self.config.baseline is not None
            document["drift"] = drift.compare(
                self.baseline, document, where=self.config.baseline, max_drift=self.config.max_drift
            )
            _log_drift(document["drift"])
        text = json.dumps(document, indent=1, allow_nan=False) + "\n"
        if self.config.stats_file is not None:
            write_whole(self.config.stats_file, text, "statistics")
        if self.config.output_dir is not None and self.kind == "run":
            write_whole(storage.join(self.config.output_dir, STATS_NAME), text, "statistics")
        return document


def _log_drift(measured: dict[str, Any]) -> None:
    """One `drift` line naming the columns that moved most (a warning past --max_drift)."""
    log = get_logger().warning if measured["exceeded"] else get_logger().info
    log(
        "drift",
        baseline=measured["baseline"],
        most_moved=drift.most_moved(measured),
        max_drift=measured["max_drift"],
        exceeded=measured["exceeded"],
    )


def load_baseline(path: str) -> dict[str, Any]:
    """A stats file given as `--baseline` (see `drift.load_stats`)."""
    return drift.load_stats(path, "--baseline")


#: What the run summary leaves out of each column: the sketches and the histogram.
_BULKY = ("sketch", "frequent_sketch", "histogram")


def compact(document: dict[str, Any]) -> dict[str, Any]:
    """The stats document without sketches and histograms, for the run summary."""
    return {
        "features": [_compact_column(c) for c in document["features"]],
        "predictions": [_compact_column(c) for c in document["predictions"]],
    }


def _compact_column(column: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in column.items() if key not in _BULKY}
