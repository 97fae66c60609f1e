"""The frozen run configuration and the checks that need no data and no model."""

from __future__ import annotations

import math
import re
import urllib.parse
from dataclasses import dataclass

from batchpredict.errors import UsageError

STDIO = "-"
DEFAULT_CHUNK_SIZE = 65536
DEVICE_CHOICES = ("auto", "cpu", "gpu")
#: `--prefetch`: auto (tfdata on a GPU, numpy on the CPU), or either path forced.
PREFETCH_CHOICES = ("auto", "tfdata", "numpy")
ON_ERROR_CHOICES = ("fail", "skip")
ENGINE_CHOICES = ("local", "ray")
#: The registered reader and writer names (formats.registry checks that they agree), listed
#: as `--input_format` and `--output_format` choices without importing the formats.
FORMAT_NAMES = ("csv", "tsv", "jsonl", "avro", "parquet", "delta")
#: `--output_mode` of `--output_format delta`.
OUTPUT_MODE_CHOICES = ("overwrite", "append")
DEFAULT_MAX_ERROR_RATE = 0.01
#: Seconds a store may keep failing before an operation on it fails (`--storage_timeout`).
DEFAULT_STORAGE_TIMEOUT = 60.0
#: Spellings of a tab for `--delimiter`, besides the character itself.
TAB_NAMES = ("\\t", "tab")
#: `--null_values`: at most this many strings of at most this many characters (Arrow keeps
#: them in a trie of limited size).
MAX_NULL_VALUES = 64
MAX_NULL_VALUE_CHARS = 64
#: `--max_record_bytes` default: a JSON line, CSV row or Avro block larger than this is bad.
DEFAULT_MAX_RECORD_BYTES = 64 << 20
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(value: str) -> bool:
    """Whether `value` names a location by URI (`s3://bucket/key`) rather than a local path."""
    return bool(_URI.match(value))


#: Schemes whose authority may name someone without a password: Azure's
#: `container@account.dfs.core.windows.net` and HDFS's `user@namenode` (Hadoop's simple
#: authentication). Elsewhere a lone name before `@` is a token.
_NAMED_AUTHORITY = frozenset({"abfs", "abfss", "hdfs", "viewfs"})
#: `?name=value`: a query string (a `?` glob wildcard is followed by more of a name).
_QUERY = re.compile(r"\?[A-Za-z_][A-Za-z0-9_.-]*=")


