"""Run a loaded model over fixed-size batches: one traced function, batches prefetched.

The step function is traced once with a fully fixed batch dimension, so there is no
retracing however many files or chunks a run has (`--batch_size auto` traces each size
it tries once, on the first chunk, and keeps one). The pipeline hands over whole chunks
prepared on a prefetch thread (`batching.Prefetch`), so the main thread waits for input
where a signal can interrupt it and SIGTERM ends a run whose input pipe has stalled.

Within a chunk, batches reach the step one of two ways (`--prefetch`): `numpy` hands
each NumPy batch to the step in turn (the CPU default: nothing to copy to a device), and
`tfdata` feeds it from a `tf.data` pipeline over the chunk in memory that, on a GPU,
copies the next batches to the device while the current one computes
(`prefetch_to_device`). Either way the input is already in memory: the main thread
never waits inside `tf.data` for the reading thread.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchpredict.batching import batch_count, fixed_batches, pad_rows, whole_batches
from batchpredict.config import DEFAULT_CHUNK_SIZE, PREFETCH_CHOICES
from batchpredict.errors import ModelError, UsageError
from batchpredict.model import LoadedModel

#: Sizes `--batch_size auto` chooses from (powers of two; see `auto_batch_sizes`). Steps
#: of 4: each size tried costs a trace (~0.04 s for an MLP) and per-row speed changes
#: little between neighbours.
AUTO_BATCH_SIZES = (256, 1024, 4096, 16384)
#: Input bytes one batch may hold under `auto` (bounds memory for image-sized rows).
AUTO_BATCH_BYTES = 32 << 20
#: Bytes assumed per string value when sizing batches.
AUTO_STRING_BYTES = 256
#: Measuring stops trying larger sizes after this long (heavy models).
AUTO_BUDGET_SECONDS = 2.0
#: Each size is timed for at least this long (at least 2 runs, at most 10).
AUTO_MIN_TIMED_SECONDS = 0.03
#: Batches a `tfdata` pipeline holds ready on a GPU ahead of the step.
DEVICE_PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class DevicePlan:
    """Which physical GPUs TensorFlow may see, how many logical CPUs to split the CPU
    into (0: none), and the devices that each run a replica of the model."""

    visible_gpus: tuple[int, ...]
    devices: tuple[str, ...]
    cpu_split: int = 0

    @property
    def device(self) -> str:
        """The devices as one string for logs: `/CPU:0`, or `/GPU:0,/GPU:1`."""
        return ",".join(self.devices)


def choose_device(spec: str, gpu_count: int) -> DevicePlan:
    """Pure decision for `--device` given how many GPUs exist.

    `auto` and `gpu` take every GPU (one model replica each), `gpu:N` one, and a list
    (`gpu:0,gpu:2`) those named. `cpu:0,cpu:1` splits the CPU into logical devices, one
    replica each: the same dispatch as several GPUs, for testing it without them.
    """
    if spec == "cpu" or (spec == "auto" and gpu_count == 0):
        return DevicePlan((), ("/CPU:0",))
    if spec in ("auto", "gpu"):
        if gpu_count == 0:
            raise UsageError("--device gpu: no GPU is visible to TensorFlow on this machine")
        return DevicePlan(tuple(range(gpu_count)), _gpu_names(gpu_count))
    kinds = {part.partition(":")[0] for part in spec.split(",")}
    indexes = [int(part.partition(":")[2]) for part in spec.split(",")]
    if len(set(indexes)) != len(indexes):
        raise UsageError(f"--device {spec}: a device is named twice")
    if kinds == {"cpu"}:
        return DevicePlan((), tuple(f"/CPU:{i}" for i in indexes), cpu_split=max(indexes) + 1)
    missing = [i for i in indexes if i >= gpu_count]
    if missing:
        raise UsageError(
            f"--device {spec}: this machine has {gpu_count} GPU(s)"
            + (f" (gpu:0 to gpu:{gpu_count - 1})" if gpu_count else "")
        )
    # Only the chosen GPUs are made visible, so inside TensorFlow they are GPU:0, GPU:1...
    return DevicePlan(tuple(indexes), _gpu_names(len(indexes)))


def _gpu_names(count: int) -> tuple[str, ...]:
    return tuple(f"/GPU:{i}" for i in range(count))


def is_gpu(device: str) -> bool:
    """Whether `device` (`/GPU:0`, `/device:GPU:1`, `gpu:0`) names a GPU."""
    return ":GPU:" in f":{device.upper().lstrip('/')}"


def prefetch_path(choice: str, devices: Sequence[str]) -> str:
    """The way batches reach the step (`tfdata` or `numpy`) for `--prefetch choice`.

    `auto` takes `tfdata` when the devices are GPUs, whose host-to-device copies it
    overlaps with compute, and `numpy` on the CPU, where there is nothing to copy and
    the benchmark measures `tfdata` slower (README "Speed and memory").
    """
    if choice not in PREFETCH_CHOICES:
        raise UsageError(f"--prefetch must be auto, tfdata or numpy, got {choice!r}")
    if choice != "auto":
        return choice
    return "tfdata" if any(is_gpu(device) for device in devices) else "numpy"


#: The `--device` value `configure_devices` applied to this process, and its plan.
_applied: tuple[str, DevicePlan] | None = None


def configure_devices(spec: str, gpu_memory_limit_mb: int | None = None) -> DevicePlan:
    """Apply the device choice to this process: which GPUs TensorFlow sees, their memory,
    the CPU split. Process-wide, so the command line does it (`process.prepare_tensorflow`),
    before TensorFlow initialises its runtime; a library call uses `devices_for`."""
    global _applied
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
        if plan.cpu_split:
            (cpu,) = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * plan.cpu_split
            )
    except RuntimeError as exc:  # TensorFlow was initialised already
        raise ModelError(f"cannot apply --device {spec}: {exc}") from exc
    _applied = (spec, plan)
    return plan


def devices_for(spec: str) -> DevicePlan:
    """The devices `--device spec` runs on: those `configure_devices` applied for it, or,
    where nothing was applied, the devices TensorFlow sees as they are, left unchanged."""
    if _applied is not None and _applied[0] == spec:
        return _applied[1]
    import tensorflow as tf

    plan = choose_device(spec, len(tf.config.list_physical_devices("GPU")))
    if plan.cpu_split:
        cpus = len(tf.config.list_logical_devices("CPU"))
        if cpus < plan.cpu_split:
            raise UsageError(
                f"--device {spec} splits the CPU into {plan.cpu_split} devices, which this "
                f"process has not done (it has {cpus}); the command line does it with "
                "batchpredict.process.prepare_tensorflow"
            )
        return plan
    if not plan.visible_gpus:
        return plan  # the CPU
    # Nothing was hidden: the chosen GPUs keep their own numbers.
    return DevicePlan(plan.visible_gpus, tuple(f"/GPU:{i}" for i in plan.visible_gpus))


@dataclass(frozen=True)
class BatchSizeChoice:
    """What `--batch_size auto` measured (rows/s per size tried) and kept."""

    batch_size: int
    rows_per_second: dict[int, float]
    seconds: float


class Predictor:
    """A model wrapped in one traced function over batches of exactly `batch_size` rows.

    `batch_size=None` (`--batch_size auto`) leaves the size to `choose_batch_size`, which
    times a few sizes on the first chunk of real rows and keeps the fastest. `prefetch`
    is `--prefetch`; `self.prefetch` is the path it resolved to (`prefetch_path`).
    """

    def __init__(
        self,
        model: LoadedModel,
        batch_size: int | None,
        devices: Sequence[str] | str = ("/CPU:0",),
        prefetch: str = "auto",
    ) -> None:
        self.model = model
        self.devices = (devices,) if isinstance(devices, str) else tuple(devices)
        self.device = self.devices[0]
        self.prefetch = prefetch_path(prefetch, self.devices)
        fixed = _fixed_batch_size(model)
        self.batch_size: int | None = fixed or batch_size
        self._calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._steps: dict[tuple[int, str], Any] = {}
        #: Batches each device computed (several devices: every one should get work).
        self.batches_per_device: Counter[str] = Counter()
        self._pool: ThreadPoolExecutor | None = None

    def input_specs(self, batch_size: int) -> dict[str, Any]:
        """The fully fixed `tf.TensorSpec` of every input for batches of `batch_size` rows."""
        import tensorflow as tf

        return {
            t.name: tf.TensorSpec(
                (batch_size, *t.shape[1:]),
                tf.string if t.dtype == "string" else tf.as_dtype(t.dtype),
                name=t.name,
            )
            for t in self.model.inputs
        }

    def _step(self, batch_size: int, device: str | None = None) -> Any:
        """The traced function for batches of `batch_size` rows on `device` (the first by
        default), traced on its first call; other devices run their own model replica."""
        device = device or self.device
        step = self._steps.get((batch_size, device))
        if step is None:
            import tensorflow as tf

            call = self._calls.get(device)
            if call is None:
                call = self.model.call if device == self.device else self.model.call_on(device)
                self._calls[device] = call

            def run(inputs: dict[str, Any]) -> dict[str, Any]:
                return call(inputs)

            step = tf.function(run, input_signature=[self.input_specs(batch_size)], autograph=False)
            self._steps[(batch_size, device)] = step
        return step

    def choose_batch_size(
        self, arrays: dict[str, np.ndarray], rows: int, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> BatchSizeChoice:
        """Time candidate sizes on these rows, keep the fastest and drop the other traces.

        Sizes are powers of two (so chunks of the largest are whole batches of each) whose
        inputs fit `AUTO_BATCH_BYTES`; larger sizes are tried while they are at least 5%
        faster per row and the measuring stays within `AUTO_BUDGET_SECONDS`.
        """
        import tensorflow as tf

        started = time.perf_counter()
        candidates = auto_batch_sizes(self.model, chunk_size)
        usable = [size for size in candidates if size <= rows] or candidates[:1]
        speeds: dict[int, float] = {}
        if len(usable) > 1:
            with tf.device(self.device):
                for size in usable:
                    best = max(speeds.values(), default=0.0)
                    try:
                        speeds[size] = self._rows_per_second(arrays, rows, size)
                    except tf.errors.ResourceExhaustedError:
                        self._steps.pop((size, self.device), None)
                        break  # out of (GPU) memory: the sizes so far are the choice
                    if speeds[size] < best * 1.05:
                        break  # a larger batch no longer pays
                    if time.perf_counter() - started > AUTO_BUDGET_SECONDS:
                        break
            chosen = max(speeds, key=lambda size: speeds[size], default=usable[0])
        else:
            chosen = usable[0]
        self.batch_size = chosen
        self._steps = {key: step for key, step in self._steps.items() if key[0] == chosen}
        return BatchSizeChoice(chosen, speeds, time.perf_counter() - started)

    def _rows_per_second(self, arrays: dict[str, np.ndarray], rows: int, size: int) -> float:
        """Rows per second of the traced step on the first `size` rows (after one warm-up)."""
        step = self._step(size)
        batch = next(fixed_batches(arrays, min(rows, size), size))
        step(batch)  # traces and allocates; not timed
        runs, elapsed = 0, 0.0
        while runs < 2 or (elapsed < AUTO_MIN_TIMED_SECONDS and runs < 10):
            start = time.perf_counter()
            for value in step(batch).values():
                value.numpy()
            elapsed += time.perf_counter() - start
            runs += 1
        return runs * size / elapsed

    def predict_arrays(self, arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Predict `rows` rows held in memory; padding is added and dropped here.

        With several devices, batches go to them in turn, each computed on a thread of its
        own (TensorFlow releases the GIL), and the results are put back in order.
        """
        if self.batch_size is None:
            self.choose_batch_size(arrays, rows)
        assert self.batch_size is not None
        size = self.batch_size
        if rows == 0:  # an output without rows still needs its columns' types and shapes
            return self._no_predictions(arrays, size)
        if self.prefetch == "tfdata":
            results = self._results_from_datasets(arrays, rows, size)
        else:
            results = self._results_from_numpy(arrays, rows, size)
        return {
            name: (
                results[0][name]
                if len(results) == 1
                else np.concatenate([result[name] for result in results])
            )[:rows]
            for name in results[0]
        }

    def _results_from_numpy(
        self, arrays: dict[str, np.ndarray], rows: int, size: int
    ) -> list[dict[str, np.ndarray]]:
        """The `numpy` path: each batch (a view, the last padded) handed to the step."""
        batches = fixed_batches(arrays, rows, size)
        if len(self.devices) == 1:
            results = [self._run_on(self.device, size, batch) for batch in batches]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(len(self.devices), "batchpredict-device")
            pool = self._pool
            futures = [
                pool.submit(self._run_on, self.devices[i % len(self.devices)], size, batch)
                for i, batch in enumerate(batches)
            ]
            results = [future.result() for future in futures]
        return results

    def _results_from_datasets(
        self, arrays: dict[str, np.ndarray], rows: int, size: int
    ) -> list[dict[str, np.ndarray]]:
        """The `tfdata` path: each device iterates its own `tf.data` pipeline over its
        share of the batches (batch i goes to device i mod n, as on the `numpy` path),
        on a thread of its own when there are several, and the results are interleaved
        back in order."""
        count = len(self.devices)
        if count == 1:
            return self._run_dataset(self.device, arrays, rows, size, 0, 1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(count, "batchpredict-device")
        pool = self._pool
        futures = [
            pool.submit(self._run_dataset, device, arrays, rows, size, i, count)
            for i, device in enumerate(self.devices)
        ]
        shares = [future.result() for future in futures]
        return [shares[i % count][i // count] for i in range(batch_count(rows, size))]

    def _run_dataset(
        self,
        device: str,
        arrays: dict[str, np.ndarray],
        rows: int,
        size: int,
        shard: int,
        shards: int,
    ) -> list[dict[str, np.ndarray]]:
        """Batches `shard`, `shard + shards`... of the chunk through the step on `device`,
        fed by `batch_dataset` (copied ahead to the device when it is a GPU)."""
        import tensorflow as tf

        dataset = batch_dataset(arrays, rows, size)
        if shards > 1:
            dataset = dataset.shard(shards, shard)
        # On the CPU the batches are slices of memory already there: a `prefetch` thread
        # would only take cores from the step (measured ~15% slower on two cores).
        if copies_to_device(device):
            # Must be the last transformation: the iterator then yields tensors already
            # on the device, the next ones copied while the step computes.
            dataset = dataset.apply(
                tf.data.experimental.prefetch_to_device(device, DEVICE_PREFETCH_BATCHES)
            )
        step = self._step(size, device)
        with tf.device(device):
            # Results are fetched after the loop: a GPU then queues every batch of the
            # chunk without waiting for each result's copy back to the host.
            outputs = [step(batch) for batch in dataset]
        self.batches_per_device[device] += len(outputs)
        return [{name: value.numpy() for name, value in out.items()} for out in outputs]

    def _no_predictions(self, arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """Each output with no rows, from one batch of blank inputs (zeros, empty text)."""
        batch = {
            name: np.full((size, *array.shape[1:]), "" if array.dtype == object else 0, array.dtype)
            for name, array in arrays.items()
        }
        return {name: value[:0] for name, value in self._run_on(self.device, size, batch).items()}

    def _run_on(
        self, device: str, size: int, batch: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One batch through the step function on `device`."""
        import tensorflow as tf

        with tf.device(device):
            outputs = self._step(size, device)(batch)
            result = {name: value.numpy() for name, value in outputs.items()}
        self.batches_per_device[device] += 1
        return result

    def trace_count(self) -> int:
        """How many times the kept step function was traced (1 once it has run)."""
        return sum(int(step.experimental_get_tracing_count()) for step in self._steps.values())


def copies_to_device(device: str) -> bool:
    """Whether a `tfdata` pipeline feeding `device` ends in `prefetch_to_device`: on a
    GPU, so that host-to-device copies overlap compute; on the CPU the batches are
    already where the step reads them."""
    return is_gpu(device)


def batch_dataset(arrays: dict[str, np.ndarray], rows: int, size: int) -> Any:
    """A `tf.data.Dataset` of the `{name: [size, ...]}` batches `fixed_batches` makes.

    The whole batches are sliced from a `[batches, size, ...]` view of each array (no
    per-row `batch()`), and the last, short batch is padded by repeating its last row,
    as on the `numpy` path, so that both feed the step the very same values.
    """
    import tensorflow as tf

    whole = rows // size
    parts = []
    if whole:
        parts.append(
            tf.data.Dataset.from_tensor_slices(
                {
                    name: a[: whole * size].reshape(whole, size, *a.shape[1:])
                    for name, a in arrays.items()
                }
            )
        )
    if rows % size:
        last = {name: pad_rows(a[whole * size : rows], size) for name, a in arrays.items()}
        parts.append(
            tf.data.Dataset.from_tensor_slices({name: a[None] for name, a in last.items()})
        )
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def auto_batch_sizes(model: LoadedModel, chunk_size: int) -> list[int]:
    """The sizes `--batch_size auto` may try for this model, smallest first: none above
    `chunk_size`, none whose inputs exceed `AUTO_BATCH_BYTES`."""
    row_bytes = sum(
        max(int(np.prod([d or 1 for d in t.shape[1:]])), 1)
        * (AUTO_STRING_BYTES if t.dtype == "string" else np.dtype(t.dtype).itemsize)
        for t in model.inputs
    )
    limit = min(chunk_size, max(AUTO_BATCH_BYTES // max(row_bytes, 1), 1))
    fitting = [size for size in AUTO_BATCH_SIZES if size <= limit]
    if fitting:
        return fitting
    # Large rows (images) or small chunks: the largest power of two within the limit.
    return [1 << (limit.bit_length() - 1)]


def chunk_rows_for(chunk_size: int, batch_size: int | None, model: LoadedModel) -> int:
    """Rows per chunk: `chunk_size` rounded up to whole batches of the batch size (for
    `auto`, of the largest it may choose, which every smaller choice divides), so that
    only a file's last batch is padded."""
    return whole_batches(chunk_size, batch_size or max(auto_batch_sizes(model, chunk_size)))


def _fixed_batch_size(model: LoadedModel) -> int | None:
    """A model that fixes its batch dimension (e.g. `[1, 10]`) dictates the batch size."""
    fixed = {t.shape[0] for t in model.inputs if t.shape and t.shape[0] is not None}
    if len(fixed) > 1:
        raise ModelError(f"model inputs fix different batch sizes: {sorted(fixed)}")
    return fixed.pop() if fixed else None
