"""Observing unattended runs: logs, progress, a metrics file and a summary file.

- Logging: structlog lines on stderr (or `--log_file`), TensorFlow kept quiet.
  `quiet_tensorflow` (or `tensorflow_imported_quietly`, around code that may import it)
  must be in force when TensorFlow is imported: its C++ logging reads the environment once,
  at import. `bind_run_id` puts a run id on every line.
- `Progress`: a tqdm bar on a terminal, a `progress` log line every few seconds otherwise.
- `report_run`: the job's metrics file (`--metrics_file`, see `batchpredict.metrics`) and
  summary file.
- `write_summary`: the run summary as JSON (`--summary_file`).
- `report_lock_held`: both files for a run refused by `--lock_file` (exit 75).

Files are written through `batchpredict.atomic`: a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import structlog
from structlog.types import EventDict, WrappedLogger
from tqdm import tqdm

from batchpredict.atomic import write_whole
from batchpredict.errors import ExitCode, OutputError, ReadWriteError
from batchpredict.metrics import write_metrics

if TYPE_CHECKING:
    from batchpredict.config import RunConfig

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")

#: Where log lines go once configured: True for stderr, False for a log file.
_to_stderr: bool | None = None

#: The run id from `bind_run_id`, added to lines logged from any thread.
_run_id: str | None = None


def quiet_tensorflow(log_level: str) -> None:
    """Import TensorFlow without its start-up noise on stderr, unless logging at debug.

    TensorFlow's C++ logging prints before absl's logging is initialised, where
    TF_CPP_MIN_LOG_LEVEL is not yet in force; the only reliable silencer is to point file
    descriptor 2 elsewhere while the libraries load. What they printed is shown only if
    the import fails.
    """
    if log_level == "debug" or "tensorflow" in sys.modules:
        return
    with _tensorflow_quieted():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def tensorflow_imported_quietly(log_level: str) -> Iterator[None]:
    """In the block, the first import of Keras or TensorFlow, wherever the run makes it, is
    as quiet as `quiet_tensorflow`'s: the command line need not import TensorFlow before
    the run has found its inputs and planned its outputs (failing at once if it cannot)."""
    if log_level == "debug" or "tensorflow" in sys.modules:
        yield
        return
    finder = _QuietImportFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # already gone: it removes itself when used
            sys.meta_path.remove(finder)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds Keras or TensorFlow as the import system would, and loads it quietly; once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ("keras", "tensorflow"):
            return None
        sys.meta_path.remove(self)  # the other library is imported inside this one's load
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _tensorflow_quieted():
            self.loader.exec_module(module)


@contextlib.contextmanager
def _tensorflow_quieted() -> Iterator[None]:
    """TensorFlow's settings for a quiet import, and file descriptor 2 captured meanwhile."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Keras and TensorFlow also warn through Python's warnings and logging.
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|h5py)(\.|$)")
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with stderr_captured():
        yield


@contextlib.contextmanager
def stderr_captured(shown_on_failure: bool = True) -> Iterator[None]:
    """File descriptor 2 pointed at a temporary file in the block: for libraries that print
    from C++ before any setting of theirs is in force. What they printed is shown only if
    the block fails (and `shown_on_failure`)."""
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except Exception:  # not on Ctrl-C or SIGTERM: that is no failure of the block
            os.dup2(saved, 2)
            if shown_on_failure:
                capture.seek(0)
                sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def configure_logging(
    level: str = "info", log_format: str = "auto", log_file: str | None = None
) -> None:
    """Route structlog to stderr (or `log_file`): JSON lines off a TTY, console on one."""
    global _to_stderr
    _to_stderr = log_file is None
    stream: TextIO = sys.stderr
    if log_file is not None:
        stream = open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives for the run
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    # JSON escapes control characters itself; the console renderer shows values by repr,
    # which does too, but prints the event and a traceback as they are.
    escaping = [] if log_format == "json" else [_escape_console_text]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_run_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *escaping,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


