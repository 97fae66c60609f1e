#!/usr/bin/env python3
"""Regenerate everything in ``sample_data/``, deterministically.

The data is the UCI Breast Cancer Wisconsin (Diagnostic) data set (CC BY 4.0) as bundled
with scikit-learn, so nothing is downloaded. scikit-learn is *not* a runtime dependency of
batchpredict; install it into the virtualenv first::

    pip install scikit-learn
    python scripts/make_sample_data.py            # writes ./sample_data/
    python scripts/make_sample_data.py --output_dir /tmp/sample_data

Written files (569 rows each, identical content):

* ``breast_cancer.csv``      pyarrow.csv.write_csv
* ``breast_cancer.jsonl``    pandas ``to_json(orient="records", lines=True)``
* ``breast_cancer.avro``     fastavro (long/double/string, deflate, fixed sync marker)
* ``breast_cancer.parquet``  pyarrow.parquet.write_table
* ``breast_cancer_model.keras``  a small Keras classifier (input ``features`` (30,) float32,
  output ``malignant_probability`` (1,) = P(malignant)), trained for a few seconds.
* ``README.md``

Columns: ``patient_id`` (int64, 1..569), the 30 features in scikit-learn's order with
snake_case names (float64), ``diagnosis`` ("malignant"/"benign").

The CSV, JSON lines, Avro and Parquet files are byte-identical from run to run (with the
same library versions), and so is README.md. The ``.keras`` file is a zip archive with a save
date (and Python object ids) inside, so its bytes change on every run; with the fixed seeds
and deterministic ops its weights file (``model.weights.h5``) is byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# Quieten TensorFlow's C++ start-up chatter and make CPU kernels reproducible; both must be
# set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

try:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("scikit-learn is needed to regenerate the sample data: pip install scikit-learn")

import fastavro

SEED = 20240601
TEST_SIZE = 0.2
EPOCHS = 40
BATCH_SIZE = 32
BASENAME = "breast_cancer"
MODEL_NAME = "breast_cancer_model.keras"
#: fastavro picks a random 16-byte sync marker unless given one; a fixed one makes the file
#: byte-identical from run to run.
AVRO_SYNC_MARKER = b"batchpredict-bc1"
assert len(AVRO_SYNC_MARKER) == 16

REPO_ROOT = Path(__file__).resolve().parent.parent


def snake_case(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_")


def load_frame() -> tuple[pd.DataFrame, list[str]]:
    """The 569 rows as a DataFrame: patient_id, 30 float64 features, diagnosis."""
    bunch = load_breast_cancer()
    feature_names = [snake_case(n) for n in bunch.feature_names]
    assert len(feature_names) == 30 and len(set(feature_names)) == 30
    frame = pd.DataFrame(np.asarray(bunch.data, dtype=np.float64), columns=feature_names)
    frame.insert(0, "patient_id", np.arange(1, len(frame) + 1, dtype=np.int64))
    # sklearn: target 0 = malignant, 1 = benign; target_names says so.
    target_names = [str(t) for t in bunch.target_names]
    assert target_names == ["malignant", "benign"], target_names
    frame["diagnosis"] = pd.Series(
        [target_names[t] for t in bunch.target], dtype=object, index=frame.index
    )
    return frame, feature_names


def to_arrow(frame: pd.DataFrame, feature_names: list[str]) -> pa.Table:
    """Explicit schema, no pandas metadata: the files carry only what they should."""
    fields = [pa.field("patient_id", pa.int64(), nullable=False)]
    fields += [pa.field(n, pa.float64(), nullable=False) for n in feature_names]
    fields += [pa.field("diagnosis", pa.string(), nullable=False)]
    schema = pa.schema(fields)
    arrays = [pa.array(frame[f.name].tolist(), type=f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_csv(table: pa.Table, path: Path) -> None:
    pa_csv.write_csv(table, str(path))


def write_jsonl(frame: pd.DataFrame, path: Path) -> None:
    # pandas' default double_precision (10) round-trips every value of this data set
    # exactly (checked by verify_round_trip); 15 would print 17.989999999999998.
    frame.to_json(path, orient="records", lines=True)


def avro_schema(feature_names: list[str]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "BreastCancerRow",
        "namespace": "batchpredict.sample_data",
        "doc": "UCI Breast Cancer Wisconsin (Diagnostic), via scikit-learn. CC BY 4.0.",
        "fields": [{"name": "patient_id", "type": "long"}]
        + [{"name": n, "type": "double"} for n in feature_names]
        + [{"name": "diagnosis", "type": "string"}],
    }


def write_avro(frame: pd.DataFrame, feature_names: list[str], path: Path) -> None:
    schema = fastavro.parse_schema(avro_schema(feature_names))
    records = []
    for row in frame.itertuples(index=False):
        record: dict[str, Any] = {"patient_id": int(row[0])}
        record.update({n: float(v) for n, v in zip(feature_names, row[1:31], strict=True)})
        record["diagnosis"] = str(row[31])
        records.append(record)
    with open(path, "wb") as fo:
        fastavro.writer(
            fo,
            schema,
            records,
            codec="deflate",
            sync_marker=AVRO_SYNC_MARKER,
            codec_compression_level=6,
        )


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, str(path), compression="snappy")


def verify_round_trip(out_dir: Path, frame: pd.DataFrame, feature_names: list[str]) -> None:
    """Read every file back with plain readers and compare values exactly."""
    expected_ids = frame["patient_id"].tolist()
    expected_x = frame[feature_names].to_numpy()
    expected_y = frame["diagnosis"].tolist()

    def check(label: str, ids: list[Any], x: np.ndarray, y: list[Any]) -> None:
        assert ids == expected_ids, f"{label}: patient_id differs"
        assert x.dtype == np.float64 and np.array_equal(x, expected_x), f"{label}: features differ"
        assert y == expected_y, f"{label}: diagnosis differs"

    csv_table = pa_csv.read_csv(str(out_dir / f"{BASENAME}.csv"))
    assert csv_table.column_names == frame.columns.tolist()
    assert csv_table.schema.field("patient_id").type == pa.int64()
    check(
        "csv",
        csv_table["patient_id"].to_pylist(),
        np.column_stack([csv_table[n].to_numpy() for n in feature_names]),
        csv_table["diagnosis"].to_pylist(),
    )

    with open(out_dir / f"{BASENAME}.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert all(list(r) == frame.columns.tolist() for r in rows)
    check(
        "jsonl",
        [r["patient_id"] for r in rows],
        np.array([[float(r[n]) for n in feature_names] for r in rows]),
        [r["diagnosis"] for r in rows],
    )

    with open(out_dir / f"{BASENAME}.avro", "rb") as fo:
        reader = fastavro.reader(fo)
        assert reader.codec == "deflate"
        rows = list(reader)
    check(
        "avro",
        [r["patient_id"] for r in rows],
        np.array([[r[n] for n in feature_names] for r in rows]),
        [r["diagnosis"] for r in rows],
    )

    pq_table = pq.read_table(str(out_dir / f"{BASENAME}.parquet"))
    check(
        "parquet",
        pq_table["patient_id"].to_pylist(),
        np.column_stack([pq_table[n].to_numpy() for n in feature_names]),
        pq_table["diagnosis"].to_pylist(),
    )


def train_model(frame: pd.DataFrame, feature_names: list[str], path: Path) -> float:
    """Train the small classifier, save it, and return its test accuracy."""
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    x = frame[feature_names].to_numpy(dtype=np.float32)
    # Label 1 = malignant (sklearn's target is the other way round).
    y = (frame["diagnosis"] == "malignant").to_numpy(dtype=np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )

    normalizer = keras.layers.Normalization(axis=-1, name="normalize")
    normalizer.adapt(x_train)

    inputs = keras.Input(shape=(len(feature_names),), dtype="float32", name="features")
    hidden = normalizer(inputs)
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="malignant_probability")(hidden)
    model = keras.Model(inputs=inputs, outputs=outputs, name="breast_cancer_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        shuffle=True,
        verbose=0,
    )
    _, train_acc = model.evaluate(x_train, y_train, verbose=0)
    _, test_acc = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"model: {len(x_train)} training rows, {len(x_test)} test rows, {EPOCHS} epochs; "
        f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}"
    )
    if test_acc < 0.9:
        raise SystemExit(f"test accuracy {test_acc:.4f} is below 0.9; not saving the model")

    model.save(str(path))

    # Load it back the way batchpredict would and check it reproduces the predictions
    # on raw (un-normalised) feature values.
    reloaded = keras.models.load_model(str(path))
    assert [t.name for t in reloaded.inputs] == ["features"], reloaded.inputs
    assert tuple(reloaded.inputs[0].shape) == (None, len(feature_names))
    assert tuple(reloaded.outputs[0].shape) == (None, 1)
    before = model.predict(x_test, verbose=0)
    after = reloaded.predict(x_test, verbose=0)
    np.testing.assert_allclose(before, after, rtol=1e-6, atol=1e-6)
    weights_digest = hashlib.sha256(
        b"".join(np.asarray(w).tobytes() for w in reloaded.get_weights())
    ).hexdigest()
    print(f"model weights sha256 {weights_digest[:16]}")
    return float(test_acc)


README_TEMPLATE = """\
# Sample data

