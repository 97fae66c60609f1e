"""Logging for unattended runs: structlog lines on stderr, TensorFlow kept quiet.

`quiet_tensorflow` must run before TensorFlow is imported: its C++ logging reads the
environment once, at import.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from typing import Any, TextIO

import structlog

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")

#: Where log lines go once configured: True for stderr, False for a log file.
_to_stderr: bool | None = None


def quiet_tensorflow(log_level: str) -> None:
    """Import TensorFlow without its start-up noise on stderr, unless logging at debug.

    TensorFlow's C++ logging prints before absl's logging is initialised, where
    TF_CPP_MIN_LOG_LEVEL is not yet in force; the only reliable silencer is to point file
    descriptor 2 elsewhere while the libraries load. What they printed is shown only if
    the import fails.
    """
    if log_level == "debug" or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Keras and TensorFlow also warn through Python's warnings and logging.
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|h5py)(\.|$)")
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger() -> Any:
    """The project's logger (structlog bound logger)."""
    return structlog.get_logger("batchpredict")


def logging_configured() -> bool:
    """Whether `configure_logging` ran (structlog's default would print to stdout)."""
    return _to_stderr is not None


def logs_to_stderr() -> bool:
    """Whether log lines reach stderr (False when they go to `--log_file`)."""
    return bool(_to_stderr)
