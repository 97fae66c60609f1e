"""Ray Data on this machine: read, `map_batches` with an actor holding the model, write.

    python benchmarks/ray_script.py INPUT OUTPUT_DIR MODEL

Formats go by extension; Ray writes a directory of files. Avro is read with
`ray.data.read_avro` and written as CSV, like the seed's script. One actor, batch size 8192.
Only run by bench.py when `import ray` works.
"""

from __future__ import annotations

import sys

import numpy as np
import ray

FEATURES = [f"f{j}" for j in range(30)]


class Model:
    """The Keras model, loaded once per actor, predicting dict-of-NumPy batches."""

    def __init__(self, model_path: str) -> None:
        import keras

        self.model = keras.saving.load_model(model_path, compile=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """id and prediction for one batch."""
        features = np.stack([batch[name] for name in FEATURES], axis=1).astype(np.float32)
        predictions = self.model.predict_on_batch(features)
        return {"id": batch["id"], "prediction": np.asarray(predictions)[:, 0]}


def main() -> None:
    """Read, predict, write, with Ray Data's streaming executor."""
    source, target, model_path = sys.argv[1:]
    ray.init(include_dashboard=False, log_to_driver=False)
    extension = source.rpartition(".")[2]
    readers = {
        "csv": ray.data.read_csv,
        "parquet": ray.data.read_parquet,
        "jsonl": ray.data.read_json,
        "avro": ray.data.read_avro,
    }
    predicted = readers[extension](source).map_batches(
        Model,
        fn_constructor_args=(model_path,),
        batch_size=8192,
        batch_format="numpy",
        concurrency=1,
    )
    if extension == "parquet":
        predicted.write_parquet(target)
    elif extension == "jsonl":
        predicted.write_json(target)
    else:
        predicted.write_csv(target)


if __name__ == "__main__":
    main()
