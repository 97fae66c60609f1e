"""The driver's side of `--engine ray`: the run planned by the first model actor loaded,
inputs dealt to the model actors, the inputs of an actor that was lost dealt again to one
alive, and Ray's failures as our exit codes.

Ray is never imported here: the engine passes its `ray` module in.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

from batchpredict.columns import RunMapping
from batchpredict.errors import BatchPredictError, ConfigError, ReadWriteError, error_text
from batchpredict.manifest import ModelIdentity
from batchpredict.observe import get_logger
from batchpredict.ray_actor import InputDone
from batchpredict.sources import InputFile

#: Calls queued on each model actor: one scoring, the next one waiting in the actor (no
#: round trip to the driver between inputs, which many small files would feel).
CALLS_PER_ACTOR = 2
#: How long the model actors may take to be placed (their CPUs and GPUs held) before the
#: run gives up: room on the nodes, or an autoscaler adding some.
ACTORS_READY_SECONDS = 600.0
#: The terminal colours Ray puts into its errors' text.
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
#: How long a failed run waits for its actors to end before removing its staging.
STOP_SECONDS = 30.0


class Scoring:
    """Each input goes to the live model actor with the fewest calls queued, which reads,
    scores and writes it; each call returns what it wrote (`InputDone`).

    A call whose actor died (its node lost, its process killed) is sent again, same input,
    to an actor alive: its files are named after the input, so the second attempt replaces
    whatever the first wrote."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self.ray = ray
        self.actors = dict(enumerate(actors))  # the live ones, by index
        self.started = len(actors)
        self.queued = dict.fromkeys(range(len(actors)), 0)
        self.calls: dict[Any, tuple[int, int]] = {}  # a call -> its actor, its input
        self.loads: dict[int, Any] = {}  # each actor's `load` call
        self.inputs: list[InputFile] = []
        self.waiting: deque[int] = deque()  # positions of inputs not sent yet
        self.mapping: Any = None  # the run's column mapping, in the object store
        self.everyone = list(actors)  # to kill at the end, dead or alive

    def plan(self, inputs: list[InputFile]) -> tuple[RunMapping, ModelIdentity]:
        """Wait until the actors are placed, have them load the model, and plan the run
        (`ModelActor.plan`) on the first one loaded."""
        self._wait_placed()
        self.loads = {index: actor.load.remote() for index, actor in self.actors.items()}
        loading = {load: index for index, load in self.loads.items()}
        while True:
            [load], _ = self.ray.wait(list(loading))
            index = loading.pop(load)
            try:
                self.ray.get(load)  # a model that failed to load fails the run here
            except self.ray.exceptions.RayActorError as exc:
                self._lose(index, exc)  # another actor plans
                continue
            planned: tuple[RunMapping, ModelIdentity]
            planned = self.ray.get(self.actors[index].plan.remote(inputs))
            return planned

    def run(self, inputs: Sequence[InputFile], mapping: RunMapping) -> list[InputDone]:
        """What every input's call returned, once each (in no order), after `plan`."""
        self.inputs = list(inputs)
        self.waiting = deque(range(len(inputs)))
        self.mapping = self.ray.put(mapping)  # sent with every call, stored once
        done: list[InputDone] = []
        while self.waiting or self.calls:
            while self.waiting and min(self.queued.values()) < CALLS_PER_ACTOR:
                self._send(self.waiting.popleft())
            ready, _ = self.ray.wait(list(self.calls))
            for call in ready:
                done.extend(self._returned(call))
        self._check_loads(self.loads)  # a model that failed to load fails the run
        return done

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

    def _returned(self, call: Any) -> list[InputDone]:
        """What a call returned, or nothing when its actor died: its input goes again."""
        index, position = self.calls.pop(call)
        if index in self.queued:  # not lost since
            self.queued[index] -= 1
        try:
            return [self.ray.get(call)]
        except self.ray.exceptions.RayActorError as exc:
            self._lose(index, exc)
            self.waiting.appendleft(position)
            return []

    def _lose(self, index: int, exc: BaseException) -> None:
        """Stop sending inputs to a dead actor (not restarted: `max_restarts=0`); with none
        left the run fails as work lost (exit 74)."""
        if self.actors.pop(index, None) is None:
            return  # already known dead
        self.queued.pop(index, None)
        get_logger().warning(
            "ray model actor lost", actors_left=len(self.actors), error=ray_error_text(exc)
        )
        if not self.actors:
            raise ReadWriteError(
                f"every model actor of the Ray cluster was lost: {ray_error_text(exc)}; "
                "nothing was committed"
            ) from exc

    def _send(self, position: int) -> None:
        index = min(self.actors, key=self.queued.__getitem__)
        self.queued[index] += 1
        call = self.actors[index].score.remote(position, self.inputs[position], self.mapping)
        self.calls[call] = (index, position)

    def _check_loads(self, loads: dict[int, Any]) -> None:
        """Raise the error of a model that failed to load on an actor still alive."""
        for index, load in loads.items():
            try:
                self.ray.get(load)
            except self.ray.exceptions.RayActorError as exc:
                self._lose(index, exc)  # its inputs, if any, went to the others

    def stop(self) -> None:
        """End the actors (each holds TensorFlow and a model) and wait (at most
        `STOP_SECONDS`) until they have: `ray.kill` returns at once, and an actor still
        scoring would write its part into a staging folder the failed run has just
        removed. Once stopped, stopping again does nothing."""
        everyone, self.everyone = self.everyone, []
        for actor in everyone:
            with contextlib.suppress(Exception):  # an actor already gone
                self.ray.kill(actor)
        ending, self.calls = list(self.calls), {}
        if ending:
            self.ray.wait(ending, num_returns=len(ending), timeout=STOP_SECONDS)


def cluster_failure(ray: Any, exc: BaseException) -> BaseException:
    """Work Ray lost for good (a node, an actor, a worker or a call's result gone) as
    exit 74, else `exc`."""
    lost = (
        ray.exceptions.RayActorError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.ObjectLostError,
        ray.exceptions.WorkerCrashedError,
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
