"""How a failed command says why: one structured log line (and stderr, whatever the
log's destination) and the documented exit code, by `errors.exit_code_for`. `cli.main` is
the one place that calls these, for every exception.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import traceback
from typing import Any

import click

from batchpredict.cli_options import isatty, stderr_format
from batchpredict.errors import BatchPredictError, ExitCode, OutputClosed, exit_code_for


def as_ours(exc: BaseException) -> BaseException:
    """click's Ctrl-C as Python's; a write to a stdout nobody reads as `OutputClosed`."""
    if isinstance(exc, click.exceptions.Abort):
        return KeyboardInterrupt()
    if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
        return OutputClosed(str(exc))  # click.echo of inspect, validate, formats, --help
    return exc


#: What the log says for a run that a signal ended, by its exit code.
_INTERRUPTED = {
    ExitCode.SIGINT: "interrupted by SIGINT; no output was committed for the unfinished work",
    ExitCode.SIGTERM: "terminated by SIGTERM; no output was committed for the unfinished work",
}


def report_failure(exc: BaseException, args: list[str]) -> int:
    """The exit code `errors.exit_code_for` gives `exc`, after saying why on stderr."""
    if isinstance(exc, SystemExit):
        raise exc
    code = exit_code_for(exc)
    if code == ExitCode.OUTPUT_CLOSED:
        return _output_closed(exc)
    if code in _INTERRUPTED:
        if code == ExitCode.SIGINT and stderr_format(args) == "console" and isatty(sys.stderr):
            click.echo(err=True)  # end the line the terminal's ^C echo is on
        return _fail(_INTERRUPTED[code], code, args)
    if isinstance(exc, BatchPredictError):
        return _fail(str(exc), code, args)
    trace = "".join(traceback.format_exception(exc))
    return _fail(f"internal error: {type(exc).__name__}: {exc}", code, args, trace)


def _fail(message: str, code: ExitCode | int, args: list[str], trace: str | None = None) -> int:
    """Log the failure once as a structured line, and make sure stderr has it too."""
    from batchpredict.observe import (
        configure_logging,
        escape_controls,
        get_logger,
        json_line,
        logging_configured,
        logs_to_stderr,
    )

    look = stderr_format(args)
    if not logging_configured():  # before the command configured it (or without one)
        configure_logging(log_format=look)
    fields: dict[str, Any] = {"error": message, "exit_code": int(code)}
    if trace is not None:
        fields["traceback"] = trace
    get_logger().error("run failed", **fields)
    if not logs_to_stderr():  # the log went to --log_file; stderr still says why
        if look == "json":
            click.echo(json_line("run failed", "error", **fields), err=True)
        else:
            click.echo(f"batchpredict: {escape_controls(message)}", err=True)
    return int(code)


def report_usage_failure(exc: click.ClickException, args: list[str]) -> int:
    """A command line click rejected (exit 2): its usage text for a person, and one JSON
    line where the log lines are JSON, so that a program can read every stderr line."""
    code = int(ExitCode.USAGE)  # whatever click refused, it is the command line
    if stderr_format(args) == "console":
        exc.show()
        return code
    message = exc.format_message()
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        message = f"{message.rstrip('.')} (see '{exc.ctx.command_path} --help')"
    return _fail(message, code, args)


def _output_closed(exc: BaseException) -> int:
    """The reader of stdout went away (`| head`): stop quietly, as `yes | head` does, with
    141, what a shell reports for a filter that SIGPIPE ended. Standard output is pointed
    at /dev/null so that no later flush fails, and stderr stays silent."""
    from batchpredict.observe import get_logger, logging_configured

    if sys.stdout is sys.__stdout__:  # the process's own stdout, not a test's stand-in
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
    if logging_configured():
        get_logger().debug("run stopped: standard output was closed", reason=str(exc))
    return int(ExitCode.OUTPUT_CLOSED)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
