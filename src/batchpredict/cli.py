"""The command line: click options -> one frozen `RunConfig` -> the library.

Nothing here imports TensorFlow or pyarrow at module level, so `--help` and `--version`
answer at once. `main` is the one boundary where exceptions become exit codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click

from batchpredict import __version__
from batchpredict.config import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_RECORD_BYTES,
    RunConfig,
    parse_delimiter,
    refuse_credentials,
)
from batchpredict.errors import (
    BatchPredictError,
    DataError,
    ExitCode,
    OutputClosed,
    Terminated,
    UsageError,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

F = TypeVar("F", bound=Callable[..., Any])
ENV_PREFIX = "BATCHPREDICT_"


def option(name: str, *extra_decls: str, **kwargs: Any) -> Callable[[F], F]:
    """`--name` (underscores, as in the contract) plus `--dashed-name`, and its env variable."""
    dashed = name.replace("_", "-")
    decls = [f"--{name}", *([f"--{dashed}"] if dashed != name else []), *extra_decls, name]
    kwargs.setdefault("envvar", f"{ENV_PREFIX}{name.upper()}")
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, **kwargs)


class BatchSizeType(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.3+ only
    """`--batch_size`: a positive number of rows, or `auto` (None)."""

    name = "INTEGER|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            size = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number of rows nor 'auto'", param, ctx)
        if size < 1:
            self.fail(f"{size} is not at least 1", param, ctx)
        return size


BATCH_SIZE = BatchSizeType()


def _csv_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _class_names(listed: str | None, path: str | None) -> tuple[str, ...] | None:
    """Names from --class_names or --class_names_file (one per line, blank lines skipped)."""
    if listed is not None and path is not None:
        raise UsageError("give --class_names or --class_names_file, not both")
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            return tuple(line.strip() for line in handle if line.strip())
    return _csv_list(listed)


def option_group(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several options as one decorator, in the order given (as they appear in --help)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _load_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """`--config FILE`: TOML whose keys are option names, used as the command's defaults.

    Top-level keys apply to every command; a table named after the command (`[predict]`)
    overrides them. The command line and `BATCHPREDICT_*` variables still win.
    """
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path} is not valid TOML: {exc}") from exc
    # inspect and validate read the job's own file as predict would, [predict] included,
    # and leave out what only predict has (outputs, locks, metrics).
    tables = ["predict", ctx.info_name] if ctx.info_name != "predict" else ["predict"]
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for table in tables:
        section = data.get(table or "")
        values.update(section if isinstance(section, dict) else {})
    values = {key.replace("-", "_"): value for key, value in values.items()}
    known = {p.name for p in ctx.command.params} - {"config"}
    unknown = sorted(set(values) - _option_names(ctx))
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown option(s) for {ctx.info_name}: {', '.join(unknown)}"
        )
    values = {name: value for name, value in values.items() if name in known}
    for name, value in values.items():
        if isinstance(value, list) and name not in ("input_file",):
            values[name] = ",".join(str(v) for v in value)  # e.g. features = ["a", "b"]
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def _option_names(ctx: click.Context) -> set[str]:
    """Every option name of every command (what a job's config file may hold)."""
    root = ctx.find_root().command
    commands = root.commands.values() if isinstance(root, click.Group) else [ctx.command]
    return {p.name for command in commands for p in command.params if p.name} - {"config"}


#: Options that choose and load the model (shared by predict, inspect and validate).
model_options = option_group(
    option(
        "config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config_file,
        help="TOML file of option defaults (keys as option names; a [predict] "
        "table applies to predict only).",
    ),
    option(
        "model",
        required=True,
        help="Keras .keras/.h5 file, SavedModel directory, "
        "or TF-Serving base directory with numeric versions; local or a URI (s3://...).",
    ),
    option(
        "signature",
        default="serving_default",
        show_default=True,
        help="SavedModel signature to call.",
    ),
    option(
        "model_version",
        type=click.IntRange(min=0),
        default=None,
        help="Version sub-directory of a TF-Serving base directory (default: highest).",
    ),
    option(
        "unsafe_model_load",
        is_flag=True,
        default=False,
        help="Allow Keras Lambda layers, which run code stored in the model (trusted models only).",
    ),
)


def _use_s3_endpoint(ctx: click.Context, param: click.Parameter, url: str | None) -> None:
    """Point every S3 client of this run (and of its Ray workers) at `url`, the way the
    AWS SDKs read it: through AWS_ENDPOINT_URL."""
    if url is None:
        return
    refuse_credentials(url)
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"expected http://host:port or https://host, got {url!r}")
    os.environ["AWS_ENDPOINT_URL"] = url


