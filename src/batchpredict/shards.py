"""Shards: one job's inputs split over N independent processes, with no coordinator.

`--shard_index I --shard_count N` (or `--shard_index auto`, from the scheduler's array
variables) makes this process shard I of N. Every shard expands the same `--input_file`
values into the same ordered listing and takes input k when k mod N == I: round-robin
rather than contiguous ranges, so that a listing sorted by name (dates, partitions, Spark's
`part-00000`...) spreads its large and small files over every shard instead of handing one
shard all of one day's.

Each shard writes its own outputs and, at its end, its manifest part
`_manifest.shard-<I>-of-<N>.json` (the `_manifest.json` document with its own outputs and
a `shard` object naming the plan, `complete` once the shard finished: a shard that failed
or is running again leaves its part incomplete). It then lists the parts: when all N are
there, finished, and name the same plan (a digest of the listing, N and the settings
id), it merges them into `_manifest.json` and creates `_SUCCESS` if it is absent,
atomically where the store can (a local `O_EXCL` create, an S3 `If-None-Match: *` put),
so exactly one shard writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batchpredict import storage
from batchpredict.atomic import write_whole
from batchpredict.errors import InputMissingError, ReadWriteError, UsageError
from batchpredict.formats.base import RowGroups
from batchpredict.formats.parquet_io import ParquetReader
from batchpredict.observe import get_logger
from batchpredict.sources import InputFile

#: The schedulers' variables `--shard_index auto` reads, in this order: (index, count);
#: a scheduler that gives no count needs `--shard_count`.
SCHEDULER_VARIABLES = (
    ("JOB_COMPLETION_INDEX", None),  # Kubernetes Indexed Job
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
    ("AWS_BATCH_JOB_ARRAY_INDEX", None),  # AWS Batch array job
)
AUTO = "auto"


@dataclass(frozen=True)
class Shard:
    """This process's share of a job: shard `index` (from 0) of `count`."""

    index: int
    count: int

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def takes(self, position: int) -> bool:
        """Whether the input at `position` of the listing is this shard's."""
        return position % self.count == self.index


def resolve(index: str | int | None, count: int | None, env: Mapping[str, str]) -> Shard | None:
    """The shard `--shard_index` and `--shard_count` name (`auto`: from `env`), None
    without them; a usage error (2) for an index without a count, or out of range."""
    if index is None:
        if count is not None:
            raise UsageError("--shard_count needs --shard_index (a number, or auto)")
        return None
    if isinstance(index, str) and index.strip().lower() == AUTO:
        index, count = _from_scheduler(count, env)
    else:
        index = _whole_number(index, "--shard_index")
    if count is None:
        raise UsageError("--shard_index needs --shard_count (the number of shards)")
    if count < 1:
        raise UsageError(f"--shard_count must be at least 1, got {count}")
    if not 0 <= index < count:
        raise UsageError(f"--shard_index must be from 0 to {count - 1} (--shard_count {count})")
    return Shard(index, count)


def _from_scheduler(count: int | None, env: Mapping[str, str]) -> tuple[int, int | None]:
    for index_name, count_name in SCHEDULER_VARIABLES:
        if env.get(index_name, "").strip():
            index = _whole_number(env[index_name], index_name)
            given = env.get(count_name, "").strip() if count_name else ""
            if given and count is None:
                count = _whole_number(given, count_name or "")
            if count is None:
                raise UsageError(f"--shard_index auto found {index_name}: give --shard_count")
            return index, count
    names = ", ".join(name for name, _ in SCHEDULER_VARIABLES)
    raise UsageError(f"--shard_index auto: none of {names} is set")


