"""The command line's options, each defined once, and how they become one `RunConfig`.

The commands (cli.py) group these options into the sections of their --help. `run_config`
builds the frozen configuration from whichever options a command has, generically:
each field from the option of its name, or as `CONVERTED_FIELDS` says. Values come from
the command line, else `BATCHPREDICT_<NAME>`, else a `--config` TOML file, else defaults.
Nothing here imports TensorFlow or pyarrow at module level, so --help answers at once.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import cloup

from batchpredict.config import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_STORAGE_TIMEOUT,
    FORMAT_NAMES,
    ON_ERROR_CHOICES,
    OUTPUT_MODE_CHOICES,
    PREFETCH_CHOICES,
    RunConfig,
    parse_delimiter,
    refuse_credentials,
)
from batchpredict.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

F = TypeVar("F", bound=Callable[..., Any])
ENV_PREFIX = "BATCHPREDICT_"
#: `--log_level` and `--log_format` (observe's; written out so that --help imports no logging).
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


class OneSpelling(cloup.Option):
    """An option answering to `--name` (the documented spelling) and `--dashed-name`, shown
    in --help once, as `--name`."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        shown = self.opts[0]
        if not self.is_flag and not self.count:
            shown += f" {self.make_metavar(ctx)}"
        return shown, record[1]


def option(name: str, **kwargs: Any) -> Callable[[F], F]:
    """`--name` (underscores, as in the contract), `--dashed-name`, and BATCHPREDICT_NAME."""
    dashed = name.replace("_", "-")
    decls = [f"--{name}", *([f"--{dashed}"] if dashed != name else []), name]
    kwargs.setdefault("envvar", f"{ENV_PREFIX}{name.upper()}")
    return cloup.option(*decls, cls=OneSpelling, **kwargs)


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


