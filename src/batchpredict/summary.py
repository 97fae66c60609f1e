"""What a run reports: its counts, timing and where the results went."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from batchpredict.config import RunConfig


@dataclass(frozen=True)
class RunSummary:
    """What a run did: counts, timing and where the results went."""

    rows_in: int
    rows_out: int
    rows_rejected: int
    seconds: float
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: Inputs not read because `--skip_existing` found their output complete.
    skipped: tuple[str, ...]
    rejects_files: tuple[str, ...]
    model: str
    model_version: int | None
    batch_size: int | None
    device: str
    #: Model calls per device: with several (`--device gpu:0,gpu:1`), each gets a share.
    batches_per_device: dict[str, int] = field(default_factory=dict)
    #: How batches reached the model: `tfdata` or `numpy` (`--prefetch`); None when the
    #: engine does not say (Ray's workers).
    prefetch: str | None = None
    #: Which columns fed which model input (`RunMapping.as_dict`).
    column_mapping: dict[str, Any] | None = None
    #: The run's statistics without sketches and histograms (`run_stats.compact`); None
    #: when none were gathered (without `--stats_file` or `--baseline`).
    statistics: dict[str, Any] | None = None
    #: Drift against `--baseline` (the stats file's DRIFT object), or None.
    drift: dict[str, Any] | None = None
    #: This process's shard of the job (`{"index": I, "count": N}`), None when not sharded.
    shard: dict[str, int] | None = None
    rows_per_second: float = field(init=False)

    def __post_init__(self) -> None:
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        object.__setattr__(self, "rows_per_second", round(rate, 1))

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready values."""
        return asdict(self)

    @property
    def drifted(self) -> list[str]:
        """The columns that drifted past `--max_drift` (none without it)."""
        return list(self.drift["exceeded"]) if self.drift else []


@dataclass
class Counts:
    """Rows read, written and rejected for one output (or, summed, the run)."""

    read: int = 0
    written: int = 0
    rejected: int = 0

    def add(self, other: Counts) -> None:
        self.read += other.read
        self.written += other.written
        self.rejected += other.rejected


@dataclass
class RunState:
    """A run under way: when it started, what it has counted, and what sets up the process
    before TensorFlow loads (the command line's `process.prepare_tensorflow`; nothing for
    a library call)."""

    prepare: Callable[[RunConfig], None] | None = None
    started: float = field(default_factory=time.monotonic)
    totals: Counts = field(default_factory=Counts)

    def before_model(self, config: RunConfig) -> None:
        """Called once inputs and outputs are planned, just before the model loads."""
        if self.prepare is not None:
            self.prepare(config)

    def summary(self, **fields: Any) -> RunSummary:
        """The summary of the run so far; `fields` are the rest of `RunSummary`."""
        return RunSummary(
            rows_in=self.totals.read,
            rows_out=self.totals.written,
            rows_rejected=self.totals.rejected,
            seconds=round(time.monotonic() - self.started, 3),
            **fields,
        )