A small, real data set and a model that fits it, for trying batchpredict and for its
end-to-end tests. Everything here is generated by `scripts/make_sample_data.py`; do not
edit the files by hand.

## The data

**UCI Breast Cancer Wisconsin (Diagnostic)** (W. H. Wolberg, W. N. Street,
O. L. Mangasarian, 1995), as bundled with scikit-learn
(`sklearn.datasets.load_breast_cancer`). Licence: **CC BY 4.0**
(<https://archive.ics.uci.edu/dataset/17/breast+cancer+wisconsin+diagnostic>).
The features are computed from digitised images of fine-needle aspirates of breast masses.

{n_rows} rows ({n_malignant} malignant, {n_benign} benign), the same rows in four formats:

| File | Written with |
| --- | --- |
| `breast_cancer.csv` | `pyarrow.csv.write_csv` (header row, strings quoted) |
| `breast_cancer.jsonl` | pandas `to_json(orient="records", lines=True)` |
| `breast_cancer.avro` | fastavro; `long` / `double` / `string` fields, deflate codec |
| `breast_cancer.parquet` | `pyarrow.parquet.write_table`, snappy |

Columns, in this order:

| Column | Type | Meaning |
| --- | --- | --- |
| `patient_id` | int64 | 1..{n_rows}, the row number; a key column, not a feature |
{feature_rows}| `diagnosis` | string | `malignant` or `benign`: the true label, to compare with |

`patient_id` is made up (the row number): scikit-learn's copy of the data has no sample IDs.

The 30 features are the mean, standard error ("error") and worst (mean of the three
largest values) of ten measurements of the cell nuclei; the names are scikit-learn's
`feature_names`, lower-cased with spaces replaced by underscores.

## The model

`breast_cancer_model.keras` is a small Keras 3 model:

* one input, `features`: shape `(None, 30)`, float32, the 30 feature columns above in
  order, **raw** values (a `Normalization` layer adapted on the training rows is the
  first layer, so no scaling is needed);
* `Dense(16, relu)`, then `Dense(1, sigmoid)` named `malignant_probability`;
* one output, `malignant_probability`: shape `(None, 1)`, the probability that the mass
  is malignant (label 1 = malignant; note that scikit-learn's own target has 0 =
  malignant).

Trained on a fixed, stratified {train_pct}% split ({n_train} rows) for {epochs} epochs;
accuracy on the remaining {n_test} rows: **{test_acc:.3f}**. It is a demonstration, not a
diagnostic tool.

## Quick start

By default batchpredict feeds a model with a single `[None, 30]` input from the numeric
columns that are not keep-only columns. `patient_id` is numeric too, so name it (and
`diagnosis`) in `--keep_columns`: they are copied to the output and left out of the
features.

```sh
batchpredict predict \\
    --model sample_data/breast_cancer_model.keras \\
    --input_file sample_data/breast_cancer.csv \\
    --keep_columns patient_id,diagnosis \\
    --output_file predictions.csv
```

The same works with `breast_cancer.jsonl`, `breast_cancer.avro` and
`breast_cancer.parquet`.

## Regenerating

```sh
. .venv/bin/activate
pip install scikit-learn        # only needed for this script, not by batchpredict
python scripts/make_sample_data.py
```

Seeds are fixed: the CSV, JSON lines, Avro (fixed sync marker) and Parquet files come out
byte-identical on every run with the same library versions. The `.keras` file is a zip
archive that records its save time (and Python object ids in `config.json`), so its bytes
differ between runs even though the trained weights (`model.weights.h5`) are identical.

SHA-256 of the data files as generated:

```
{checksums}
```
"""


def write_readme(
    path: Path,
    frame: pd.DataFrame,
    feature_names: list[str],
    test_acc: float,
    checksums: dict[str, str],
) -> None:
    n_rows = len(frame)
    # train_test_split rounds the test size up.
    n_test = int(np.ceil(n_rows * TEST_SIZE))
    feature_rows = "".join(f"| `{n}` | float64 | feature |\n" for n in feature_names)
    text = README_TEMPLATE.format(
        n_rows=n_rows,
        n_malignant=int((frame["diagnosis"] == "malignant").sum()),
        n_benign=int((frame["diagnosis"] == "benign").sum()),
        feature_rows=feature_rows,
        train_pct=round((1 - TEST_SIZE) * 100),
        n_train=n_rows - n_test,
        n_test=n_test,
        epochs=EPOCHS,
        test_acc=test_acc,
        checksums="\n".join(f"{digest}  {name}" for name, digest in checksums.items()),
    )
    path.write_text(text, encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=REPO_ROOT / "sample_data",
        help="where to write the files (default: the repository's sample_data/)",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    frame, feature_names = load_frame()
    table = to_arrow(frame, feature_names)

    write_csv(table, out_dir / f"{BASENAME}.csv")
    write_jsonl(frame, out_dir / f"{BASENAME}.jsonl")
    write_avro(frame, feature_names, out_dir / f"{BASENAME}.avro")
    write_parquet(table, out_dir / f"{BASENAME}.parquet")
    verify_round_trip(out_dir, frame, feature_names)

    checksums = {
        f"{BASENAME}.{ext}": sha256(out_dir / f"{BASENAME}.{ext}")
        for ext in ("csv", "jsonl", "avro", "parquet")
    }
    for name, digest in checksums.items():
        size = (out_dir / name).stat().st_size
        print(f"{digest}  {name} ({size} bytes)")

    test_acc = train_model(frame, feature_names, out_dir / MODEL_NAME)
    write_readme(out_dir / "README.md", frame, feature_names, test_acc, checksums)
    print(f"wrote {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