def refuse_credentials(value: str) -> None:
    """Refuse a URI that may carry a secret, without echoing it: a password or a token in
    its userinfo (`s3://KEY:SECRET@bucket/...`, `KEY%3ASECRET@`, `https://TOKEN@host`) or
    a query string (`?access_key=...`), which batchpredict would also take for part of an
    object's key. Secrets on a command line end up in shell history, crontabs and process
    lists, and these would end up in logs, summaries and object keys too."""
    if not is_uri(value):
        return
    scheme, _, rest = value.partition("://")
    userinfo, at, host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")
    decoded = urllib.parse.unquote(userinfo)
    named = scheme.lower() in _NAMED_AUTHORITY and ":" not in decoded and userinfo == decoded
    if at and not named:
        raise UsageError(
            f"{scheme}://***@{host}/...: credentials in a URI are refused; batchpredict takes "
            "them from where the store's SDK looks (environment, config files, instance roles)"
        )
    query = _QUERY.search(rest)
    if query:
        raise UsageError(
            f"{scheme}://{rest[: query.start()]}?***: a query string in a URI is refused (it "
            "would become part of the object's key, and may hold a secret); options and "
            "credentials come from where the store's SDK looks (environment, config files, "
            "instance roles)"
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything one `predict` run needs; built once by the CLI or the Python API."""

    model: str
    input_files: tuple[str, ...]
    input_format: str | None = None
    output_file: str | None = None
    output_dir: str | None = None
    output_format: str | None = None
    features: tuple[str, ...] | None = None
    keep_columns: tuple[str, ...] | None = None
    prediction_column: str = "prediction"
    class_names: tuple[str, ...] | None = None
    threshold: float | None = None
    #: The output `label` and `score` are made from (a name as `inspect` shows it); None:
    #: the only output, or the only one whose width fits the class names.
    label_output: str | None = None
    label_column: str = "label"
    score_column: str = "score"
    batch_size: int | None = None  # None: `auto`, measured on the first chunk
    chunk_size: int = DEFAULT_CHUNK_SIZE
    signature: str = "serving_default"
    model_version: int | None = None
    unsafe_model_load: bool = False
    device: str = "auto"
    gpu_memory_limit: int | None = None
    #: How batches reach the model (`PREFETCH_CHOICES`; see predictor.prefetch_path).
    prefetch: str = "auto"
    log_level: str = "info"
    lock_file: str | None = None
    on_error: str = "fail"
    rejects_file: str | None = None
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    fill_value: float | None = None
    skip_existing: bool = False
    progress: bool = True
    progress_every: float = 30.0
    metrics_file: str | None = None
    job_name: str = "batchpredict"
    summary_file: str | None = None
    engine: str = "local"
    ray_address: str | None = None
    ray_concurrency: int | None = None
    ray_gpus_per_worker: float | None = None
    #: CPUs Ray reserves for each model actor (None: Ray's default, 1).
    ray_cpus_per_worker: float | None = None
    preserve_order: bool = False
    #: Strings read as null in the numeric columns of CSV and TSV and in the model's numeric
    #: JSON fields (None: Arrow's usual markers); the empty field always is.
    null_values: tuple[str, ...] | None = None
    #: CSV field separator (None: ","); one character.
    delimiter: str | None = None
    #: Longest JSON line or array element, and largest decompressed Avro block, read.
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    #: Largest output file written (None: no limit); beyond it the run fails (74).
    max_output_bytes: int | None = None
    #: The S3-compatible store `s3://` URIs go to (None: where the AWS SDK's own settings,
    #: `AWS_ENDPOINT_URL` included, point).
    s3_endpoint_url: str | None = None
    #: Seconds an object store may keep failing (unreachable, erroring) before the
    #: operation fails: S3's connect and request timeouts and retries, GCS's retry limit,
    #: and for GCS and Azure the wait for a connection.
    storage_timeout: float = DEFAULT_STORAGE_TIMEOUT
    #: Write the run's statistics here as JSON (README "Statistics and drift").
    stats_file: str | None = None
    #: An earlier run's (or `batchpredict profile`'s) stats file to measure drift against.
    baseline: str | None = None
    #: A column whose PSI against the baseline is above this fails the run: outputs are
    #: written, `_SUCCESS` is not, exit 3.
    max_drift: float | None = None
    #: This process's shard of the job, from 0 (README "Shards"); None: not sharded.
    #: `--shard_index auto` is resolved from the scheduler's variables before it gets here.
    shard_index: int | None = None
    #: How many shards the job has (with `shard_index`).
    shard_count: int | None = None

    # -- Delta Lake tables (README "Delta Lake tables") -----------------------------------
    #: `--input_version`: the version Delta table inputs are read at (None: the current one).
    input_version: int | None = None
    #: `--output_mode` of `--output_format delta`: overwrite (None) or append.
    output_mode: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def collects_stats(self) -> bool:
        """Whether the run gathers statistics: only when asked (`--stats_file`,
        `--baseline`), since they cost up to 40% of a wide input's run time (README
        "Statistics and drift")."""
        return self.stats_file is not None or self.baseline is not None


def parse_delimiter(text: str | None) -> str | None:
    """`--delimiter` as given on the command line: one character, or `\\t` / `tab` for a tab."""
    if text is None:
        return None
    return "\t" if text.lower() in TAB_NAMES else text


def _validate_reading(config: RunConfig) -> None:
    """`--delimiter` is one plain character, for CSV; `--null_values` are plain strings."""
    delimiter = config.delimiter
    if delimiter is not None:
        plain = delimiter.isascii() and delimiter.isprintable() and not delimiter.isalnum()
        if len(delimiter) != 1 or not (delimiter == "\t" or plain) or delimiter in '".-+':
            raise UsageError(
                f"--delimiter must be one character such as ';' or '|' (or \\t or tab for a "
                f"tab), not a quote, letter, digit, '.', '-' or '+'; got {delimiter!r}"
            )
        fmt = (config.input_format or "csv").strip().lower().lstrip(".")
        if fmt != "csv":
            raise UsageError(f"--delimiter is for CSV input, not --input_format {fmt}")
    for value in config.null_values or ():
        if not value or len(value) > MAX_NULL_VALUE_CHARS or "\n" in value or "\r" in value:
            raise UsageError(
                f"--null_values: {value!r} is not a value (1 to {MAX_NULL_VALUE_CHARS} "
                "characters on one line; the empty field is always null)"
            )
    if config.null_values is not None and len(config.null_values) > MAX_NULL_VALUES:
        raise UsageError(f"--null_values takes at most {MAX_NULL_VALUES} values")


def validate(config: RunConfig) -> None:
    """Refuse option combinations that cannot work, before anything is read or loaded."""
    _validate_locations(config)
    _validate_engine(config)
    _validate_numbers(config)
    _validate_device(config.device)
    if config.prefetch not in PREFETCH_CHOICES:
        raise UsageError(f"--prefetch must be auto, tfdata or numpy, got {config.prefetch!r}")
    _validate_reading(config)
    _validate_bad_rows(config)
    _validate_label_options(config)
    _validate_stats(config)
    _validate_delta(config)
    _validate_shards(config)


def _validate_delta(config: RunConfig) -> None:
    """`--output_format delta` writes one table, the `--output_dir`, in one transaction:
    options that assume one file per input do not apply; `--output_mode` is its own."""
    delta = (config.output_format or "").strip().lower() == "delta"
    if config.output_mode is not None:
        if config.output_mode not in OUTPUT_MODE_CHOICES:
            raise UsageError(
                f"--output_mode must be overwrite or append, got {config.output_mode!r}"
            )
        if not delta:
            raise UsageError("--output_mode is for --output_format delta")
    if config.input_version is not None and config.input_version < 0:
        raise UsageError(f"--input_version must be at least 0, got {config.input_version}")
    if not delta:
        return
    if config.output_dir is None:
        raise UsageError(
            "--output_format delta writes a table folder: give it as --output_dir (not "
            "--output_file)"
        )
    refused = {
        "--engine ray": config.engine != "local",
        "--skip_existing": config.skip_existing,
        "--max_output_bytes": config.max_output_bytes is not None,
    }
    for name, given in refused.items():
        if given:
            raise UsageError(f"{name} cannot be used with --output_format delta")


def _validate_shards(config: RunConfig) -> None:
    """A shard writes one output per input and its manifest part into --output_dir, with
    the local engine; its own statistics would be one shard's, so they are refused."""
    index, count = config.shard_index, config.shard_count
    if index is None and count is None:
        return
    if index is None or count is None:
        raise UsageError("--shard_index and --shard_count go together")
    if not isinstance(index, int) or not isinstance(count, int):
        raise UsageError(f"--shard_index and --shard_count must be numbers, got {index!r}")
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard_index must be from 0 to {count - 1} (--shard_count {count})")
    if config.output_dir is None:
        raise UsageError("shards (--shard_index) need --output_dir: each writes its outputs there")
    if config.engine != "local":
        raise UsageError("shards (--shard_index) are for the local engine, not --engine ray")
    if STDIO in config.input_files:
        raise UsageError("shards (--shard_index) cannot read stdin ('-')")
    if (config.output_format or "").strip().lower() == "delta":
        # Each shard would commit its own overwrite of the one table.
        raise UsageError("--output_format delta cannot be used with shards (--shard_index) yet")
    asked = [f"--{name}" for name in ("stats_file", "baseline", "max_drift", "rejects_file")]
    given = [name for name in asked if getattr(config, name[2:]) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be used with shards (--shard_index) yet")


def _validate_stats(config: RunConfig) -> None:
    """Statistics options that fit together: a drift limit needs a baseline."""
    if config.max_drift is not None:
        if not (math.isfinite(config.max_drift) and config.max_drift >= 0):
            raise UsageError(f"--max_drift must be a number of at least 0, got {config.max_drift}")
        if config.baseline is None:
            raise UsageError(
                "--max_drift needs --baseline (the stats file drift is measured against)"
            )
    for name in ("stats_file", "baseline"):
        if getattr(config, name) == STDIO:
            raise UsageError(f"--{name} must be a path or URI, not '-'")


def _validate_locations(config: RunConfig) -> None:
    """Inputs and outputs: some given, no credentials in URIs, stdin and stdout used sanely."""
    if not config.input_files:
        raise UsageError("no --input_file given")
    locations = (config.model, *config.input_files, config.output_file, config.output_dir)
    others = (
        config.rejects_file,
        config.summary_file,
        config.lock_file,
        config.metrics_file,
        config.stats_file,
        config.baseline,
    )
    for value in (*locations, *others):
        if value is not None:
            refuse_credentials(value)
    if config.output_file is not None and config.output_dir is not None:
        raise UsageError("--output_file and --output_dir cannot be used together")
    if STDIO in config.input_files:
        if config.input_format is None:
            raise UsageError("reading stdin ('-') needs --input_format")
        if len(config.input_files) > 1:
            raise UsageError("stdin ('-') cannot be combined with other --input_file values")
        if config.output_file is None:
            raise UsageError("reading stdin ('-') needs --output_file (a path, or '-' for stdout)")
    if config.output_dir == STDIO:
        raise UsageError("--output_dir cannot be '-'; use --output_file - for stdout")
    for name, value in (("lock_file", config.lock_file), ("metrics_file", config.metrics_file)):
        if value is not None and is_uri(value):
            # A lock is one machine's; the metrics file is for this machine's node_exporter.
            raise UsageError(f"--{name} must be a local path, got {value}")
    if config.skip_existing and config.output_dir is None:
        raise UsageError("--skip_existing needs --output_dir (its manifest records what is done)")
    check_s3_endpoint(config.s3_endpoint_url)
    if not config.storage_timeout > 0:
        raise UsageError(f"--storage_timeout must be above 0, got {config.storage_timeout}")


def check_s3_endpoint(url: str | None) -> None:
    """`--s3_endpoint_url` names a store by http(s) URL, with no credentials in it."""
    if url is None:
        return
    refuse_credentials(url)
    if not url.startswith(("http://", "https://")):
        raise UsageError(
            f"--s3_endpoint_url: expected http://host:port or https://host, got {url!r}"
        )


def _validate_engine(config: RunConfig) -> None:
    if config.engine not in ENGINE_CHOICES:
        raise UsageError(f"--engine must be local or ray, got {config.engine!r}")
    if config.engine == "ray":
        if config.output_dir is None:
            raise UsageError("--engine ray writes part files: give --output_dir")
        if STDIO in config.input_files:
            raise UsageError("--engine ray cannot read stdin: Ray's workers read the files")
        if config.skip_existing:
            raise UsageError("--skip_existing is for the local engine (one output per input)")
    if config.ray_concurrency is not None and config.ray_concurrency < 1:
        raise UsageError("--ray_concurrency must be at least 1")


def _validate_numbers(config: RunConfig) -> None:
    """Sizes, versions and names that must be positive or present."""
    if config.batch_size is not None and config.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {config.batch_size}")
    if config.chunk_size < 1:
        raise UsageError(f"--chunk_size must be at least 1, got {config.chunk_size}")
    if config.max_record_bytes < 1:
        raise UsageError(f"--max_record_bytes must be at least 1, got {config.max_record_bytes}")
    if config.max_output_bytes is not None:
        if config.max_output_bytes < 1:
            raise UsageError(
                f"--max_output_bytes must be at least 1, got {config.max_output_bytes}"
            )
        outputs = (config.output_file, config.output_dir)
        if config.engine != "local" or any(o is not None and is_uri(o) for o in outputs):
            raise UsageError("--max_output_bytes is for local outputs of the local engine")
    if config.model_version is not None and config.model_version < 0:
        raise UsageError(
            f"--model_version must be a non-negative number, got {config.model_version}"
        )
    if config.gpu_memory_limit is not None and config.gpu_memory_limit < 1:
        raise UsageError("--gpu_memory_limit is in MB and must be at least 1")
    if not config.prediction_column:
        raise UsageError("--prediction_column cannot be empty")
    if not config.progress_every > 0:
        raise UsageError(f"--progress_every must be above 0, got {config.progress_every}")
    if not config.job_name:
        raise UsageError("--job_name cannot be empty")
    if config.features is not None and config.keep_columns is not None:
        both = sorted(set(config.features) & set(config.keep_columns))
        if both:
            raise UsageError(
                f"column(s) {', '.join(both)} named in both --features and --keep_columns"
            )


def _validate_bad_rows(config: RunConfig) -> None:
    """What a bad row does: fail or skip, where rejects go, how many may be, what fills."""
    if config.on_error not in ON_ERROR_CHOICES:
        raise UsageError(f"--on_error must be fail or skip, got {config.on_error!r}")
    if config.rejects_file is not None and config.on_error != "skip":
        raise UsageError("--rejects_file needs --on_error skip")
    if config.on_error == "skip" and config.rejects_file is None and config.output_file == STDIO:
        raise UsageError("--on_error skip with output to stdout needs --rejects_file")
    if not 0.0 <= config.max_error_rate <= 1.0:
        raise UsageError(f"--max_error_rate must be between 0 and 1, got {config.max_error_rate}")
    if config.fill_value is not None and not math.isfinite(config.fill_value):
        raise UsageError(f"--fill_value must be a finite number, got {config.fill_value}")


def _validate_label_options(config: RunConfig) -> None:
    """The label and score columns need names of their own, and a labelled output labels."""
    if config.class_names is not None and len(set(config.class_names)) != len(config.class_names):
        raise UsageError("--class_names has duplicate names")
    if config.class_names is not None and len(config.class_names) < 2:
        raise UsageError("--class_names needs at least two names")
    if config.threshold is not None and not 0.0 <= config.threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, got {config.threshold}")
    if config.label_output is not None and config.class_names is None and config.threshold is None:
        raise UsageError("--label_output needs --class_names (or --threshold)")
    names = config.class_names
    if config.threshold is not None and names is not None and len(names) != 2:
        raise UsageError(
            "--threshold labels a sigmoid output with 2 class names (negative, positive); "
            f"--class_names has {len(names)}"
        )
    for option, value in (
        ("--label_column", config.label_column),
        ("--score_column", config.score_column),
    ):
        if not value:
            raise UsageError(f"{option} cannot be empty")
    if config.label_column == config.score_column:
        raise UsageError(
            f"--label_column and --score_column are both {config.label_column!r}; give them "
            "different names"
        )


def _validate_device(device: str) -> None:
    """auto, cpu, gpu, gpu:N, or a list of gpu:N (or of cpu:N: logical CPU devices)."""
    if device in DEVICE_CHOICES:
        return
    parts = [part.partition(":") for part in device.split(",")]
    kinds = {name for name, _, _ in parts}
    logical_cpus = kinds == {"cpu"} and len(parts) > 1
    if not ((kinds == {"gpu"} or logical_cpus) and all(sep and i.isdigit() for _, sep, i in parts)):
        raise UsageError(
            f"--device must be auto, cpu, gpu, gpu:N or a list like gpu:0,gpu:1, got {device!r}"
        )
