"""The job's metrics file (`--metrics_file`) for node_exporter's textfile collector.

node_exporter's convention is one `.prom` file per job, replaced whole: `write_metrics`
writes the job's samples, every one labelled `job="<--job_name>"`, in the Prometheus text
format as `prometheus_client` writes it, through `batchpredict.atomic` (a scrape never
sees half a file). Gauges describe the last run; counters (the only series named
`*_total`) add up all the job's runs, carried over from the file the previous run wrote,
as is the last success time. `check_metrics_file` reads that file without following a
link and refuses one that is not the job's own. prometheus_client is imported only when
a metrics file is read or written, never for `--help`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import stat
import time
from collections.abc import Iterator, Sequence
from typing import Any

from batchpredict.atomic import write_whole
from batchpredict.errors import OutputError, ReadWriteError, error_text

_LAST_SUCCESS = "batchpredict_last_success_timestamp_seconds"

#: The counters `write_metrics` writes, by family name (their one series adds `_total`):
#: rows over all of the job's runs, carried over from the job's previous file.
COUNTERS: dict[str, str] = {
    "batchpredict_rows": "Rows read by the job's runs, failed ones included.",
    "batchpredict_rejected_rows": "Rows rejected by the job's runs, failed ones included.",
}

#: The gauges `write_metrics` writes, in file order, with their help text.
GAUGES: dict[str, str] = {
    "batchpredict_last_run_timestamp_seconds": "Unix time the last run of the job finished.",
    _LAST_SUCCESS: "Unix time the last successful run of the job finished.",
    "batchpredict_last_run_rows": "Rows read by the last run of the job.",
    "batchpredict_last_run_rejected_rows": "Rows rejected by the last run of the job.",
    "batchpredict_duration_seconds": "Wall-clock duration of the last run of the job.",
    "batchpredict_last_exit_code": "Exit status of the last run of the job (0: success).",
}

#: Drift of the last run's columns against its `--baseline`, labelled by column and measure.
DRIFT = "batchpredict_drift"
DRIFT_HELP = "Drift of a column against the baseline in the last run of the job (psi, ks)."

#: Far more than a job's file holds (under 2 KiB): a larger one is not ours.
_MAX_METRICS_BYTES = 1 << 20

_REFUSING = "refusing the metrics file"


def write_metrics(
    path: str,
    *,
    job: str,
    succeeded: bool,
    finished_at: float,
    duration_seconds: float,
    rows: int,
    rejected_rows: int,
    exit_code: int,
    drift: Sequence[dict[str, Any]] = (),
) -> None:
    """Write the job's metrics file `path` in Prometheus text format, atomically.

    The file is the job's own (node_exporter's textfile convention: one `.prom` file per
    job); every sample is labelled `job="<job>"`. `finished_at` is Unix time. The counters
    and, after a failure, the last-success time are carried over from the file the job's
    previous run wrote (the last success is left out if the job never succeeded). A file
    holding anything else is refused (see `check_metrics_file`). Runs of one job that
    finish together take turns under an flock on the directory. Raises `OutputError` or
    `ReadWriteError` if it cannot write. `drift` (the `columns` of a stats file's DRIFT)
    becomes `batchpredict_drift{column="x1",measure="psi"}` gauges.
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ReadWriteError(f"{path}: cannot write metrics: {error_text(exc)}") from exc
    with _directory_lock(directory):
        previous = check_metrics_file(path, job)
        last_success = finished_at if succeeded else previous.get(_LAST_SUCCESS)
        gauges: dict[str, float | None] = {
            "batchpredict_last_run_timestamp_seconds": finished_at,
            _LAST_SUCCESS: last_success,
            "batchpredict_last_run_rows": rows,
            "batchpredict_last_run_rejected_rows": rejected_rows,
            "batchpredict_duration_seconds": duration_seconds,
            "batchpredict_last_exit_code": exit_code,
        }
        counters = {
            "batchpredict_rows": previous.get("batchpredict_rows", 0.0) + rows,
            "batchpredict_rejected_rows": previous.get("batchpredict_rejected_rows", 0.0)
            + rejected_rows,
        }
        write_whole(path, _exposition(job, gauges, counters, drift), "metrics")


def _exposition(
    job: str,
    gauges: dict[str, float | None],
    counters: dict[str, float],
    drift: Sequence[dict[str, Any]] = (),
) -> str:
    """The job's samples in the Prometheus text format, as `prometheus_client` writes it."""
    # Imported here: only runs with --metrics_file pay for it, never `--help`.
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    families: list[Metric] = []
    for name, help_text in GAUGES.items():
        value = gauges[name]
        if value is not None:
            gauge = GaugeMetricFamily(name, help_text, labels=["job"])
            gauge.add_metric([job], value)
            families.append(gauge)
    if drift:
        families.append(_drift_family(job, drift, GaugeMetricFamily))
    for name, help_text in COUNTERS.items():
        counter = CounterMetricFamily(name, help_text, labels=["job"])
        counter.add_metric([job], counters[name])
        families.append(counter)

    class JobMetrics(Collector):
        def collect(self) -> list[Metric]:
            return families

    # A registry of our own: the default one would add this process's own metrics.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics())
    return generate_latest(registry).decode("utf-8")


def _drift_family(job: str, drift: Sequence[dict[str, Any]], family: Any) -> Any:
    """One gauge per column and measure (psi, ks) that could be measured."""
    gauge = family(DRIFT, DRIFT_HELP, labels=["job", "column", "measure"])
    for column in drift:
        for measure in ("psi", "ks"):
            value = column.get(measure)
            if value is not None:
                gauge.add_metric([job, str(column["name"]), measure], float(value))
    return gauge


def check_metrics_file(path: str, job: str) -> dict[str, float]:
    """What the job's previous run left in `path`: the values of its counters and gauges
    by family name (none if there is no file yet).

    Refuses (OutputError, 73) a file whose content is not the job's own, so that it is
    neither read through nor replaced: a symbolic link or anything but a regular file, a
    file that is not in the Prometheus text format, and one holding another job's samples
    or metrics batchpredict does not write.
    """
    text = _read_metrics_file(path)
    if text is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise OutputError(
            f"{path}: {_REFUSING}: it is not in the Prometheus text format "
            f"({error_text(exc, 80)}); move it away if it is not this job's"
        ) from exc
    previous: dict[str, float] = {}
    for family in families:
        if not family.name.startswith("batchpredict_"):
            raise OutputError(f"{path}: {_REFUSING}: it holds {family.name}, not batchpredict's")
        for sample in family.samples:
            labels = dict(sample.labels)
            if family.name == DRIFT:  # one series per column and measure
                labels = {k: v for k, v in labels.items() if k not in ("column", "measure")}
            if labels != {"job": job}:
                raise OutputError(
                    f"{path}: {_REFUSING}: it holds {sample.name}{{{_shown(sample.labels)}}}, "
                    f"not job={job!r}'s; give each job its own file (or remove this one if "
                    "its job no longer runs)"
                )
        # Carried over only as this version writes them: a gauge of an older version
        # named like a counter does not start the counter.
        kind = "counter" if family.name in COUNTERS else "gauge"
        if family.type == kind and family.samples:
            value = family.samples[0].value
            if math.isfinite(value) and value >= 0:
                previous[family.name] = value
    return previous


def _shown(labels: dict[str, str]) -> str:
    text = ",".join(f"{name}={value!r}" for name, value in sorted(labels.items()))
    return text if len(text) <= 80 else text[:77] + "..."


def _read_metrics_file(path: str) -> str | None:
    """The file's text, or None if there is none yet; never through a symbolic link, nor
    from anything but a regular file (OutputError)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReadWriteError(f"{path}: cannot read metrics: {error_text(exc)}") from exc
    _refuse_unless_regular(path, info.st_mode)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link planted since lstat
            _refuse_unless_regular(path, stat.S_IFLNK)
        raise ReadWriteError(f"{path}: cannot read metrics: {error_text(exc)}") from exc
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(_MAX_METRICS_BYTES + 1)
    except OSError as exc:
        raise ReadWriteError(f"{path}: cannot read metrics: {error_text(exc)}") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_METRICS_BYTES:
        raise OutputError(f"{path}: {_REFUSING}: it is larger than a job's metrics file")
    return data.decode("utf-8", "replace")


def _refuse_unless_regular(path: str, mode: int) -> None:
    if stat.S_ISLNK(mode):
        what = "a symbolic link"
    elif not stat.S_ISREG(mode):
        what = "not a regular file"
    else:
        return
    raise OutputError(
        f"{path}: {_REFUSING}: it is {what}; give the path of a regular file "
        "in a folder only this job's account can write"
    )


@contextlib.contextmanager
def _directory_lock(directory: str, wait_seconds: float = 10.0) -> Iterator[None]:
    """Best effort: an flock on `directory`, so that two runs of one job (one refused by
    `--lock_file` as the other ends) do not both read the old file and lose one update.

    Gives up quietly (no lock) where directories cannot be locked, or after `wait_seconds`.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            except OSError:
                break
        yield
    finally:
        os.close(fd)  # releases the lock
