"""`_manifest.json` of an `--output_dir`, and what `--skip_existing` compares.

An output is skipped only when its record says it was made by the same model (a SHA-256
of its files, its version and signature), with the same prediction options, from the same
inputs (canonical path, size, modification time; ETag on object stores), and the output
is still the file that was recorded. Anything else is redone, and the log says why.

The manifest is written once, when the run ends, fails or is interrupted; while the run
goes, each committed output is appended to its journal (`journal.py`), which the next
run folds in if this one was killed outright. Rewriting the manifest after every output
cost O(n²) bytes (and on object stores an upload, a copy and a delete each time).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchpredict import shards, storage
from batchpredict.atomic import write_whole
from batchpredict.config import RunConfig
from batchpredict.errors import InputMissingError, ReadWriteError
from batchpredict.journal import JOURNAL, Journal
from batchpredict.model import LoadedModel
from batchpredict.observe import get_logger
from batchpredict.outputs import MANIFEST, SUCCESS_MARKER, OutputTarget
from batchpredict.sources import InputFile
from batchpredict.storage import Content, is_uri

#: Version 1 (no such key) had no model or options: its records are always redone.
#: Version 3 adds the software versions, the engine, and each output's SHA-256 and bytes.
MANIFEST_VERSION = 3
#: Bytes read at a time while hashing a model (models can be gigabytes).
_HASH_BLOCK = 1 << 20
#: Hex digits of the id under which a manifest lists one set of (model, options).
_SETTINGS_ID_DIGITS = 16

#: RunConfig fields that change what an output holds; see `prediction_options`.
PREDICTION_OPTIONS = (
    "input_format",
    "null_values",
    "delimiter",
    "features",
    "keep_columns",
    "fill_value",
    "prediction_column",
    "class_names",
    "threshold",
    "label_output",
    "label_column",
    "score_column",
    "output_format",
    "on_error",
    "max_error_rate",
    "max_record_bytes",
)

REASON_NO_MANIFEST = "no manifest"
REASON_NOT_RECORDED = "not in the manifest"
REASON_OLD_RECORD = "recorded without the model's identity (by an older batchpredict)"
REASON_MODEL = "model changed"
REASON_OUTPUT_MISSING = "output missing"
REASON_OUTPUT_CHANGED = "output changed since it was recorded"


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelIdentity:
    """What made an output: the model's content hash, version and signature, and where
    it was loaded from (recorded, not compared: a model moved elsewhere is the same)."""

    path: str
    loaded_from: str
    kind: str
    sha256: str
    version: int | None
    signature: str | None
    files: int
    bytes: int
    seconds: float

    def compared(self) -> dict[str, Any]:
        """The part `--skip_existing` compares."""
        return {"sha256": self.sha256, "version": self.version, "signature": self.signature}

    def record(self) -> dict[str, Any]:
        """The manifest's top-level `model`."""
        where = {"path": self.path}
        if self.loaded_from != self.path:
            where["loaded_from"] = self.loaded_from  # a store's model: its cached copy
        return {
            **where,
            "kind": self.kind,
            **self.compared(),
            "files": self.files,
            "bytes": self.bytes,
        }


def identify_model(given: str, model: LoadedModel) -> ModelIdentity:
    """Hash the files `model` was loaded from (see `content_sha256`), timing it.

    A model from a store is hashed in its local cache, the copy that was loaded: the
    same bytes get the same identity wherever they are kept, whereas ETags are not
    content hashes on every store (S3 multipart uploads, none on HDFS) and would change
    with a mere re-upload.
    """
    started = time.monotonic()
    digest, files, size = content_sha256(model.source.path)
    return ModelIdentity(
        path=given,
        loaded_from=model.source.path,
        kind=model.source.kind,
        sha256=digest,
        version=model.source.version,
        signature=model.signature,
        files=files,
        bytes=size,
        seconds=round(time.monotonic() - started, 3),
    )


def content_sha256(path: str) -> tuple[str, int, int]:
    """(SHA-256, files, bytes) of a model file or folder, read in blocks.

    A file: the SHA-256 of its bytes (what `sha256sum` prints). A folder: the SHA-256 of
    one line `<relative/path>\\0<SHA-256 of the file>\\n` per file below it, in sorted
    relative-path order, so a changed, added, removed or renamed file changes it.
    """
    if not os.path.isdir(path):
        digest, size = _file_sha256(path)
        return digest, 1, size
    outer = hashlib.sha256()
    total = 0
    files = _files_below(path)
    for relative, full in files:
        digest, size = _file_sha256(full)
        outer.update(f"{relative}\0{digest}\n".encode())
        total += size
    return outer.hexdigest(), len(files), total