def _whole_number(value: Any, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise UsageError(f"{name} must be a whole number or auto, got {value!r}") from None


# --------------------------------------------------------------------------- the plan


def of(shard_index: int | None, shard_count: int | None) -> Shard | None:
    """The shard a (validated) configuration names, None when it names none."""
    if shard_index is None or shard_count is None:
        return None
    return Shard(shard_index, shard_count)


def take(listing: Sequence[InputFile], shard: Shard) -> list[InputFile]:
    """This shard's inputs of the job's `listing` (every shard's is the same), logged."""
    units = split_row_groups(listing, shard.count) if len(listing) < shard.count else listing
    taken = [item for position, item in enumerate(units) if shard.takes(position)]
    get_logger().info(
        "shard planned",
        shard=shard.name,
        shard_index=shard.index,
        shard_count=shard.count,
        listed=len(listing),
        inputs=[item.path for item in taken],
        **(
            {"parts": [item.relative_path for item in taken]}
            if any(item.row_groups for item in taken)
            else {}
        ),
    )
    return taken


def split_row_groups(listing: Sequence[InputFile], count: int) -> list[InputFile]:
    """With fewer files than shards: the shards other formats leave are shared among the
    Parquet files, each split into up to that many ranges of whole row groups (as even in
    rows as the groups allow), so that every shard has work. Other formats, and files of
    one row group, stay whole. A range is an input of its own, named
    `<name>.rowgroups-<first>-<last>.<ext>` (0-based, inclusive), which names its output."""
    parquet = sum(item.format == "parquet" for item in listing)
    wanted = -(-(count - (len(listing) - parquet)) // max(parquet, 1))
    units: list[InputFile] = []
    for item in listing:
        if item.format != "parquet":
            units.append(item)
            continue
        sizes = ParquetReader.row_group_rows(item.path)
        ranges = _even_ranges(sizes, min(wanted, len(sizes)))
        if len(ranges) < 2:
            units.append(item)
            continue
        for first, last in ranges:
            part = RowGroups(first, last, sum(sizes[:first]))
            name = _range_name(item.relative_path, first, last)
            units.append(dataclasses.replace(item, relative_path=name, row_groups=part))
    return units


def _even_ranges(sizes: list[int], parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous, non-empty ranges of the groups `sizes`, cut where the running
    row count passes each k/parts of the total."""
    if parts < 2:
        return [(0, len(sizes) - 1)]
    total = max(sum(sizes), 1)
    ranges: list[tuple[int, int]] = []
    first, running = 0, 0
    for group, rows in enumerate(sizes):
        running += rows
        left_groups = len(sizes) - group - 1
        left_parts = parts - len(ranges) - 1
        cut = running * parts >= total * (len(ranges) + 1) or left_groups == left_parts
        if cut and left_parts > 0:
            ranges.append((first, group))
            first = group + 1
    ranges.append((first, len(sizes) - 1))
    return ranges


def _range_name(relative: str, first: int, last: int) -> str:
    folder, _, name = relative.rpartition("/")
    stem, dot, extension = name.rpartition(".")
    stem, extension = (stem, f".{extension}") if dot else (name, "")
    ranged = f"{stem}.rowgroups-{first}-{last}{extension}"
    return f"{folder}/{ranged}" if folder else ranged


def listing_digest(listing: Sequence[InputFile], shard: Shard) -> str:
    """A digest of the listing every shard must agree on, and of N: the inputs' paths
    as the shared command line names them (a local real path could differ between
    machines mounting the same share elsewhere)."""
    paths = [item.path for item in listing]
    text = json.dumps({"inputs": paths, "shard_count": shard.count})
    return hashlib.sha256(text.encode()).hexdigest()


def plan_digest(listing: str, settings_id: str) -> str:
    """The plan a manifest part belongs to: the listing, N and the settings id (model
    and prediction options). Parts of different plans never make `_SUCCESS` together."""
    return hashlib.sha256(f"{listing}\0{settings_id}".encode()).hexdigest()[:32]


def part_name(shard: Shard) -> str:
    return f"_manifest.{shard.name}.json"


def journal_name(shard: Shard) -> str:
    return f"_manifest.{shard.name}.journal"


# --------------------------------------------------------------------------- completion


def complete(output_dir: str, shard: Shard, plan: str, merged_name: str, marker: str) -> bool:
    """After this shard's part is written: when all N parts are there and agree on
    `plan`, write the merged manifest and create the marker if absent. Returns whether
    this shard created the marker."""
    parts = _read_parts(output_dir, shard)
    missing = [i for i in range(shard.count) if i not in parts]
    log = get_logger()
    if missing:
        log.info("shard finished, waiting for the others", shard=shard.name, missing=missing)
        return False
    other_plans = sorted({p.get("shard", {}).get("plan") for p in parts.values()} - {plan})
    if other_plans:
        log.warning(
            "shard parts of another plan (other inputs, shard count, model or options): "
            "folder not marked complete until every shard reruns with this one",
            shard=shard.name,
        )
        return False
    merged = merge_parts([parts[i] for i in range(shard.count)])
    write_whole(storage.join(output_dir, merged_name), json.dumps(merged, indent=2) + "\n")
    created = create_if_absent(storage.join(output_dir, marker))
    if created:
        log.info("all shards finished, folder marked complete", shard=shard.name)
    else:
        log.info("all shards finished, another shard marked the folder", shard=shard.name)
    return created


def _read_parts(output_dir: str, shard: Shard) -> dict[int, dict[str, Any]]:
    """The parts of this shard count that their shards finished, by index (a shard that
    failed, or is being rerun, leaves its part marked incomplete)."""
    found: dict[int, dict[str, Any]] = {}
    for index in range(shard.count):
        path = storage.join(output_dir, part_name(Shard(index, shard.count)))
        try:
            document = json.loads(storage.read_bytes(path))
        except (FileNotFoundError, InputMissingError):
            continue
        except (OSError, ReadWriteError, ValueError) as exc:
            get_logger().warning("manifest part unreadable", part=path, error=str(exc))
            continue
        finished = isinstance(document, dict) and document.get("shard", {}).get("complete")
        if finished and isinstance(document.get("outputs"), list):
            found[index] = document
    return found


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One `_manifest.json` from the parts in shard order: the first part's top level,
    every part's outputs and `made_with` entries. Deterministic, so that two shards
    merging at once write the same bytes."""
    merged = {key: value for key, value in parts[0].items() if key != "shard"}
    merged["written_at"] = max(part.get("written_at", 0) for part in parts)
    merged["made_with"] = {}
    merged["outputs"] = []
    for part in parts:
        merged["made_with"].update(part.get("made_with") or {})
        merged["outputs"].extend(part["outputs"])
    merged["shards"] = {"count": len(parts), "plan": parts[0]["shard"]["plan"]}
    return merged


def create_if_absent(path: str) -> bool:
    """Create the empty file `path` unless it exists; whether this call created it.
    Atomic locally (`O_EXCL`) and on S3 (a conditional put, with boto3 installed); on
    other stores, and on S3 without boto3, a check then a write (two shards finishing in
    the same instant may both write the same empty marker)."""
    if not storage.is_uri(path):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        except OSError as exc:
            raise ReadWriteError(f"{path}: cannot create: {exc.strerror}") from exc
        return True
    if path.lower().startswith("s3://"):
        created = _s3_put_if_absent(path)
        if created is not None:
            return created
    if storage.size(path) is not None:
        return False
    write_whole(path, "")
    return True


def _s3_put_if_absent(uri: str) -> bool | None:
    """An S3 `PutObject` with `If-None-Match: *`: True when created, False when the
    object exists (412, or 409 for a conditional put racing another); None without boto3."""
    try:
        import boto3  # type: ignore[import-untyped]
        import botocore.exceptions  # type: ignore[import-untyped]
    except ImportError:
        return None
    bucket, _, key = uri.partition("://")[2].partition("/")
    client = boto3.client("s3", endpoint_url=storage.current_s3_endpoint())
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"", IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412):
            return False
        raise ReadWriteError(f"{uri}: cannot create: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ReadWriteError(f"{uri}: cannot create: {exc}") from exc
    return True