#: Options for files in object storage; credentials come only from the SDKs' usual places.
storage_options = option_group(
    option(
        "s3_endpoint_url",
        default=None,
        expose_value=False,
        callback=_use_s3_endpoint,
        help="S3-compatible store for s3:// URIs (MinIO, Ceph, ...); same as AWS_ENDPOINT_URL.",
    ),
)


#: Options that decide how inputs are read, which columns feed the model, and what a bad
#: row does: shared by predict, inspect and validate, so that the last two report what
#: predict would do.
data_options = option_group(
    option("input_format", default=None, help="Override the format told by the extension."),
    option(
        "features",
        default=None,
        help="Comma-separated columns feeding the model's single input, in order "
        "(reshaped row-major for an input like [None, 8, 8, 1]; default for a [None, k] "
        "input: the first input's columns that are not in --keep_columns).",
    ),
    option(
        "keep_columns",
        default=None,
        help="Comma-separated input columns copied to the output before the "
        "predictions (default: every column the model does not read).",
    ),
    option(
        "chunk_size",
        type=click.IntRange(min=1),
        default=DEFAULT_CHUNK_SIZE,
        show_default=True,
        help="Rows read, converted and written at a time (bounds memory).",
    ),
    option(
        "max_record_bytes",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_RECORD_BYTES,
        show_default=True,
        help="Longest JSON line or array element, in bytes: a longer one is a bad row "
        "(exit 65, or rejected with --on_error skip); an Avro block that decompresses to "
        "more is a corrupt file (exit 74).",
    ),
    option(
        "on_error",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help="fail: stop at the first bad row (exit 65). skip: write bad rows to the rejects "
        "file and go on.",
    ),
    option(
        "max_error_rate",
        type=click.FloatRange(0.0, 1.0),
        default=0.01,
        show_default=True,
        help="With --on_error skip: fail (exit 65, output not written) when a larger fraction "
        "of an output's rows is bad.",
    ),
    option(
        "fill_value",
        type=float,
        default=None,
        help="Use this number for null and NaN values in numeric features instead of "
        "treating those rows as bad.",
    ),
    option(
        "null_values",
        default=None,
        help="Comma-separated strings read as null in the numeric columns of CSV and TSV "
        "and the model's numeric JSON fields (default: Arrow's: NA, N/A, n/a, NULL, null, "
        "NaN, nan, #N/A, ...; the empty field is always null).",
    ),
    option(
        "delimiter",
        default=None,
        help="CSV field separator, one character: ';', '|', ... or \\t / tab (default ',').",
    ),
)


def _null_values(value: str | None) -> tuple[str, ...] | None:
    """`--null_values A,B`: the strings (spaces around them dropped); "" for none but the
    empty field."""
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


#: Options for log lines.
logging_options = option_group(
    option(
        "log_level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        help="debug also lets TensorFlow's own logging through.",
    ),
    option(
        "log_format",
        type=click.Choice(["auto", "json", "console"]),
        default="auto",
        show_default=True,
        help="auto: console on a terminal, JSON lines otherwise.",
    ),
    option(
        "log_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Append log lines to this file instead of stderr.",
    ),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="batchpredict")
def cli() -> None:
    """Run TensorFlow/Keras models over CSV, JSON lines, Avro and Parquet files."""