#: C0 and C1 control characters and DEL: ESC starts colours, cursor moves, title changes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str, keep: str = "") -> str:
    """`text` with control characters (but those in `keep`) shown as escapes (`\\x1b`,
    `\\n`), so that a file or model name cannot drive the terminal it is printed on."""
    return _CONTROL.sub(
        lambda match: (
            match[0]
            if match[0] in keep
            else _NAMED_ESCAPES.get(match[0], f"\\x{ord(match[0]):02x}")
        ),
        text,
    )


def shown_name(name: str) -> str:
    """A file or model name as `inspect` and `validate` print it: as it is when it is
    printable and unpadded, else quoted as JSON does (`"a\\nb.csv"`), so that a name cannot
    pass for another line or hide a character."""
    return name if name.isprintable() and name == name.strip() else json.dumps(name)


def _escape_console_text(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Escape the strings the console renderer prints verbatim: the event, a traceback,
    and values it shows without quotes (those without spaces; others it shows by repr,
    which escapes nested values too)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and _CONTROL.search(value):
            event_dict[key] = escape_controls(value, keep="\n" if key == "exception" else "")
    return event_dict


def json_line(event: str, level: str, **fields: Any) -> str:
    """One line shaped like a JSON log line (run id, level, timestamp), for stderr when
    the log lines themselves go to `--log_file`."""
    event_dict: EventDict = {**structlog.contextvars.get_contextvars(), **fields, "event": event}
    event_dict = _add_run_id(None, level, event_dict)
    event_dict["level"] = level
    event_dict = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, level, event_dict)
    return str(structlog.processors.JSONRenderer()(None, level, event_dict))


def get_logger() -> Any:
    """The project's logger (structlog bound logger)."""
    return structlog.get_logger("batchpredict")


def reset_logging() -> None:
    """Undo `configure_logging`: structlog's defaults, and `logging_configured()` False."""
    global _to_stderr
    _to_stderr = None
    structlog.reset_defaults()


def logging_configured() -> bool:
    """Whether `configure_logging` ran (structlog's default would print to stdout)."""
    return _to_stderr is not None


def logs_to_stderr() -> bool:
    """Whether log lines reach stderr (False when they go to `--log_file`)."""
    return bool(_to_stderr)


# --- run id -------------------------------------------------------------------------------


def new_run_id() -> str:
    """A fresh run id: 12 random hex digits, to tie one run's log lines and files together."""
    return secrets.token_hex(6)


def bind_run_id(run_id: str) -> None:
    """Put `run_id` on every log line from now on, from this thread and any other.

    Bound into structlog's contextvars (for this context) and kept module-wide, because
    threads started with `threading.Thread` do not inherit contextvars.
    """
    global _run_id
    _run_id = run_id
    structlog.contextvars.bind_contextvars(run_id=run_id)


def unbind_run_id() -> None:
    """Stop adding a run id to log lines (for library callers running several jobs)."""
    global _run_id
    _run_id = None
    structlog.contextvars.unbind_contextvars("run_id")


