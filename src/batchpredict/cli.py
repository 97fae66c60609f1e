"""The command line: the commands, their options in --help sections, one frozen
`RunConfig` (cli_options), then the library.

Nothing here imports TensorFlow or pyarrow at module level, so `--help` and `--version`
answer at once, and a run imports TensorFlow only when it loads the model, after it has
found its inputs and planned its outputs. `main` is the one boundary where exceptions
become exit codes (`errors.exit_code_for`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

import click
import cloup

from batchpredict import __version__
from batchpredict.cli_failures import as_ours, report_failure, report_usage_failure
from batchpredict.cli_options import (
    BAD_DATA,
    EPILOG,
    FORMATTER,
    INPUT_VERSION,
    LOG_FILE,
    LOG_FORMAT,
    LOG_LEVEL,
    LOGGING,
    MODEL_SECTION,
    OUTPUT_MODE,
    PREDICTION_COLUMNS,
    PREFETCH,
    PROGRESS,
    READING,
    S3_ENDPOINT_URL,
    SHARDS,
    STATISTICS,
    STATS_FILE,
    STORAGE_TIMEOUT,
    BatchSizeType,
    FormatName,
    input_files,
    option,
    refuse_secrets,
    run_config,
)
from batchpredict.config import ENGINE_CHOICES, check_s3_endpoint
from batchpredict.errors import (
    DataError,
    ExitCode,
    Terminated,
)


@cloup.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    formatter_settings=FORMATTER,
)
@click.version_option(__version__, "--version", prog_name="batchpredict")
def cli() -> None:
    """Run TensorFlow/Keras models over CSV, JSON lines, Avro and Parquet files."""


@cli.command(epilog=EPILOG, formatter_settings=FORMATTER)
@cloup.option_group(
    "Model",
    *MODEL_SECTION,
    option(
        "device",
        metavar="DEVICE",
        default="auto",
        show_default=True,
        help="auto or gpu (every GPU, else the CPU), cpu, gpu:N, or a list: gpu:0,gpu:1.",
    ),
    option(
        "gpu_memory_limit",
        metavar="MB",
        type=click.IntRange(min=1),
        default=None,
        help="Cap the GPU memory TensorFlow may take, in MB.",
    ),
    PREFETCH,
    option(
        "batch_size",
        metavar="N|auto",
        type=BatchSizeType(),
        default="auto",
        show_default=True,
        help="Rows per model call (the last is padded), or auto: the fastest of a few sizes timed "
        "on the first chunk.",
    ),
)
@cloup.option_group(
    "Inputs",
    input_files(
        "File, glob, directory, Delta table folder or URI (s3://bucket/day=*/*.parquet); "
        "repeatable; '-' reads stdin."
    ),
    *READING,
    INPUT_VERSION,
)
@cloup.option_group(
    "Outputs",
    option(
        "output_file",
        metavar="PATH",
        default=None,
        help="One output for all inputs; '-' writes to stdout.",
    ),
    option(
        "output_dir",
        metavar="PATH",
        default=None,
        help="One output per input, at its path relative to its directory or glob root.",
    ),
    option("output_format", type=FormatName(), default=None, help="Default: the input's format."),
    OUTPUT_MODE,
    option(
        "skip_existing",
        is_flag=True,
        default=False,
        help="With --output_dir: skip outputs the manifest records as made by the same model, "
        "options and inputs, so that a rerun resumes.",
    ),
    option(
        "max_output_bytes",
        metavar="BYTES",
        type=click.IntRange(min=1),
        default=None,
        help="Largest output or rejects file: a run whose output grows beyond it fails (74) "
        "and commits nothing (default: no limit).",
    ),
)
@cloup.option_group("Prediction columns", *PREDICTION_COLUMNS)
@cloup.option_group(
    "Bad data",
    *BAD_DATA,
    option(
        "rejects_file",
        metavar="PATH",
        default=None,
        help="Where --on_error skip writes bad rows as JSON lines (default: "
        "<output>.rejects.jsonl, or DIR/_rejects.jsonl).",
    ),
)
@cloup.option_group(
    "Running unattended",
    *LOGGING,
    option(
        "lock_file",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        default=None,
        help="Hold an flock on this file for the run; exit 75 at once if another run has it.",
    ),
    option(
        "metrics_file",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write Prometheus textfile-collector metrics here (also on failure).",
    ),
    option(
        "job_name",
        metavar="NAME",
        default="batchpredict",
        show_default=True,
        help="The `job` label of the metrics.",
    ),
    option(
        "summary_file",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write the run summary here as JSON (also on failure).",
    ),
    *PROGRESS,
)
@cloup.option_group("Statistics and drift", *STATISTICS)
@cloup.option_group(
    "Engines",
    option(
        "engine",
        type=click.Choice(ENGINE_CHOICES),
        default="local",
        show_default=True,
        help="local: this machine's threads. ray: model actors on Ray "
        "(pip install 'batchpredict[ray]'), part files in --output_dir.",
    ),
    option(
        "ray_address",
        metavar="ADDRESS",
        default=None,
        help="The cluster (ray://head:10001, or auto); default: start Ray here.",
    ),
    option(
        "ray_concurrency",
        metavar="N",
        type=click.IntRange(min=1),
        default=None,
        help="Model actors (default: one per GPU, else one per 4 CPUs).",
    ),
    option(
        "ray_gpus_per_worker",
        metavar="N",
        type=click.FloatRange(min=0),
        default=None,
        help="GPUs per actor (default 1 when the cluster has GPUs, else 0).",
    ),
    option(
        "ray_cpus_per_worker",
        metavar="N",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="CPUs reserved per actor (default 1); as many as a node has puts one per node.",
    ),
    option(
        "preserve_order",
        is_flag=True,
        default=False,
        help="Part files in input order (slower: blocks wait for earlier ones).",
    ),
    help="The --ray_* options and --preserve_order are for --engine ray.",
)
@cloup.option_group("Shards (array jobs)", *SHARDS)
def predict(**options: Any) -> None:
    """Predict every row of the inputs and write the predictions atomically."""
    from batchpredict.metrics import check_metrics_file
    from batchpredict.observe import (
        bind_run_id,
        configure_logging,
        new_run_id,
        tensorflow_imported_quietly,
    )

    refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    bind_run_id(new_run_id())
    config = run_config(options)
    if config.metrics_file is not None:
        # Before any work: 73 if it is a link, or holds what is not this job's.
        check_metrics_file(config.metrics_file, config.job_name)
    from batchpredict import pipeline
    from batchpredict.process import prepare_tensorflow

    # The run takes the lock, finds the inputs and plans the outputs before it loads the
    # model: a run that cannot go ahead fails without waiting for TensorFlow.
    with tensorflow_imported_quietly(config.log_level):
        pipeline.run(config, prepare=prepare_tensorflow)


@cli.command(epilog=EPILOG, formatter_settings=FORMATTER)
@cloup.option_group("Model", *MODEL_SECTION)
@cloup.option_group(
    "Inputs",
    input_files(
        "Also show the column mapping predict would use for these inputs (files, globs, "
        "directories or URIs; repeatable).",
        required=False,
    ),
    *READING,
)
@cloup.option_group("Bad data", *BAD_DATA)
@cloup.option_group("Logging", *LOGGING)
def inspect(**options: Any) -> None:
    """Print the model's inputs and outputs (and the column mapping for the inputs given)."""
    from batchpredict import pipeline, storage
    from batchpredict.observe import (
        configure_logging,
        escape_controls,
        tensorflow_imported_quietly,
    )

    refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    quietly = tensorflow_imported_quietly(options["log_level"])
    if options["input_file"]:
        config = run_config(options)
        with quietly, storage.store_settings(config.s3_endpoint_url, config.storage_timeout):
            lines = pipeline.inspect(config)
    else:
        check_s3_endpoint(options["s3_endpoint_url"])
        with (
            quietly,
            storage.store_settings(options["s3_endpoint_url"], options["storage_timeout"]),
        ):
            lines = pipeline.inspect_model(
                options["model"],
                signature=options["signature"],
                version=options["model_version"],
                unsafe=options["unsafe_model_load"],
            )
    for line in lines:
        click.echo(escape_controls(line))  # one line each, whatever names they hold