@cli.command()
@model_options
@storage_options
@option(
    "input_file",
    multiple=True,
    required=True,
    help="File, glob pattern or directory, local or a URI (s3://bucket/day=*/*.parquet); "
    "repeat for more; '-' reads stdin.",
)
@option("output_file", default=None, help="One output for all inputs; '-' writes to stdout.")
@option(
    "output_dir",
    default=None,
    help="One output per input, at the input's path relative to its directory or glob root.",
)
@option("output_format", default=None, help="Default: the input's format.")
@data_options
@option(
    "max_output_bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Largest output file, in bytes: a run whose output grows beyond it fails (exit 74) "
    "and commits nothing (default: no limit).",
)
@option(
    "prediction_column",
    default="prediction",
    show_default=True,
    help="Name of the column for a single model output.",
)
@option(
    "class_names",
    default=None,
    help="Comma-separated class names: adds `label` (argmax, or the threshold for one "
    "sigmoid output: negative,positive) and `score` columns.",
)
@option(
    "class_names_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class names, one per line (instead of --class_names).",
)
@option(
    "threshold",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Cut-off for a single sigmoid output's `label` (default 0.5 with --class_names).",
)
@option(
    "label_output",
    default=None,
    help="With several outputs: the one --class_names and --threshold label, by its name "
    "as `inspect` shows it (default: the only output whose width fits the class names).",
)
@option(
    "label_column",
    default="label",
    show_default=True,
    help="Name of the label column added by --class_names or --threshold.",
)
@option(
    "score_column",
    default="score",
    show_default=True,
    help="Name of the score column (the label's probability).",
)
@option(
    "batch_size",
    type=BATCH_SIZE,
    default="auto",
    show_default=True,
    help="Rows per model call, or `auto`: time a few sizes on the first chunk and keep the "
    "fastest. Every call has exactly this many rows (the last is padded).",
)
@option(
    "device",
    default="auto",
    show_default=True,
    help="auto or gpu (every GPU, a model replica each; else the CPU), cpu, gpu:N, or a "
    "list: gpu:0,gpu:1.",
)
@option(
    "gpu_memory_limit",
    type=click.IntRange(min=1),
    default=None,
    help="Cap the GPU memory TensorFlow may take, in MB.",
)
@option(
    "rejects_file",
    default=None,
    help="Where --on_error skip writes bad rows as JSON lines "
    "(default: <output>.rejects.jsonl, or DIR/_rejects.jsonl with --output_dir).",
)
@option(
    "skip_existing",
    is_flag=True,
    default=False,
    help="With --output_dir: skip outputs the manifest records as made by the same model "
    "(SHA-256), with the same prediction options, from the same inputs (path, size, mtime), "
    "so a rerun resumes; redo the others, logging why.",
)
@option(
    "lock_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Hold an flock on this file for the run; exit 75 at once if another run has it.",
)
@option(
    "progress_every",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds between progress log lines when not on a terminal.",
)
@option("no_progress", is_flag=True, default=False, help="No progress bar and no progress lines.")
@option(
    "metrics_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write Prometheus textfile-collector metrics here (also on failure).",
)
@option(
    "job_name",
    default="batchpredict",
    show_default=True,
    help="The `job` label of the metrics.",
)
@option(
    "summary_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the run summary here as JSON (also on failure).",
)
@option(
    "engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine's threads. ray: Ray Data (pip install 'batchpredict[ray]'), "
    "part files in --output_dir.",
)
@option(
    "ray_address",
    default=None,
    help="With --engine ray: the cluster (ray://head:10001, or auto); default: start Ray here.",
)
@option(
    "ray_concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="With --engine ray: model actors (default: one per GPU, else one per 4 CPUs).",
)
@option(
    "ray_gpus_per_worker",
    type=click.FloatRange(min=0),
    default=None,
    help="With --engine ray: GPUs per actor (default 1 when the cluster has GPUs, else 0).",
)
@option(
    "preserve_order",
    is_flag=True,
    default=False,
    help="With --engine ray: part files in input order (slower: blocks wait for earlier ones).",
)
@logging_options
def predict(**options: Any) -> None:
    """Predict every row of the inputs and write the predictions atomically."""
    from batchpredict.observe import bind_run_id, configure_logging, new_run_id

    _refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    bind_run_id(new_run_id())
    config = _run_config(options)
    _run_holding_lock(config)