def _add_run_id(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the bound run id, on lines from threads without the contextvar."""
    if _run_id is not None:
        event_dict.setdefault("run_id", _run_id)
    return event_dict


# --- progress -----------------------------------------------------------------------------


class Progress:
    """Rows processed so far: a tqdm bar on a terminal, a log line now and then elsewhere.

    On a TTY (`stream.isatty()`; `stream` defaults to stderr) a tqdm bar is drawn on
    `stream`, with percentage and ETA when `total_rows` is known. Otherwise nothing is
    written to `stream`: at most every `every_seconds`, `log` (default: the project's
    logger) gets an info line `progress` with rows, rows_per_second, elapsed_seconds and,
    when `total_rows` is known, percent and eta_seconds. `close()` logs nothing (the
    pipeline logs its own summary). With `enabled=False` there is no output at all.

    `update` is called often, from one thread: between lines it only adds and reads the
    clock.
    """

    def __init__(
        self,
        total_rows: int | None,
        *,
        enabled: bool = True,
        every_seconds: float = 30.0,
        stream: TextIO | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not every_seconds > 0:
            raise ValueError(f"every_seconds must be positive, got {every_seconds!r}")
        self.total_rows = total_rows if total_rows is None or total_rows >= 0 else None
        self.rows = 0
        self._every = float(every_seconds)
        self._clock = clock
        self._bar: tqdm[NoReturn] | None = None
        self._log: Any = None
        self._closed = False
        self._start = self._due = 0.0
        if not enabled:
            return
        stream = sys.stderr if stream is None else stream
        if _isatty(stream):
            self._bar = tqdm(
                total=self.total_rows,
                unit="rows",
                unit_scale=True,
                file=stream,
                mininterval=0.5,
                dynamic_ncols=True,
                leave=True,
                disable=False,
            )
        else:
            self._log = get_logger() if log is None else log
            self._start = clock()
            self._due = self._start + self._every

    def update(self, rows: int) -> None:
        """Count `rows` more rows processed; draw or log if due."""
        self.rows += rows
        if self._bar is not None:
            self._bar.update(rows)
        elif self._log is not None:
            now = self._clock()
            if now >= self._due:
                self._emit(now)

    def _emit(self, now: float) -> None:
        # Next line a full interval from now: after a stall, one line, not a burst.
        self._due = now + self._every
        elapsed = max(now - self._start, 0.0)
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        fields: dict[str, Any] = {
            "rows": self.rows,
            "rows_per_second": round(rate, 1),
            "elapsed_seconds": round(elapsed, 1),
        }
        total = self.total_rows
        if total is not None:
            done = min(self.rows / total, 1.0) if total > 0 else 1.0
            fields["percent"] = round(100.0 * done, 1)
            remaining = max(total - self.rows, 0)
            fields["eta_seconds"] = round(remaining / rate, 1) if rate > 0 else None
        self._log.info("progress", **fields)

    def close(self) -> None:
        """Finish the bar (on a TTY); log nothing. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        self._bar = self._log = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


# --- summary file -------------------------------------------------------------------------


def write_summary(path: str, summary: dict[str, Any]) -> None:
    """Write the run summary to `path` as indented JSON, atomically.

    Values JSON cannot hold are written as strings; NaN and infinities as null.
    Raises `ReadWriteError` if it cannot write.
    """
    text = json.dumps(_json_ready(summary), indent=2, ensure_ascii=False, default=str)
    write_whole(path, text + "\n", "summary")


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def report_run(
    config: RunConfig, summary: dict[str, Any], *, status: str, exit_code: int, seconds: float
) -> None:
    """Write `--metrics_file` and `--summary_file`, when asked for: `status` is
    "succeeded", "failed" or "locked"; `summary` holds at least the row counts."""
    if config.metrics_file is not None:
        write_metrics(
            config.metrics_file,
            job=config.job_name,
            succeeded=status == "succeeded",
            finished_at=time.time(),
            duration_seconds=seconds,
            rows=int(summary["rows_in"]),
            rejected_rows=int(summary["rows_rejected"]),
            exit_code=exit_code,
            drift=(summary.get("drift") or {}).get("columns", ()),
        )
    if config.summary_file is not None:
        write_summary(config.summary_file, {"status": status, "exit_code": exit_code, **summary})


def report_lock_held(config: RunConfig, error: str, seconds: float) -> None:
    """`--metrics_file` and `--summary_file` of a run refused by `--lock_file` (exit 75).

    Written before TensorFlow is imported. The run did not run: no rows, status `locked`,
    and the job's last-success time carried over, so alerting tells "skipped tonight" from
    "never ran". A file that cannot be written is a warning: the 75 is what is reported.
    """
    summary = {
        "error": error,
        "lock_file": config.lock_file,
        "rows_in": 0,
        "rows_out": 0,
        "rows_rejected": 0,
        "seconds": round(seconds, 3),
    }
    try:
        report_run(config, summary, status="locked", exit_code=ExitCode.LOCKED, seconds=seconds)
    except (ReadWriteError, OutputError) as report_error:
        get_logger().warning("could not write metrics or summary", error=str(report_error))