class FormatName(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.3+ only
    """A format's name, listed as choices; the registry checks it (aliases such as `json`
    are taken too) when the options are checked, so that --help needs no pyarrow."""

    name = "format"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return f"[{'|'.join(FORMAT_NAMES)}]"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[click.shell_completion.CompletionItem]:
        return [
            click.shell_completion.CompletionItem(name)
            for name in FORMAT_NAMES
            if name.startswith(incomplete)
        ]


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


# Each option is defined once below; the commands group them into the sections of --help.
def input_files(help_text: str, *, required: bool = True) -> Callable[[F], F]:
    """`--input_file`, repeatable, as each command describes it."""
    return option(
        "input_file",
        metavar="PATH",
        multiple=True,
        required=required,
        default=None if required else (),
        help=help_text,
    )


CONFIG = option(
    "config",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config_file,
    help="TOML file of option defaults (keys as option names; a [predict] table applies to "
    "predict only).",
)
MODEL = option(
    "model",
    metavar="PATH",
    required=True,
    help="Keras .keras/.h5 file, SavedModel or TF-Serving base directory (numeric versions); "
    "local or a URI (s3://...).",
)
SIGNATURE = option(
    "signature",
    metavar="NAME",
    default="serving_default",
    show_default=True,
    help="SavedModel signature to call.",
)
MODEL_VERSION = option(
    "model_version",
    metavar="N",
    type=click.IntRange(min=0),
    default=None,
    help="Version sub-directory of a TF-Serving base directory (default: highest).",
)
UNSAFE_MODEL_LOAD = option(
    "unsafe_model_load",
    is_flag=True,
    default=False,
    help="Allow Keras Lambda layers, which run code stored in the model (trusted models only).",
)
S3_ENDPOINT_URL = option(
    "s3_endpoint_url",
    metavar="URL",
    default=None,
    help="S3-compatible store (MinIO, Ceph, ...) for s3:// URIs: http://host:port (default: "
    "AWS_ENDPOINT_URL).",
)
STORAGE_TIMEOUT = option(
    "storage_timeout",
    metavar="SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_STORAGE_TIMEOUT,
    show_default=True,
    help="Give up on an object store (s3://, gs://; abfs://: to connect) that keeps failing "
    "or cannot be reached after this long (exit 74; 66 for an input, 78 for a model).",
)
INPUT_FORMAT = option(
    "input_format",
    type=FormatName(),
    default=None,
    help="Override the format told by the extension.",
)
FEATURES = option(
    "features",
    metavar="COLUMNS",
    default=None,
    help="Comma-separated columns for the model's single input, in order (default: the first "
    "input's columns not in --keep_columns).",
)
KEEP_COLUMNS = option(
    "keep_columns",
    metavar="COLUMNS",
    default=None,
    help="Comma-separated input columns copied to the output (default: every column the model "
    "does not read).",
)
PREFETCH = option(
    "prefetch",
    type=click.Choice(PREFETCH_CHOICES),
    default="auto",
    show_default=True,
    help="How batches reach the model: tfdata (a tf.data pipeline copying the next batches to "
    "the GPU during compute), numpy, or auto: tfdata on a GPU, numpy on the CPU.",
)
CHUNK_SIZE = option(
    "chunk_size",
    metavar="ROWS",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Rows read, converted and written at a time (bounds memory).",
)
MAX_RECORD_BYTES = option(
    "max_record_bytes",
    metavar="BYTES",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_RECORD_BYTES,
    show_default=True,
    help="Longest JSON line, array element or CSV row: a longer one is a bad row; an Avro "
    "block that decompresses to more is a corrupt file (74).",
)
NULL_VALUES = option(
    "null_values",
    metavar="STRINGS",
    default=None,
    help="Comma-separated strings read as null in numeric CSV/TSV columns and JSON fields "
    "(default: Arrow's NA, NULL, NaN, ...; an empty field always is).",
)
DELIMITER = option(
    "delimiter",
    metavar="CHAR",
    default=None,
    help="CSV field separator, one character: ';', '|', ... or \\t / tab (default ',').",
)
ON_ERROR = option(
    "on_error",
    type=click.Choice(ON_ERROR_CHOICES),
    default="fail",
    show_default=True,
    help="fail: stop at the first bad row (65). skip: write bad rows to the rejects file and "
    "go on.",
)
MAX_ERROR_RATE = option(
    "max_error_rate",
    metavar="RATE",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_MAX_ERROR_RATE,
    show_default=True,
    help="With --on_error skip: fail (65, output not written) when a larger share of an "
    "output's rows is bad.",
)
FILL_VALUE = option(
    "fill_value",
    metavar="NUMBER",
    type=float,
    default=None,
    help="Number used for null and NaN numeric features instead of rejecting the row.",
)
LOG_LEVEL = option(
    "log_level",
    type=click.Choice(LOG_LEVELS),
    default="info",
    show_default=True,
    help="debug also lets TensorFlow's own logging through.",
)
LOG_FORMAT = option(
    "log_format",
    type=click.Choice(LOG_FORMATS),
    default="auto",
    show_default=True,
    help="auto: console on a terminal, JSON lines otherwise.",
)
LOG_FILE = option(
    "log_file",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append log lines to this file instead of stderr.",
)
PREDICTION_COLUMN = option(
    "prediction_column",
    metavar="NAME",
    default="prediction",
    show_default=True,
    help="Name of the column for a single model output.",
)
CLASS_NAMES = option(
    "class_names",
    metavar="NAMES",
    default=None,
    help="Comma-separated class names: adds label and score columns (argmax; for one sigmoid "
    "output: negative,positive).",
)
CLASS_NAMES_FILE = option(
    "class_names_file",
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class names, one per line (instead of --class_names).",
)
THRESHOLD = option(
    "threshold",
    metavar="P",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Cut-off for a single sigmoid output's label (default 0.5 with --class_names).",
)
LABEL_OUTPUT = option(
    "label_output",
    metavar="NAME",
    default=None,
    help="With several outputs: the one to label, by its name as `inspect` shows it (default: "
    "the one the class names fit).",
)
LABEL_COLUMN = option(
    "label_column",
    metavar="NAME",
    default="label",
    show_default=True,
    help="Name of the label column.",
)
SCORE_COLUMN = option(
    "score_column",
    metavar="NAME",
    default="score",
    show_default=True,
    help="Name of the score column (the label's probability).",
)
PREDICTION_COLUMNS = (
    PREDICTION_COLUMN,
    CLASS_NAMES,
    CLASS_NAMES_FILE,
    THRESHOLD,
    LABEL_OUTPUT,
    LABEL_COLUMN,
    SCORE_COLUMN,
)
STATS_FILE = option(
    "stats_file",
    metavar="PATH",
    default=None,
    help="Gather the run's statistics and write them here as JSON (path or URI; with "
    "--output_dir also as its _stats.json).",
)
BASELINE = option(
    "baseline",
    metavar="PATH",
    default=None,
    help="An earlier run's stats file (or batchpredict profile's): gather statistics and "
    "measure each column's drift (PSI, KS) against it.",
)
MAX_DRIFT = option(
    "max_drift",
    metavar="PSI",
    type=click.FloatRange(min=0),
    default=None,
    help="With --baseline: a column's PSI above this fails the run with exit 3 (outputs "
    "written, no _SUCCESS).",
)
STATISTICS = (STATS_FILE, BASELINE, MAX_DRIFT)
SHARDS = (
    option(
        "shard_index",
        metavar="I|auto",
        default=None,
        help="Be shard I (from 0) of --shard_count: take every Nth input, write a manifest "
        "part; the last shard to finish writes _SUCCESS. auto: from JOB_COMPLETION_INDEX, "
        "SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX.",
    ),
    option(
        "shard_count",
        metavar="N",
        type=click.IntRange(min=1),
        default=None,
        help="How many shards the job has (auto: SLURM_ARRAY_TASK_COUNT if not given).",
    ),
)

PROGRESS = (
    option(
        "progress_every",
        metavar="SECONDS",
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds between progress log lines when not on a terminal.",
    ),
    option(
        "no_progress", is_flag=True, default=False, help="No progress bar and no progress lines."
    ),
)

#: The sections every command shares, so that inspect and validate read as predict would.
MODEL_SECTION = (MODEL, SIGNATURE, MODEL_VERSION, UNSAFE_MODEL_LOAD)
# Delta Lake tables (README "Delta Lake tables").
INPUT_VERSION = option(
    "input_version",
    metavar="N",
    type=click.IntRange(min=0),
    default=None,
    help="Read Delta table inputs at this version (default: the current snapshot).",
)
OUTPUT_MODE = option(
    "output_mode",
    type=click.Choice(OUTPUT_MODE_CHOICES),
    default=None,
    help="With --output_format delta: replace the table's rows (overwrite, the default) or "
    "add to them (append), in one transaction.",
)

READING = (
    INPUT_FORMAT,
    FEATURES,
    KEEP_COLUMNS,
    DELIMITER,
    NULL_VALUES,
    CHUNK_SIZE,
    MAX_RECORD_BYTES,
    S3_ENDPOINT_URL,
    STORAGE_TIMEOUT,
)
BAD_DATA = (ON_ERROR, MAX_ERROR_RATE, FILL_VALUE)
LOGGING = (CONFIG, LOG_LEVEL, LOG_FORMAT, LOG_FILE)

EPILOG = (
    "Options are spelled with underscores (--input_file); --input-file works too. Each can "
    "also be set by an environment variable, BATCHPREDICT_ and its name in capitals "
    "(BATCHPREDICT_OUTPUT_DIR), or by a --config file: the command line wins, then the "
    "environment, then the file. Exit codes: 0 done, 2 usage, 3 drift past --max_drift, "
    "65 bad data, 66 no input, 70 internal error, 73 cannot create output, 74 I/O error, "
    "75 locked, 78 model or set-up, "
    "130/143 interrupted, 141 stdout closed (README, Exit codes)."
)
FORMATTER = cloup.HelpFormatter.settings(max_width=100, col1_max_width=26)


def refuse_secrets(options: dict[str, Any]) -> None:
    """Refuse a URI holding a secret in any option (locations, the log file, ...), before
    anything is logged or opened: the message masks it."""
    for value in options.values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str):
                refuse_credentials(item)