@cli.command(epilog=EPILOG, formatter_settings=FORMATTER)
@cloup.option_group("Model", *MODEL_SECTION)
@cloup.option_group(
    "Inputs",
    input_files("File, glob, directory or URI (s3://bucket/day=*/*.parquet); repeatable."),
    *READING,
)
@cloup.option_group("Bad data", *BAD_DATA)
@cloup.option_group("Logging", *LOGGING)
def validate(**options: Any) -> None:
    """Check the first chunk of every input as predict would read it; write nothing."""
    from batchpredict import pipeline, storage
    from batchpredict.observe import (
        configure_logging,
        escape_controls,
        tensorflow_imported_quietly,
    )

    refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    config = run_config(options)
    quietly = tensorflow_imported_quietly(config.log_level)
    with quietly, storage.store_settings(config.s3_endpoint_url, config.storage_timeout):
        report = pipeline.validate(config)
    for line in report.lines:
        click.echo(escape_controls(line))  # one line each, whatever names they hold
    for problem in report.problems:
        click.echo(f"problem: {escape_controls(problem)}")
    if report.problems:
        raise DataError(f"{len(report.problems)} problem(s) found; see the lines above")


@cli.command(epilog=EPILOG, formatter_settings=FORMATTER)
@cloup.option_group("Model", *MODEL_SECTION)
@cloup.option_group(
    "Inputs",
    input_files(
        "Reference data, such as the training set: file, glob, directory or URI; repeatable."
    ),
    *READING,
)
@cloup.option_group("Prediction columns", *PREDICTION_COLUMNS)
@cloup.option_group("Bad data", *BAD_DATA)
@cloup.option_group("Statistics", STATS_FILE)
@cloup.option_group("Logging", *LOGGING, *PROGRESS)
def profile(**options: Any) -> None:
    """Write the statistics of reference data (features and predictions) to --stats_file,
    a baseline for predict --baseline; no predictions are written."""
    from batchpredict.observe import configure_logging, tensorflow_imported_quietly

    refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    config = run_config(options)
    from batchpredict import pipeline
    from batchpredict.process import prepare_tensorflow

    with tensorflow_imported_quietly(config.log_level):
        pipeline.profile(config, prepare=prepare_tensorflow)


