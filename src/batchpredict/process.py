"""What the command line does to its own process before TensorFlow loads, and a library
call does not: TensorFlow's start-up noise silenced (file descriptor 2 pointed elsewhere
while it imports, warning filters, library loggers) and `--device` applied (visible GPUs,
their memory, a CPU split).

A program using the library calls `prepare_tensorflow` itself if it wants the same.
"""

from __future__ import annotations

from batchpredict.config import RunConfig
from batchpredict.observe import quiet_tensorflow
from batchpredict.predictor import configure_devices


def prepare_tensorflow(config: RunConfig) -> None:
    """Import TensorFlow quietly and, for the local engine, apply `--device` to this
    process; runs once the run's inputs and outputs are planned. With `--engine ray` this
    process never loads TensorFlow: Ray's workers load the model and choose their devices."""
    if config.engine != "local":
        return
    quiet_tensorflow(config.log_level)
    configure_devices(config.device, config.gpu_memory_limit)