def _csv_list(value: str | None) -> tuple[str, ...] | None:
    """`a, b,c` -> ("a", "b", "c"): spaces around names dropped, empty names too."""
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


#: The `RunConfig` fields that do not take their option's value as it is: the options they
#: are made from, and how. Every other field is the option of the same name.
CONVERTED_FIELDS: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {
    "input_files": (("input_file",), tuple),
    "features": (("features",), _csv_list),
    "keep_columns": (("keep_columns",), _csv_list),
    "null_values": (("null_values",), _csv_list),
    "class_names": (("class_names", "class_names_file"), _class_names),
    "delimiter": (("delimiter",), parse_delimiter),
    "progress": (("no_progress",), operator.not_),
    "shard_index": (("shard_index", "shard_count"), lambda i, n: _shard(i, n)[0]),
    "shard_count": (("shard_index", "shard_count"), lambda i, n: _shard(i, n)[1]),
}
#: Options that are no `RunConfig` field: they set up the command line itself (the log
#: lines' destination and look, the defaults file) or feed a converted field.
COMMAND_LINE_OPTIONS = frozenset({"config", "log_format", "log_file", "class_names_file"})


def run_config(options: dict[str, Any]) -> RunConfig:
    """The one frozen configuration, from any command's options: each field from the option
    of its name, or as `CONVERTED_FIELDS` says; a field whose options the command lacks
    keeps its default. Then the checks that need the formats and stores."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(RunConfig):
        sources, convert = CONVERTED_FIELDS.get(field.name, ((field.name,), _as_given))
        if any(source in options for source in sources):
            values[field.name] = convert(*(options.get(source) for source in sources))
    config = RunConfig(**values)
    from batchpredict.formats.registry import preflight  # pyarrow: not needed for --help

    preflight(config)
    return config


def _shard(index: str | None, count: int | None) -> tuple[int | None, int | None]:
    """`--shard_index` (a number, or auto: the scheduler's variables) and `--shard_count`."""
    from batchpredict.shards import resolve  # storage, pyarrow: not needed for --help

    shard = resolve(index, count, os.environ)
    return (None, None) if shard is None else (shard.index, shard.count)


def _as_given(value: Any) -> Any:
    return value


def stderr_format(args: list[str]) -> str:
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
    return "console" if isatty(sys.stderr) else "json"


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


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
