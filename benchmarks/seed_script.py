"""The seed's script that batchpredict replaces: pandas reads it all, Keras predicts, pandas writes.

    python benchmarks/seed_script.py INPUT OUTPUT MODEL [BATCH_SIZE]

Formats go by extension. pandas has no Avro reader or writer: Avro is read with fastavro into
a DataFrame and bench.py gives an OUTPUT ending in .csv for it. Without BATCH_SIZE,
`model.predict` uses Keras' default (32). `verbose=0` keeps Keras' progress bar out.
"""

from __future__ import annotations

import sys

import fastavro
import keras
import pandas as pd

FEATURES = [f"f{j}" for j in range(30)]


def read(path: str) -> pd.DataFrame:
    """The whole input as one DataFrame."""
    if path.endswith(".csv"):
        return pd.read_csv(path)
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    if path.endswith(".jsonl"):
        return pd.read_json(path, lines=True)
    with open(path, "rb") as handle:
        return pd.DataFrame.from_records(list(fastavro.reader(handle)))


def write(frame: pd.DataFrame, path: str) -> None:
    """The whole output in one go."""
    if path.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif path.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)


def main() -> None:
    """Read, predict, write."""
    source, target, model_path, *batch_size = sys.argv[1:]
    frame = read(source)
    model = keras.saving.load_model(model_path)
    options = {"batch_size": int(batch_size[0])} if batch_size else {}
    predictions = model.predict(frame[FEATURES].to_numpy("float32"), verbose=0, **options)
    write(pd.DataFrame({"id": frame["id"], "prediction": predictions[:, 0]}), target)


if __name__ == "__main__":
    main()
