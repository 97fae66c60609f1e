"""batchpredict's stages in isolation, one per process, each timed inside with perf_counter.

    python benchmarks/stages.py model  MODEL
    python benchmarks/stages.py read   MODEL INPUT ROWS
    python benchmarks/stages.py predict MODEL INPUT ROWS
    python benchmarks/stages.py write  MODEL OUTPUT ROWS
    python benchmarks/stages.py startup MODEL INPUT ROWS

`model` saves the benchmark's Keras MLP; the others print one JSON object whose `seconds`
is the stage's own time (imports, model load and set-up excluded, except for `startup`,
which is exactly those). bench.py runs them; the shared argument list keeps that simple.
"""

from __future__ import annotations

import json
import sys
import time

N_FEATURES = 30
PREDICT_BATCH = 8192
CHUNK_ROWS = 65536


def save_model(path: str) -> None:
    """Save the Keras MLP 30->256->256->1 with one input named `features`."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(N_FEATURES,), name="features")
    hidden = keras.layers.Dense(256, activation="relu")(inputs)
    hidden = keras.layers.Dense(256, activation="relu")(hidden)
    keras.Model(inputs, keras.layers.Dense(1)(hidden)).save(path)


def traced_model(model_path: str):
    """The model loaded and wrapped in a tf.function fixed to [8192, 30] float32."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    spec = tf.TensorSpec([PREDICT_BATCH, N_FEATURES], tf.float32)
    return tf.function(lambda batch: model(batch, training=False), input_signature=[spec])


def read(input_path: str) -> dict[str, float]:
    """Iterate every batch of our reader (chunk_size 65536); return seconds and rows."""
    from batchpredict.formats.base import ReadOptions
    from batchpredict.formats.registry import reader_for

    started = time.perf_counter()
    reader = reader_for(input_path, None, ReadOptions(chunk_size=CHUNK_ROWS))
    rows = sum(batch.num_rows for batch in reader.iter_batches())
    return {"seconds": time.perf_counter() - started, "rows": rows}


def predict(model_path: str, rows: int) -> dict[str, float]:
    """Predict `rows` in-memory random rows in batches of 8192 (the last one padded)."""
    import numpy as np

    step = traced_model(model_path)
    batches = -(-rows // PREDICT_BATCH)
    features = np.random.default_rng(0).standard_normal(
        (batches * PREDICT_BATCH, N_FEATURES), dtype=np.float32
    )
    step(features[:PREDICT_BATCH])  # traces: part of start-up, not of this stage
    started = time.perf_counter()
    for start in range(0, len(features), PREDICT_BATCH):
        step(features[start : start + PREDICT_BATCH]).numpy()
    return {"seconds": time.perf_counter() - started, "rows": rows}


def write(output_path: str, rows: int) -> dict[str, float]:
    """Write `rows` rows of id + prediction through our writer, in 65536-row batches."""
    import numpy as np
    import pyarrow as pa

    from batchpredict.formats.registry import writer_for

    ids = np.arange(rows, dtype=np.int64)
    predictions = np.random.default_rng(0).random(rows, dtype=np.float32)
    batches = [
        pa.RecordBatch.from_arrays(
            [pa.array(ids[i : i + CHUNK_ROWS]), pa.array(predictions[i : i + CHUNK_ROWS])],
            names=["id", "prediction"],
        )
        for i in range(0, rows, CHUNK_ROWS)
    ]
    started = time.perf_counter()
    writer = writer_for(output_path, None)
    writer.open(batches[0].schema)
    for batch in batches:
        writer.write(batch)
    writer.commit()
    return {"seconds": time.perf_counter() - started, "rows": rows}


def startup(model_path: str) -> dict[str, float]:
    """Time `import tensorflow`, the model load and the first batch (tracing included)."""
    started = time.perf_counter()
    import numpy as np
    import tensorflow  # noqa: F401 - importing it is what is timed

    imported = time.perf_counter()
    step = traced_model(model_path)
    loaded = time.perf_counter()
    step(np.zeros((PREDICT_BATCH, N_FEATURES), np.float32)).numpy()
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "import_seconds": imported - started,
        "load_seconds": loaded - imported,
        "first_batch_seconds": done - loaded,
    }


def main() -> None:
    """Run the stage named by the first argument and print its timing as JSON."""
    stage, model_path, *rest = sys.argv[1:]
    if stage == "model":
        save_model(model_path)
        return
    path, rows = rest[0], int(rest[1])
    result = {
        "read": lambda: read(path),
        "predict": lambda: predict(model_path, rows),
        "write": lambda: write(path, rows),
        "startup": lambda: startup(model_path),
    }[stage]()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