def _run_holding_lock(config: RunConfig) -> None:
    """Run; the run takes `--lock_file` first, so that a second run exits 75 at once and
    writes its metrics and summary (status `locked`) before TensorFlow would load, which
    it does (quietly, with `--device` applied) only once inputs and outputs are planned.
    """
    from batchpredict import pipeline
    from batchpredict.observe import check_metrics_file
    from batchpredict.process import prepare_tensorflow

    if config.metrics_file is not None:
        check_metrics_file(config.metrics_file)  # before any work: 73 if it is a link
    pipeline.run(config, prepare=prepare_tensorflow)


@cli.command()
@model_options
@storage_options
@option(
    "input_file",
    multiple=True,
    default=(),
    help="Also show the column mapping predict would use for these inputs.",
)
@data_options
@logging_options
def inspect(**options: Any) -> None:
    """Print the model's inputs and outputs (and the column mapping for the inputs given)."""
    from batchpredict import pipeline
    from batchpredict.observe import configure_logging, escape_controls, quiet_tensorflow

    quiet_tensorflow(options["log_level"])
    _refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    if options["input_file"]:
        lines = pipeline.inspect(_run_config(options))
    else:
        lines = pipeline.inspect_model(
            options["model"],
            signature=options["signature"],
            version=options["model_version"],
            unsafe=options["unsafe_model_load"],
        )
    for line in lines:
        click.echo(escape_controls(line))  # one line each, whatever names they hold


@cli.command()
@model_options
@storage_options
@option("input_file", multiple=True, required=True, help="File, glob pattern or directory.")
@data_options
@logging_options
def validate(**options: Any) -> None:
    """Check the first chunk of every input as predict would read it; write nothing."""
    from batchpredict import pipeline
    from batchpredict.observe import configure_logging, escape_controls, quiet_tensorflow

    quiet_tensorflow(options["log_level"])
    _refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    report = pipeline.validate(_run_config(options))
    for line in report.lines:
        click.echo(escape_controls(line))  # one line each, whatever names they hold
    for problem in report.problems:
        click.echo(f"problem: {escape_controls(problem)}")
    if report.problems:
        raise DataError(f"{len(report.problems)} problem(s) found; see the lines above")


def _refuse_secrets(options: dict[str, Any]) -> None:
    """Refuse a URI holding a secret in any option (locations, the log file, ...), before
    anything is logged or opened: the message masks it."""
    for value in options.values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str):
                refuse_credentials(item)


def _run_config(options: dict[str, Any]) -> RunConfig:
    """The one frozen configuration, from any command's options (those it lacks keep their
    defaults): lists split, class names read, and `--no_progress` turned around."""
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    values = {name: value for name, value in options.items() if name in fields}
    values["input_files"] = tuple(options["input_file"])
    values["features"] = _csv_list(options.get("features"))
    values["keep_columns"] = _csv_list(options.get("keep_columns"))
    values["class_names"] = _class_names(
        options.get("class_names"), options.get("class_names_file")
    )
    values["progress"] = not options.get("no_progress", False)
    values["null_values"] = _null_values(options.get("null_values"))
    values["delimiter"] = parse_delimiter(options.get("delimiter"))
    config = RunConfig(**values)
    from batchpredict.formats.registry import preflight  # pyarrow: not needed for --help

    preflight(config)
    return config