@cli.command(epilog=EPILOG, formatter_settings=FORMATTER)
@cloup.argument("stats_file", metavar="STATS_FILE")
@cloup.option_group(
    "Report",
    option(
        "output",
        metavar="PATH",
        required=True,
        help="The HTML file to write (self-contained: it opens with no network).",
    ),
    option(
        "baseline",
        metavar="PATH",
        default=None,
        help="A stats file to compare with (the drift is computed when the run was not "
        "compared with it).",
    ),
    S3_ENDPOINT_URL,
    STORAGE_TIMEOUT,
)
@cloup.option_group("Logging", *LOGGING)
def report(**options: Any) -> None:
    """Write an HTML report of a stats file: rows, timing, predictions, drift, features."""
    from batchpredict import storage
    from batchpredict.html_report import write_report
    from batchpredict.observe import configure_logging, get_logger

    refuse_secrets(options)
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    check_s3_endpoint(options["s3_endpoint_url"])
    with storage.store_settings(options["s3_endpoint_url"], options["storage_timeout"]):
        write_report(options["stats_file"], options["output"], options["baseline"])
    get_logger().info("report written", output=options["output"])


@cli.command(epilog=EPILOG, formatter_settings=FORMATTER)
@cloup.argument("path", metavar="PATH")
@cloup.option_group("Storage", S3_ENDPOINT_URL, STORAGE_TIMEOUT)
@cloup.option_group("Logging", LOG_LEVEL, LOG_FORMAT, LOG_FILE)
def verify(path: str, **options: Any) -> None:
    """Check an output folder (or one output file) against its _manifest.json.

    Exits 0 when every output recorded is still the file recorded (size, SHA-256, rows);
    65 naming each one missing, truncated or altered, and a folder without _SUCCESS; 66
    when there is no manifest.
    """
    from batchpredict import storage, verification
    from batchpredict.observe import configure_logging, escape_controls

    refuse_secrets({"path": path, **options})
    configure_logging(options["log_level"], options["log_format"], options["log_file"])
    check_s3_endpoint(options["s3_endpoint_url"])
    with storage.store_settings(options["s3_endpoint_url"], options["storage_timeout"]):
        report = verification.verify(path)
    for problem in report.problems:
        click.echo(f"problem: {escape_controls(problem)}")
    click.echo(escape_controls(report.summary()))
    if not report.ok:
        raise DataError(verification.failure_message(report))


@cli.command()
def formats() -> None:
    """List the readers and writers and the extensions they claim."""
    from batchpredict.formats.registry import describe_formats
    from batchpredict.storage import COMPRESSION_SUFFIXES

    click.echo(f"{'format':<10}{'read':<6}{'write':<7}extensions")
    for name, extensions, can_read, can_write in describe_formats():
        click.echo(
            f"{name:<10}{'yes' if can_read else 'no':<6}{'yes' if can_write else 'no':<7}"
            f"{' '.join(extensions) or '(a folder holding _delta_log/)'}"
        )
    suffixes = " ".join(COMPRESSION_SUFFIXES)
    click.echo(f"compression by suffix: {suffixes} (CSV, TSV, JSON lines)")


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
    """Run the CLI and turn every outcome into a documented exit code.

    Whatever the run put in the process environment (TensorFlow's log settings, set before
    its import) is taken out again on return, so that a program calling `main` keeps its own;
    so is its logging set-up and run id (its streams may be gone once it returns).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Past a file-size limit (ulimit -f) a write should fail with EFBIG, exit 74, and the
    # temporary file be removed, rather than the kernel killing the process mid-write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with _environ_restored(), _logging_undone():
        try:
            _invoke(args)
        except click.exceptions.Exit as exc:  # --help, --version
            return int(exc.exit_code)
        except click.ClickException as exc:
            return report_usage_failure(exc, args)
        except BaseException as exc:  # noqa: BLE001 - the one place a failure becomes a code
            return report_failure(as_ours(exc), args)
    return ExitCode.OK


@contextlib.contextmanager
def _logging_undone() -> Iterator[None]:
    """Logging as unconfigured, and no run id, after the block (if it set them up:
    `--help` imports no logging)."""
    try:
        yield
    finally:
        observe = sys.modules.get("batchpredict.observe")
        if observe is not None:
            observe.unbind_run_id()
            observe.reset_logging()


@contextlib.contextmanager
def _environ_restored() -> Iterator[None]:
    """The process environment as it was before the block, afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != saved:
            os.environ.clear()
            os.environ.update(saved)


def _invoke(args: list[str]) -> None:
    """What `cli.main(standalone_mode=False)` does, without its handlers: click would print
    an empty line on Ctrl-C (not a JSON line) and turn a closed stdout into exit 1."""
    with cli.make_context("batchpredict", args) as ctx:
        cli.invoke(ctx)