def _file_sha256(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise ReadWriteError(f"{path}: cannot read the model to identify it: {exc}") from exc
    return digest.hexdigest(), size


def _files_below(root: str) -> list[tuple[str, str]]:
    """(relative path with `/`, full path) of every file below `root`, sorted; linked
    folders are followed, as TensorFlow follows them, each real folder once."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for folder, folders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        for name in names:
            full = os.path.join(folder, name)
            found.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    return sorted(found)


# --------------------------------------------------------------------------- the software

#: Distributions whose versions the manifest records, by the name it records them under;
#: the first of the names given that is installed (TensorFlow ships under several).
_DISTRIBUTIONS = {
    "batchpredict": ("batchpredict",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
    "keras": ("keras",),
    "pyarrow": ("pyarrow",),
    "numpy": ("numpy",),
}


@functools.cache
def software_versions() -> dict[str, str | None]:
    """The versions of what makes the predictions: batchpredict, TensorFlow, Keras,
    pyarrow, numpy and Python (None for one not installed). Read from the installed
    packages' metadata, so that recording them imports none of them."""
    found: dict[str, str | None] = {}
    for name, distributions in _DISTRIBUTIONS.items():
        found[name] = None
        for distribution in distributions:
            try:
                found[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    found["python"] = platform.python_version()
    return found


# --------------------------------------------------------------------------- the options


def prediction_options(
    config: RunConfig, mapping: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The options that change what an output holds, JSON-ready: the rule for which
    options make `--skip_existing` redo an output.

    An option belongs here when changing it can change a prediction, a value or name of
    an output column, or which rows an output holds: how inputs are read
    (`input_format`, `input_version`, `null_values`, `delimiter`), which columns feed
    the model and which are kept (`features`, `keep_columns`, and `mapping`, the run's
    column mapping, recorded as given), how missing values are filled (`fill_value`),
    the prediction and label columns (`prediction_column`, `class_names`, `threshold`,
    `label_output`, `label_column`, `score_column`), the output format, and bad-row
    handling (`on_error`; `max_error_rate` and `max_record_bytes` only with `on_error`
    skip, where they decide which rows an output holds: without, a bad row fails the run).
    `--signature` and `--model_version` are compared as resolved, with the model's
    identity (`ModelIdentity.compared`): `--model_version 7` and "the highest, 7" are
    the same model. Not here, since they change no output: batch and chunk size,
    device, progress, logging, lock, metrics, summary, engine.

    Fields are read by name with None for one this RunConfig does not have, so an
    option added later is recorded as soon as RunConfig has it.
    """
    options = {name: getattr(config, name, None) for name in PREDICTION_OPTIONS}
    if options["on_error"] != "skip":
        options["max_error_rate"] = options["max_record_bytes"] = None
    options["mapping"] = dict(mapping) if mapping is not None else None
    # Tuples become lists, as they come back from the JSON file they are compared with.
    ready: dict[str, Any] = json.loads(json.dumps(options, default=str))
    return ready


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _changed_keys(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ, or that only one side has."""
    return sorted(
        key
        for key in {*recorded, *current}
        if key not in recorded
        or key not in current
        or _canonical(recorded[key]) != _canonical(current[key])
    )


# --------------------------------------------------------------------------- inputs and outputs


def input_identity(item: InputFile) -> dict[str, Any]:
    """What identifies an input's content: its canonical name (a local file's real path,
    so `data/a.csv` and `/abs/data/a.csv` match; a URI as given), size and modification
    time, and on object stores the ETag."""
    return {"path": storage.identity(item.path), **storage.fingerprint(item.path)}


def _output_identity(path: str) -> dict[str, Any]:
    """An output file's size and modification time (and ETag on stores); all None when
    it is not there. A rewrite changes the modification time even at the same size."""
    return {f"output_{key}": value for key, value in storage.fingerprint(path).items()}


def _input_changes(recorded: Any, current: list[dict[str, Any]]) -> list[str]:
    """Which fields of the inputs differ (`path`, `size`, `mtime`, `etag`)."""
    if not isinstance(recorded, list) or len(recorded) != len(current):
        return ["inputs"]
    changed: set[str] = set()
    for old, new in zip(recorded, current, strict=True):
        changed.update(_changed_keys(old, new) if isinstance(old, dict) else ["inputs"])
    return sorted(changed)


# --------------------------------------------------------------------------- the manifest


class Manifest:
    """`_manifest.json` of an `--output_dir`: what this run made, and with what.

    The previous manifest's records stay in it until this run replaces them, so the
    manifest of a run that failed or was interrupted describes the folder as it is: this
    run's finished outputs and the earlier run's untouched ones, each with the model and
    options that made it. `finish` writes this run's records alone, then `_SUCCESS`.
    Until then each output committed is appended to the journal, which a run killed
    outright leaves for the next one to fold in.

    A shard (`shards.py`) keeps its own part, `_manifest.shard-I-of-N.json`, and journal;
    `--skip_existing` looks an output up in its part, then in the merged `_manifest.json`.
    """

    def __init__(
        self,
        output_dir: str,
        *,
        model: ModelIdentity,
        options: dict[str, Any],
        resume: bool,
        engine: str = "local",
        shard: shards.Shard | None = None,
        listing: str = "",
    ) -> None:
        self.output_dir = output_dir
        #: A shard writes its own part; `_manifest.json` is the parts merged (shards.py).
        self.shard = shard
        self.path = storage.join(output_dir, shards.part_name(shard) if shard else MANIFEST)
        self.model = model
        self.options = options
        self.engine = engine
        self.versions = software_versions()
        # The versions are recorded with each output (one kept from an earlier run keeps
        # the earlier run's), not compared: `--skip_existing` compares model and options.
        self.made_with = {"model": model.compared(), "options": options, "versions": self.versions}
        self._settings_id = _settings_id(self.made_with)
        self.plan = shards.plan_digest(listing, self._settings_id)
        self._journal = Journal(output_dir, shards.journal_name(shard) if shard else JOURNAL)
        self._journaled_settings: set[str] = set()
        self._done: dict[str, dict[str, Any]] = {}
        #: Outputs in the order they were considered: the order of the manifest's records.
        self._order: dict[str, None] = {}
        self._previous = self._load(self.path, strict=resume)
        #: A shard's view of the other shards' outputs: the merged manifest, looked up by
        #: `--skip_existing` after the shard's own part, never written into the part.
        self._merged = (
            self._load(storage.join(output_dir, MANIFEST), strict=resume) if shard else None
        )
        self._fold_journal(strict=resume)
        if shard is not None and self._previous is not None:
            self._write(final=False)  # running again: its part is not complete until it ends

    def _load(self, path: str, *, strict: bool) -> dict[str, dict[str, Any]] | None:
        """The previous manifest's records by output, None when there is none. An
        unreadable one fails a `--skip_existing` run (74) and is replaced otherwise."""
        try:
            data = json.loads(storage.read_bytes(path))
            return _records_of(data)
        except (FileNotFoundError, InputMissingError):
            return None
        except (OSError, ReadWriteError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if strict:
                raise ReadWriteError(f"{path}: cannot read the manifest: {exc}") from exc
            get_logger().warning("previous manifest unreadable, replaced", manifest=path)
            return None

    def _fold_journal(self, *, strict: bool) -> None:
        """Take in the journal a killed run left: its records replace the previous ones,
        and the manifest is rewritten with them before this run's journal starts."""
        if not self._journal.files():
            return
        try:
            lines = self._journal.read()
        except (OSError, ReadWriteError) as exc:
            if strict:
                raise ReadWriteError(f"{self._journal.path}: cannot read: {exc}") from exc
            get_logger().warning("manifest journal unreadable, ignored", journal=self._journal.path)
            lines = []
        table: dict[str, Any] = {}
        records = dict(self._previous or {})
        for line in lines:
            if isinstance(line.get("output"), str):
                settings_id = line.get("made_with")
                made_with = table.get(settings_id) if isinstance(settings_id, str) else None
                records[line["output"]] = {**line, "made_with": made_with}
            elif isinstance(line.get("made_with"), dict):
                table.update(line["made_with"])
        self._previous = records
        self._write(final=False)
        self._journal.remove()

    def _key(self, target: OutputTarget) -> str:
        if is_uri(target.path):
            return target.path[len(self.output_dir) :].lstrip("/")
        return os.path.relpath(target.path, self.output_dir)

    def why_redo(self, target: OutputTarget, inputs: list[dict[str, Any]]) -> str | None:
        """Why `target` must be made again; None when a previous run's record shows it
        made by the same model, with the same options, from the same inputs, and the
        output is still the file recorded: the record is then carried into this run's."""
        self._order.setdefault(self._key(target), None)
        if self._previous is None and self._merged is None:
            return REASON_NO_MANIFEST
        key = self._key(target)
        record = (self._previous or {}).get(key) or (self._merged or {}).get(key)
        if record is None:
            return REASON_NOT_RECORDED
        made_with = record.get("made_with")
        if not isinstance(made_with, dict) or "model" not in made_with:
            return REASON_OLD_RECORD
        reasons = []
        if made_with["model"] != self.made_with["model"]:
            reasons.append(REASON_MODEL)
        options = _changed_keys(made_with.get("options") or {}, self.options)
        if options:
            reasons.append(f"options changed: {', '.join(options)}")
        changed_inputs = _input_changes(record.get("inputs"), inputs)
        if changed_inputs:
            reasons.append(f"input changed: {', '.join(changed_inputs)}")
        if reasons:
            return "; ".join(reasons)
        output = _output_identity(target.path)
        if output["output_size"] is None:
            return REASON_OUTPUT_MISSING
        if any(record.get(key) != value for key, value in output.items()):
            return REASON_OUTPUT_CHANGED
        self._add(record)
        return None

    def record(
        self,
        target: OutputTarget,
        inputs: list[dict[str, Any]],
        rows: int,
        rejected: int | None,
        content: Content | None = None,
    ) -> None:
        """Add an output this run committed, and append it to the journal. `content` is
        the SHA-256 and size of the bytes the writer committed; without it the committed
        file is read back to hash it."""
        if content is None:
            content = storage.content(target.path)
        record = {
            "output": self._key(target),
            "format": target.format,
            "rows": rows,
            "rejected_rows": rejected,
            "inputs": inputs,
            "sha256": content.sha256,
            "bytes": content.bytes,
            **_output_identity(target.path),
        }
        if self._settings_id not in self._journaled_settings:
            self._journal.append({"made_with": {self._settings_id: self.made_with}})
            self._journaled_settings.add(self._settings_id)
        self._journal.append({**record, "made_with": self._settings_id})
        self._add({**record, "made_with": self.made_with})

    def _add(self, record: dict[str, Any]) -> None:
        self._order.setdefault(record["output"], None)
        self._done[record["output"]] = record

    def flush(self) -> None:
        """When a run fails or is interrupted: write the manifest with the records of this
        run and the previous run's others, and remove the journal."""
        if self._done:
            self._write(final=False)
        self._journal.remove()

    def finish(self) -> None:
        """Write this run's records, then mark the folder complete: `_SUCCESS`, last. A
        shard writes its part, and marks the folder only once every part is there."""
        self._write(final=True)
        self._journal.remove()
        if self.shard is None:
            write_whole(storage.join(self.output_dir, SUCCESS_MARKER), "")
            return
        shards.complete(self.output_dir, self.shard, self.plan, MANIFEST, SUCCESS_MARKER)

    def _write(self, *, final: bool) -> None:
        records = [self._done[key] for key in self._order if key in self._done]
        if not final and self._previous:
            records += [r for key, r in self._previous.items() if key not in self._done]
        document = self._document(records, final=final)
        write_whole(self.path, json.dumps(document, indent=2) + "\n")

    def _document(self, records: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        """The manifest: this run's model and options at the top; each output names the
        (model, options) it was made with by an id into `made_with`."""
        table: dict[str, Any] = {}
        outputs = []
        for record in records:
            made_with = record.get("made_with")
            written = {key: value for key, value in record.items() if key != "made_with"}
            if isinstance(made_with, dict):
                settings_id = _settings_id(made_with)
                table[settings_id] = made_with
                written["made_with"] = settings_id
            outputs.append(written)
        return {
            "manifest_version": MANIFEST_VERSION,
            "written_at": time.time(),
            "engine": self.engine,
            "versions": self.versions,
            "model": self.model.record(),
            "options": self.options,
            "made_with": table,
            "outputs": outputs,
            **({"shard": self._shard_record(final)} if self.shard else {}),
        }

    def _shard_record(self, final: bool) -> dict[str, Any]:
        """A part's `shard`: `complete` only when the shard finished; a part written by a
        shard that failed or is being rerun (`flush`, a journal folded in) must not let
        another shard mark the folder complete."""
        assert self.shard is not None
        return {
            "index": self.shard.index,
            "count": self.shard.count,
            "plan": self.plan,
            "complete": final,
        }


def _settings_id(made_with: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(made_with).encode()).hexdigest()[:_SETTINGS_ID_DIGITS]


def _records_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A manifest's records by output, each with its `made_with` looked up (None in a
    version 1 manifest, which had none)."""
    table = data.get("made_with") or {}
    records = {}
    for written in data["outputs"]:
        record = dict(written)
        settings_id = record.get("made_with")
        record["made_with"] = table.get(settings_id) if isinstance(settings_id, str) else None
        records[record["output"]] = record
    return records