@cli.command()
def formats() -> None:
    """List the readers and writers and the extensions they claim."""
    from batchpredict.formats.registry import describe_formats

    click.echo(f"{'format':<10}{'read':<6}{'write':<7}extensions")
    for name, extensions, can_read, can_write in describe_formats():
        click.echo(
            f"{name:<10}{'yes' if can_read else 'no':<6}{'yes' if can_write else 'no':<7}"
            f"{' '.join(extensions)}"
        )
    click.echo("compression by suffix: .gz .bz2 .zst (CSV, TSV, JSON lines)")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def console() -> NoReturn:
    """The `batchpredict` command: `main`, then exit at once with its code.

    By then outputs are committed (or removed) and logs written; the interpreter's own
    teardown would only cost time (0.9 s, unloading TensorFlow) and, after a failure, wait
    for a thread blocked reading a stalled input pipe (Arrow joins its I/O threads at
    exit), so that SIGTERM would not end the process. It would also report a flush to a
    closed stdout as "Exception ignored ... BrokenPipeError".
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and turn every outcome into a documented exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Past a file-size limit (ulimit -f) a write should fail with EFBIG, exit 74, and the
    # temporary file be removed, rather than the kernel killing the process mid-write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        _invoke(args)
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.ClickException as exc:
        return _usage_failure(exc, args)
    except (click.exceptions.Abort, KeyboardInterrupt):
        if _stderr_format(args) == "console" and _isatty(sys.stderr):
            click.echo(err=True)  # end the line the terminal's ^C echo is on
        return _fail(
            "interrupted by SIGINT; no output was committed for the unfinished work",
            ExitCode.SIGINT,
            args,
        )
    except OutputClosed as exc:
        return _output_closed(exc)
    except BatchPredictError as exc:
        return _fail(str(exc), exc.exit_code, args)
    except Terminated:
        return _fail(
            "terminated by SIGTERM; no output was committed for the unfinished work",
            ExitCode.SIGTERM,
            args,
        )
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes exit 70
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            return _output_closed(exc)  # click.echo of inspect, validate, formats, --help
        return _fail(
            f"internal error: {type(exc).__name__}: {exc}",
            ExitCode.INTERNAL,
            args,
            traceback.format_exc(),
        )
    return ExitCode.OK


def _invoke(args: list[str]) -> None:
    """What `cli.main(standalone_mode=False)` does, without its handlers: click would print
    an empty line on Ctrl-C (not a JSON line) and turn a closed stdout into exit 1."""
    with cli.make_context("batchpredict", args) as ctx:
        cli.invoke(ctx)


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

    stderr_format = _stderr_format(args)
    if not logging_configured():  # before the command configured it (or without one)
        configure_logging(log_format=stderr_format)
    fields: dict[str, Any] = {"error": message, "exit_code": int(code)}
    if trace is not None:
        fields["traceback"] = trace
    get_logger().error("run failed", **fields)
    if not logs_to_stderr():  # the log went to --log_file; stderr still says why
        if stderr_format == "json":
            click.echo(json_line("run failed", "error", **fields), err=True)
        else:
            click.echo(f"batchpredict: {escape_controls(message)}", err=True)
    return int(code)


def _usage_failure(exc: click.ClickException, args: list[str]) -> int:
    """A command line click rejected (exit 2): its usage text for a person, and one JSON
    line where the log lines are JSON, so that a program can read every stderr line."""
    code = int(ExitCode.USAGE) if isinstance(exc, click.UsageError) else int(exc.exit_code)
    if _stderr_format(args) == "console":
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


def _stderr_format(args: list[str]) -> str:
    """ "json" or "console": how this command's lines on stderr look, found without click,
    since a usage error can come before any option is parsed. Like the option itself:
    --log_format, else BATCHPREDICT_LOG_FORMAT, else --config's, else auto (console on a
    terminal, JSON lines otherwise)."""
    chosen = (
        _option_in_args(args, "log_format")
        or os.environ.get(f"{ENV_PREFIX}LOG_FORMAT")
        or _option_in_config(args, "log_format")
    )
    if chosen in ("json", "console"):
        return chosen
    return "console" if _isatty(sys.stderr) else "json"


def _option_in_args(args: list[str], name: str) -> str | None:
    """The last value given to `--name` (or `--dashed-name`) on the command line."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    value = None
    remaining = iter(args)
    for arg in remaining:
        if arg == "--":
            break
        flag, equals, attached = arg.partition("=")
        if flag in spellings:
            value = attached if equals else next(remaining, None)
    return value


def _option_in_config(args: list[str], name: str) -> str | None:
    """`name` in the --config file, if one is given and readable (its errors come later)."""
    path = _option_in_args(args, "config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    command = next((arg for arg in args if not arg.startswith("-")), "")
    section = data.get(command)
    for table in (section if isinstance(section, dict) else {}, data):
        for key in (name, name.replace("_", "-")):
            if isinstance(table.get(key), str):
                return str(table[key])
    return None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
