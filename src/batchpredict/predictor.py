"""Run a loaded model over fixed-size batches: one traced function, batches prefetched.

The step function is traced once with a fully fixed batch dimension, so there is no
retracing however many files or chunks a run has. Batches come from a Python generator
run on a prefetch thread (`batching.Prefetch`), so the next chunk is read and converted
while the current batch is computed. A plain queue rather than
`tf.data.Dataset.from_generator`: as fast here, and the main thread then waits where a
signal can interrupt it, so SIGTERM ends a run whose input pipe has stalled.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchpredict.batching import Prefetch, fixed_batches
from batchpredict.errors import ModelError, UsageError
from batchpredict.model import LoadedModel

#: Batches prepared ahead of the one being computed.
PREFETCH_BATCHES = 4


@dataclass(frozen=True)
class DevicePlan:
    """Which physical GPUs TensorFlow may see and the device the model runs on."""

    visible_gpus: tuple[int, ...]
    device: str


def choose_device(spec: str, gpu_count: int) -> DevicePlan:
    """Pure decision for `--device auto|cpu|gpu|gpu:N` given how many GPUs exist."""
    if spec == "cpu" or (spec == "auto" and gpu_count == 0):
        return DevicePlan((), "/CPU:0")
    if spec in ("auto", "gpu"):
        if gpu_count == 0:
            raise UsageError("--device gpu: no GPU is visible to TensorFlow on this machine")
        return DevicePlan((0,), "/GPU:0")
    index = int(spec.partition(":")[2])
    if index >= gpu_count:
        raise UsageError(
            f"--device {spec}: this machine has {gpu_count} GPU(s)"
            + (f" (gpu:0 to gpu:{gpu_count - 1})" if gpu_count else "")
        )
    # Only the chosen GPU is made visible, so inside TensorFlow it is GPU:0.
    return DevicePlan((index,), "/GPU:0")


def configure_devices(spec: str, gpu_memory_limit_mb: int | None = None) -> DevicePlan:
    """Apply the device choice; must run before TensorFlow initialises its runtime."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    plan = choose_device(spec, len(gpus))
    visible = [gpus[i] for i in plan.visible_gpus]
    try:
        tf.config.set_visible_devices(visible, "GPU")
        for gpu in visible:
            if gpu_memory_limit_mb is not None:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_limit_mb)]
                )
            else:
                # Grow on demand so that other jobs on a shared GPU are not starved.
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:  # TensorFlow was initialised already
        raise ModelError(f"cannot apply --device {spec}: {exc}") from exc
    return plan


class Predictor:
    """A model wrapped in one traced function over batches of exactly `batch_size` rows."""

    def __init__(self, model: LoadedModel, batch_size: int, device: str = "/CPU:0") -> None:
        import tensorflow as tf

        self.model = model
        self.device = device
        self.batch_size = _batch_size_for(model, batch_size)
        self.input_specs = {
            t.name: tf.TensorSpec(
                (self.batch_size, *t.shape[1:]),
                tf.string if t.dtype == "string" else tf.as_dtype(t.dtype),
                name=t.name,
            )
            for t in model.inputs
        }
        call = model.call

        def step(inputs: dict[str, Any]) -> dict[str, Any]:
            return call(inputs)

        self._step = tf.function(step, input_signature=[self.input_specs], autograph=False)

    def predict_stream(
        self, batches: Callable[[], Iterable[dict[str, np.ndarray]]]
    ) -> Generator[dict[str, np.ndarray], None, None]:
        """Predict each fixed-size batch of `batches()` in order; a thread prepares them."""
        import tensorflow as tf

        feed = Prefetch(batches, PREFETCH_BATCHES)
        try:
            with tf.device(self.device):
                for batch in feed:
                    outputs = self._step(batch)
                    yield {name: value.numpy() for name, value in outputs.items()}
        finally:
            feed.close()

    def predict_arrays(self, arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Predict `rows` rows held in memory; padding is added and dropped here."""
        import tensorflow as tf

        parts: dict[str, list[np.ndarray]] = {}
        with tf.device(self.device):
            for batch in fixed_batches(arrays, rows, self.batch_size):
                for name, value in self._step(batch).items():
                    parts.setdefault(name, []).append(value.numpy())
        return {name: np.concatenate(chunks)[:rows] for name, chunks in parts.items()}

    def trace_count(self) -> int:
        """How many times the step function was traced (1 once it has run)."""
        return int(self._step.experimental_get_tracing_count())


def _batch_size_for(model: LoadedModel, requested: int) -> int:
    """A model that fixes its batch dimension (e.g. `[1, 10]`) dictates the batch size."""
    fixed = {t.shape[0] for t in model.inputs if t.shape and t.shape[0] is not None}
    if len(fixed) > 1:
        raise ModelError(f"model inputs fix different batch sizes: {sorted(fixed)}")
    return fixed.pop() if fixed else requested
