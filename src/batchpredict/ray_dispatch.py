"""The driver's side of `--engine ray`: blocks from the read tasks to the model actors, a
block whose actor was lost sent again to one alive, and Ray's failures as our exit codes.

Ray is never imported here: the engine passes its `ray` module in.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from batchpredict.errors import BatchPredictError, ConfigError, ReadWriteError, error_text
from batchpredict.observe import get_logger

#: Calls queued on each model actor: one scoring, the next one's block on its way.
CALLS_PER_ACTOR = 2
#: How long the model actors may take to be placed (their CPUs and GPUs held) before the
#: run gives up: room on the nodes, or an autoscaler adding some.
ACTORS_READY_SECONDS = 600.0
#: The terminal colours Ray puts into its errors' text.
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
#: How long a failed run waits for its actors and reads to end before removing its staging.
STOP_SECONDS = 30.0


class Scoring:
    """Read tasks stream each input's blocks, each block goes to the live model actor with
    the fewest calls queued, and each call returns its part.

    Blocks are taken from a read task only when an actor has room for a call, so that the
    reads pause instead of filling the object store. A call whose actor died (its node
    lost, its process killed) is sent again, same block, to an actor alive: the part is
    named after the block, so the second attempt replaces whatever the first wrote."""

    def __init__(
        self, ray: Any, actors: list[Any], reads: Sequence[Callable[[], Any]], read_slots: int
    ) -> None:
        self.ray = ray
        self.actors = dict(enumerate(actors))  # the live ones, by index
        self.started = len(actors)
        self.queued = dict.fromkeys(range(len(actors)), 0)
        self.calls: dict[Any, tuple[int, Any]] = {}  # a call -> its actor's index, its block
        self.waiting = list(reversed(reads))
        self.reading: list[Any] = []
        self.read_slots = read_slots
        self.everyone = list(actors)  # to kill at the end, dead or alive

    def run(self) -> list[dict[str, Any]]:
        """Every part written, once each, as the actors described them (in no order)."""
        # Reads start once every actor holds its CPUs (a read task paused on a full stream
        # must not keep an actor from being placed), while the actors load their models.
        self._wait_placed()
        loads = {index: actor.load.remote() for index, actor in self.actors.items()}
        parts: list[dict[str, Any]] = []
        while self.waiting or self.reading or self.calls:
            while self.waiting and len(self.reading) < self.read_slots:
                self.reading.append(self.waiting.pop()())
            has_room = min(self.queued[index] for index in self.actors) < CALLS_PER_ACTOR
            ready, _ = self.ray.wait([*self.calls, *(self.reading if has_room else ())])
            for done in ready:
                if any(done is stream for stream in self.reading):
                    self._send_next_block(done)
                else:
                    parts.extend(self._returned(done))
        self._check_loads(loads)  # a model that failed to load fails the run, blocks or none
        return one_record_per_block(parts)

    def _wait_placed(self) -> None:
        """Wait until every actor is placed (or lost), at most `ACTORS_READY_SECONDS`."""
        placed = {actor.placed.remote(): index for index, actor in self.actors.items()}
        _, pending = self.ray.wait(
            list(placed), num_returns=len(placed), timeout=ACTORS_READY_SECONDS
        )
        if pending:
            raise ConfigError(
                f"the cluster did not start {self.started} model actors within "
                f"{ACTORS_READY_SECONDS:g} s: not enough CPUs or GPUs for them; lower "
                "--ray_concurrency or --ray_cpus_per_worker / --ray_gpus_per_worker"
            )
        for call, index in placed.items():
            try:
                self.ray.get(call)
            except self.ray.exceptions.RayActorError as exc:
                self._lose(index, exc)

    def _returned(self, call: Any) -> list[dict[str, Any]]:
        """The part a call described, or none when its actor died: its block goes again."""
        index, block = self.calls.pop(call)
        self.queued[index] -= 1
        try:
            described: list[dict[str, Any]] = self.ray.get(call).to_pylist()
        except self.ray.exceptions.RayActorError as exc:
            self._lose(index, exc)
            self._send(block)
            return []
        return described

    def _lose(self, index: int, exc: BaseException) -> None:
        """Stop sending blocks to a dead actor (not restarted: `max_restarts=0`); with none
        left the run fails as work lost (exit 74)."""
        if self.actors.pop(index, None) is None:
            return  # already known dead
        get_logger().warning(
            "ray model actor lost", actors_left=len(self.actors), error=ray_error_text(exc)
        )
        if not self.actors:
            raise ReadWriteError(
                f"every model actor of the Ray cluster was lost: {ray_error_text(exc)}; "
                "nothing was committed"
            ) from exc

    def _send_next_block(self, stream: Any) -> None:
        """The next block of a read task to the least busy actor, or the task ended."""
        try:
            block = next(stream)
        except StopIteration:
            self.reading = [other for other in self.reading if other is not stream]
            return
        self._send(block)

    def _send(self, block: Any) -> None:
        index = min(self.actors, key=self.queued.__getitem__)
        self.queued[index] += 1
        self.calls[self.actors[index].__call__.remote(block)] = (index, block)

    def _check_loads(self, loads: dict[int, Any]) -> None:
        """Raise the error of a model that failed to load on an actor still alive."""
        for index, load in loads.items():
            try:
                self.ray.get(load)
            except self.ray.exceptions.RayActorError as exc:
                self._lose(index, exc)  # its blocks, if any, went to the others

    def stop(self) -> None:
        """End the actors (each holds TensorFlow and a model) and any read still going,
        and wait (at most `STOP_SECONDS`) until they have: `ray.kill` and `ray.cancel`
        return at once, and an actor still scoring would write its part into a staging
        folder the failed run has just removed."""
        ending = []
        for stream in self.reading:
            with contextlib.suppress(Exception):  # a read that has just ended
                self.ray.cancel(stream)
                ending.append(stream.completed())
        for actor in self.everyone:
            with contextlib.suppress(Exception):  # an actor already gone
                self.ray.kill(actor)
        ending.extend(self.calls)
        if ending:
            self.ray.wait(ending, num_returns=len(ending), timeout=STOP_SECONDS)


def one_record_per_block(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each part once: two attempts at one block (its actor lost after writing it, the
    block sent again) wrote the same staging file (named after the block) and must be
    published once. Two attempts that scored the block differently are not guessed
    between."""
    unique: dict[str, dict[str, Any]] = {}
    for part in parts:
        seen = unique.setdefault(part["path"], part)
        if (seen["rows"], seen["sha256"]) != (part["rows"], part["sha256"]):
            raise BatchPredictError(
                f"{part['path']}: a block Ray scored twice was scored differently; "
                "nothing was committed"
            )
    return list(unique.values())


def cluster_failure(ray: Any, exc: BaseException) -> BaseException:
    """Work Ray lost for good (a node, an actor, a worker or a block gone past Ray's
    retries, or a read that yielded other blocks when run again) as exit 74, else `exc`."""
    lost = (
        ray.exceptions.RayActorError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.ObjectLostError,
        ray.exceptions.WorkerCrashedError,
        # A read run again that did not yield the blocks it had yielded the first time.
        ray.exceptions.StreamingGeneratorReplayInconsistentError,
    )
    found = None  # the innermost: Ray wraps a call's lost argument in the call's error
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BatchPredictError):
            return exc
        if isinstance(seen, lost):
            found = seen
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__ or seen.__context__
    if found is None:
        return exc
    return ReadWriteError(
        f"the Ray cluster lost work it could not run again: {ray_error_text(found)}; "
        "nothing was committed"
    )


def ray_error_text(exc: BaseException) -> str:
    """A Ray error as one short line, its type first, without terminal colours."""
    return f"{type(exc).__name__}: {error_text(RuntimeError(_COLOURS.sub('', str(exc))))}"
