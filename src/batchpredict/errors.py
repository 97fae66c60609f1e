"""Error classes and the one table that maps them to process exit codes.

Every failure a user can act on is raised as a `BatchPredictError` subclass whose
`exit_code` is the documented one (README "Exit codes"); `cli.main` is the only place that
turns exceptions into exit statuses.
"""

from __future__ import annotations

import enum


@enum.unique
class ExitCode(enum.IntEnum):
    """Process exit statuses; values follow BSD sysexits where one fits."""

    OK = 0
    USAGE = 2
    #: Every output written and committed, but a column drifted past `--max_drift` from
    #: the baseline: `_SUCCESS` is withheld.
    DRIFT = 3
    DATA = 65
    NO_INPUT = 66
    INTERNAL = 70
    CANNOT_CREATE_OUTPUT = 73
    IO = 74
    LOCKED = 75
    MODEL = 78
    SIGINT = 130
    #: 128 + SIGPIPE: what a shell reports for a filter whose reader went away (`| head`).
    OUTPUT_CLOSED = 141
    SIGTERM = 143


class BatchPredictError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(BatchPredictError):
    """Options that contradict each other or cannot work, found before reading data."""

    exit_code = ExitCode.USAGE


class DataError(BatchPredictError):
    """The data does not fit the model: missing column, wrong dtype or shape, bad rows."""

    exit_code = ExitCode.DATA


class InputMissingError(BatchPredictError):
    """An input is missing, unreadable or empty, or a pattern matched no file."""

    exit_code = ExitCode.NO_INPUT


class StoreUnreachableError(InputMissingError):
    """An input's store gave no answer within `--storage_timeout` (refused or timed-out
    connections): 66 like any input that cannot be looked at, and not taken for "no such
    object" by the callers that look around it (Delta tables above an input)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: cannot read: {reason}")
        #: The store's reason, for a message naming another location of the same store.
        self.reason = reason


class OutputError(BatchPredictError):
    """An output cannot be created (bad directory, output would overwrite an input)."""

    exit_code = ExitCode.CANNOT_CREATE_OUTPUT


class ReadWriteError(BatchPredictError):
    """An I/O failure while reading or writing: corrupt or truncated file, disk full."""

    exit_code = ExitCode.IO


class LockHeldError(BatchPredictError):
    """Another run holds the lock file."""

    exit_code = ExitCode.LOCKED


class ModelError(BatchPredictError):
    """The model cannot be loaded or used with the options given."""

    exit_code = ExitCode.MODEL


class OutputClosed(BatchPredictError):
    """The reader of standard output went away (`--output_file - | head`): the run stops
    quietly, as a Unix filter does, with 141 as a shell reports for one killed by SIGPIPE."""

    exit_code = ExitCode.OUTPUT_CLOSED


class ConfigError(BatchPredictError):
    """Something the run needs is not installed or not set up (an optional extra)."""

    exit_code = ExitCode.MODEL  # 78, EX_CONFIG


class DriftError(BatchPredictError):
    """The run finished and committed its outputs, but its data drifted from the baseline
    past `--max_drift`; `summary` is the run's summary (`RunSummary`)."""

    exit_code = ExitCode.DRIFT

    def __init__(self, message: str, summary: object = None) -> None:
        super().__init__(message)
        self.summary = summary


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that outputs are aborted as on Ctrl-C."""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The documented exit code for an exception that ended a run."""
    if isinstance(exc, BatchPredictError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.SIGINT
    if isinstance(exc, Terminated):
        return ExitCode.SIGTERM
    return ExitCode.INTERNAL


def error_text(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message squeezed onto one line, for our one-line errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
