"""A run, whichever engine does it: the lock, the engine, and the report at the end.

    sources -> formats (read) -> scoring (map, convert, reject, predict) -> outputs

`local_engine` runs it in this process, `ray_engine` on Ray; both score with
`scoring` and report the same `RunSummary`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# `inspect` and `validate`, beside `run`, for the command line.
from batchpredict import storage
from batchpredict.atomic import scanning_once
from batchpredict.checks import ValidationReport as ValidationReport
from batchpredict.checks import inspect as inspect
from batchpredict.checks import inspect_model as inspect_model
from batchpredict.checks import validate as validate
from batchpredict.config import RunConfig
from batchpredict.errors import BatchPredictError, DriftError, LockHeldError, exit_code_for
from batchpredict.locking import hold_lock
from batchpredict.observe import get_logger, report_lock_held, report_run
from batchpredict.summary import Counts, RunState
from batchpredict.summary import RunSummary as RunSummary  # the summary of `run`


def run(config: RunConfig, *, prepare: Callable[[RunConfig], None] | None = None) -> RunSummary:
    """Predict every input of `config` and commit every output, or raise and commit nothing.

    Takes `--lock_file` first, so that a second run is refused before any work. `prepare`
    runs once the inputs and outputs are planned, just before TensorFlow loads: the
    command line sets up its process there (`process.prepare_tensorflow`); a library call
    changes nothing process-wide.

    Invariant: rows read = rows written + rows rejected, and an output exists under its
    final name only if everything in it was written.
    """
    state = RunState(prepare)
    try:
        with (
            storage.store_settings(config.s3_endpoint_url, config.storage_timeout),
            hold_lock(config.lock_file),
        ):
            if config.engine == "ray":
                from batchpredict import ray_engine

                summary = ray_engine.run(config, state)
            else:
                from batchpredict import local_engine

                with scanning_once():  # thousands of outputs, one listing per folder
                    summary = local_engine.run(config, state)
    except LockHeldError as exc:
        # This run did not run: it says so; the run holding the lock reports its own end.
        report_lock_held(config, str(exc), time.monotonic() - state.started)
        raise
    except BaseException as exc:
        _report_failure(config, exc, time.monotonic() - state.started, state.totals)
        raise
    logged = {k: v for k, v in summary.as_dict().items() if k not in ("statistics", "drift")}
    get_logger().info("run finished", **logged)
    if summary.drifted:
        # The outputs stand; the run says it is not complete: no _SUCCESS, exit 3.
        error = DriftError(
            f"drift past --max_drift {config.max_drift} in {_first(summary.drifted)} "
            f"against --baseline {config.baseline}; outputs written, not marked complete",
            summary,
        )
        report_run(
            config,
            {**summary.as_dict(), "error": str(error)},
            status="drifted",
            exit_code=int(error.exit_code),
            seconds=summary.seconds,
        )
        raise error
    report_run(config, summary.as_dict(), status="succeeded", exit_code=0, seconds=summary.seconds)
    return summary


def profile(
    config: RunConfig, *, prepare: Callable[[RunConfig], None] | None = None
) -> dict[str, Any]:
    """`batchpredict profile`: the statistics of the inputs, written to `--stats_file`
    (`profiling.profile`); returns the stats document."""
    from batchpredict import profiling

    return profiling.profile(config, prepare=prepare)


def _report_failure(config: RunConfig, exc: BaseException, seconds: float, totals: Counts) -> None:
    """Metrics and summary of a failed run; never hides the failure being reported."""
    code = int(exit_code_for(exc))
    summary = {
        "rows_in": totals.read,
        "rows_out": totals.written,
        "rows_rejected": totals.rejected,
        "seconds": round(seconds, 3),
        "error": str(exc) or type(exc).__name__,
    }
    try:
        report_run(config, summary, status="failed", exit_code=code, seconds=seconds)
    except BatchPredictError as report_error:
        get_logger().warning("could not write metrics or summary", error=str(report_error))


def _first(names: tuple[str, ...] | list[str], shown: int = 5) -> str:
    """`a, b, c` of the first `shown` names, and how many more (the error stays one line
    a person reads; the stats file lists them all)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
