"""The model actor of `--engine ray`: loads the model once (the first actor loaded also
plans the run: the column mapping and the model's identity), then reads each input dealt
to it with the local engine's reader (`reading.Reading`), scores every chunk and writes it
as a part file of its own into the run's staging folder. As in the local engine, reading
(chunks ahead, on a thread), scoring and writing (on another) overlap.

Inputs are read where they are scored: no read task process, and no rows through Ray's
object store. Each call returns a small `InputDone` (the parts written, the rows read and
rejected, the statistics) for the driver to commit.

Every file a call writes is named after its input (and the chunk's place in it): an input
whose actor was lost is scored again by another actor, whose files then replace the first
attempt's instead of adding rows.

Ray is imported only when a method runs in an actor, never by importing this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import pickle
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from batchpredict import storage
from batchpredict.batching import Prefetch
from batchpredict.columns import RunMapping
from batchpredict.config import RunConfig
from batchpredict.formats.registry import default_extension, writer_for
from batchpredict.manifest import ModelIdentity, identify_model
from batchpredict.outputs import RejectsWriter
from batchpredict.predictor import chunk_rows_for
from batchpredict.reading import Reading
from batchpredict.run_stats import RunStats
from batchpredict.scoring import Ready, RunColumns, Scorer, plan_run_mapping, scorer_for
from batchpredict.sources import InputFile
from batchpredict.summary import Counts

#: Chunks an actor reads ahead of the one it scores, and scored chunks waiting for its
#: writer thread: as many as the local engine holds (`local_engine.PREFETCH_EVENTS`,
#: `WRITE_QUEUE_CHUNKS`).
READ_AHEAD_CHUNKS = 2
WRITES_PENDING = 2


@dataclass(frozen=True)
class Part:
    """A part file an actor wrote into the staging folder: chunk `chunk` of input `input`
    (its place in the run's plan), as written."""

    path: str
    rows: int
    sha256: str
    bytes: int
    input: int
    chunk: int


@dataclass(frozen=True)
class InputDone:
    """What an actor returns for one input: its parts, its rows read and rejected, the
    statistics of its rows (pickled `RunStats`, when the run keeps them), and where and
    when it was scored."""

    input: int
    parts: tuple[Part, ...]
    read: int
    rejected: int
    #: The staging file of its rejected rows (None: none, or `--on_error fail`).
    rejects: str | None
    stats: bytes | None
    node: str
    #: Wall-clock times (`time.time()`) of the actor's model being ready and of this
    #: input's scoring starting and ending: the run's scoring time, start-up excluded.
    ready: float
    started: float
    ended: float


class ModelActor:
    """Loads the model once (`load`); scores each input dealt to it (`score`) into part
    files in the staging folder, so that predictions never go through Ray's object store."""

    def __init__(self, config: RunConfig, staging: str, output_format: str) -> None:
        self.config = config
        self.staging = staging
        self.output_format = output_format
        self.node = ray_runtime_node()
        self.scorer: Scorer | None = None
        self.failed: BaseException | None = None
        self.ready_at = 0.0

    def placed(self) -> str:
        """The node this actor was placed on: it holds its CPUs and GPUs from now on."""
        return self.node

    def load(self) -> float:
        """Import TensorFlow and load the model; returns when it was done (`time.time()`),
        the end of this actor's start-up."""
        from batchpredict.observe import quiet_tensorflow

        try:
            # An actor is a process of its own, which the command line did not set up.
            quiet_tensorflow(self.config.log_level)
            with _store_settings(self.config):  # the model may be in a store
                self.scorer = scorer_for(self.config)
        except BaseException as exc:
            self.failed = exc
            raise
        self.ready_at = time.time()
        return self.ready_at

    def plan(self, inputs: list[InputFile]) -> tuple[RunMapping, ModelIdentity]:
        """The run's column mapping, from the model's inputs and the first input's columns,
        and the model's identity: planned by the first actor loaded, so that no process
        loads the model for this alone."""
        loaded = self._loaded()
        with _store_settings(self.config):
            mapping = plan_run_mapping(inputs, loaded.model, self.config)
            assert mapping is not None  # the Ray engine does not read stdin
            return mapping, identify_model(self.config.model, loaded.model)

    def score(self, position: int, item: InputFile, mapping: RunMapping) -> InputDone:
        """Read, score and write input `item`, the run's input `position`, by the run's
        column `mapping`."""
        started = time.time()
        loaded = self._loaded()
        with _store_settings(self.config):
            return self._score(position, item, (loaded, mapping), started)

    def _loaded(self) -> Scorer:
        """The scorer `load` made; when it failed, every call fails as it did."""
        if self.scorer is None:
            raise self.failed or RuntimeError("the model actor was not loaded")
        return self.scorer

    def _score(
        self, position: int, item: InputFile, run: tuple[Scorer, RunMapping], started: float
    ) -> InputDone:
        loaded = run[0]
        name = input_name(item)
        rejects = RejectsWriter(storage.join(self.staging, f"rejects-{name}.jsonl"))
        counts = Counts()
        # Each input's statistics go back with its parts; the driver merges them.
        collector = RunStats() if self.config.collects_stats else None
        scorer = dataclasses.replace(loaded, stats=collector)
        chunks = self._chunks(item, run, counts, rejects)
        writing = ThreadPoolExecutor(1, "batchpredict-ray-writer")
        parts: list[Future[Part]] = []
        try:
            for ready in chunks:
                if ready.rows:  # a chunk of rejected rows only has no part
                    batch = scorer.score(ready, True)
                    if len(parts) >= WRITES_PENDING:
                        parts[-WRITES_PENDING].result()  # bounds the batches held
                    chunk = len(parts)
                    parts.append(writing.submit(self._write, batch, name, position, chunk))
            written = tuple(part.result() for part in parts)
        except BaseException:
            chunks.close()
            rejects.abort()
            raise
        finally:
            writing.shutdown(wait=True)  # nothing writes into staging after the call
        kept = rejects.count > 0
        if kept:
            rejects.commit()
        else:
            rejects.abort()
        # The actor stays for the next input: give back what Arrow's allocator kept.
        pa.default_memory_pool().release_unused()
        return InputDone(
            input=position,
            parts=written,
            read=counts.read,
            rejected=counts.rejected,
            rejects=rejects.path if kept else None,
            stats=None if collector is None else pickle.dumps(collector),
            node=self.node,
            ready=self.ready_at,
            started=started,
            ended=time.time(),
        )

    def _chunks(
        self,
        item: InputFile,
        run: tuple[Scorer, RunMapping],
        counts: Counts,
        rejects: RejectsWriter,
    ) -> Prefetch[Ready]:
        """The chunks of `item`, mapped and converted for the model, read ahead on a
        thread (bad rows into `rejects` with `--on_error skip`, else the first stops the
        call)."""
        loaded, mapping = run
        chunk_rows = chunk_rows_for(
            self.config.chunk_size, loaded.predictor.batch_size, loaded.model
        )
        columns = RunColumns(loaded.model, self.config, mapping)
        reading = Reading(columns, chunk_rows, self.config, {})
        sink = rejects if self.config.on_error == "skip" else None
        return Prefetch(
            lambda: reading.chunks((item,), counts, sink),
            depth=READ_AHEAD_CHUNKS,
            name="batchpredict-ray-reader",
        )

    def _write(self, batch: pa.RecordBatch, name: str, position: int, chunk: int) -> Part:
        """`batch`, chunk `chunk` of input `position`, as a part file of its own in the
        staging folder (written to a temporary file and renamed, so a part there is whole)."""
        extension = default_extension(self.output_format)
        path = storage.join(self.staging, f"part-{name}-{chunk:05d}{extension}")
        writer = writer_for(path, self.output_format)
        try:
            writer.open(batch.schema)
            writer.write(batch)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        assert writer.content is not None  # committed
        content = writer.content
        return Part(path, writer.rows_written, content.sha256, content.bytes, position, chunk)


def input_name(item: InputFile) -> str:
    """The staging name of an input's files: its path and, for a range of a Parquet file's
    row groups, the range's first row."""
    first = item.row_groups.rows_before if item.row_groups is not None else 0
    return hashlib.sha256(f"{item.path}\0{first}".encode()).hexdigest()[:32]


def _store_settings(config: RunConfig) -> contextlib.AbstractContextManager[None]:
    """The run's store settings in a worker (an actor's process of its own, where the
    driver's `store_settings` is not in force)."""
    return storage.store_settings(config.s3_endpoint_url, config.storage_timeout)


def ray_runtime_node() -> str:
    """The id of the Ray node this process runs on."""
    import ray

    return str(ray.get_runtime_context().get_node_id())
