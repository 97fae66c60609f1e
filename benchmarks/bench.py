"""Throughput and peak memory of batchpredict against the script it replaces.

    python benchmarks/bench.py --rows 1000000 --formats csv,parquet

Generates N rows x 30 float32 features plus an int64 id in each format and a Keras MLP
30->256->256->1, then runs, alternating per format so that machine drift hits all alike:
- batchpredict end to end (the installed command, as a user runs it);
- the seed's script: pandas reads the whole file, `model.predict(x)`, pandas writes;
- the same script with `batch_size=8192`.
Each contender runs in a fresh helper process that times it and reads its peak RSS
(getrusage of the waited child); wall seconds include start-up. Results go to
`benchmarks/out/results.json` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_FEATURES = 30
SEED_SCRIPT = """
import sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import pandas as pd, keras
fmt, src, dst, model_path, batch = sys.argv[1:6]
readers = {"csv": pd.read_csv, "parquet": pd.read_parquet,
           "jsonl": lambda p: pd.read_json(p, lines=True)}
if fmt == "avro":
    import fastavro
    with open(src, "rb") as handle:
        frame = pd.DataFrame.from_records(list(fastavro.reader(handle)))
else:
    frame = readers[fmt](src)
model = keras.saving.load_model(model_path, compile=False)
features = frame[[f"f{j}" for j in range(30)]].to_numpy("float32")
kwargs = {} if batch == "default" else {"batch_size": int(batch)}
frame = frame[["id"]].assign(prediction=model.predict(features, verbose=0, **kwargs)[:, 0])
if fmt == "parquet":
    frame.to_parquet(dst)
elif fmt == "jsonl":
    frame.to_json(dst, orient="records", lines=True)
else:
    frame.to_csv(dst, index=False)
"""


def make_inputs(out: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """Write the data set once per format (skipped when already there with the same size)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    columns = {"id": pa.array(np.arange(rows, dtype=np.int64))}
    for j in range(N_FEATURES):
        columns[f"f{j}"] = pa.array(rng.normal(size=rows).astype(np.float32))
    table = pa.table(columns)
    paths = {}
    for fmt in formats:
        path = out / f"data_{rows}.{fmt}"
        paths[fmt] = path
        if path.exists():
            continue
        if fmt == "csv":
            pacsv.write_csv(table, path)
        elif fmt == "parquet":
            pq.write_table(table, path)
        elif fmt == "jsonl":
            table.to_pandas().to_json(path, orient="records", lines=True)
        elif fmt == "avro":
            import fastavro

            schema = {
                "type": "record",
                "name": "Row",
                "fields": [{"name": "id", "type": "long"}]
                + [{"name": f"f{j}", "type": "float"} for j in range(N_FEATURES)],
            }
            with path.open("wb") as handle:
                fastavro.writer(handle, schema, table.to_pylist(), codec="null")
    return paths


def make_model(out: Path) -> Path:
    """The benchmark's Keras MLP 30->256->256->1, saved once."""
    path = out / "mlp.keras"
    if not path.exists():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras

        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape=(N_FEATURES,), name="features")
        x = keras.layers.Dense(256, activation="relu")(inputs)
        x = keras.layers.Dense(256, activation="relu")(x)
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        model.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,parquet,jsonl,avro")
    parser.add_argument("--contenders", default="batchpredict,seed_tuned,seed")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    formats = args.formats.split(",")
    inputs = make_inputs(args.out, args.rows, formats)
    model = make_model(args.out)
    exe = Path(sys.executable).with_name("batchpredict")
    results = []
    for fmt in formats:
        for contender in args.contenders.split(","):
            # The seed script has no Avro writer: it writes CSV for Avro inputs.
            out_fmt = "csv" if fmt == "avro" and contender != "batchpredict" else fmt
            dst = args.out / f"out_{contender}.{out_fmt}"
            if contender == "batchpredict":
                command = [
                    str(exe),
                    "predict",
                    "--model",
                    str(model),
                    "--input_file",
                    str(inputs[fmt]),
                    "--output_file",
                    str(dst),
                    "--keep_columns",
                    "id",
                ]
            else:
                batch = "8192" if contender == "seed_tuned" else "default"
                command = [
                    sys.executable,
                    "-c",
                    SEED_SCRIPT,
                    fmt,
                    str(inputs[fmt]),
                    str(dst),
                    str(model),
                    batch,
                ]
            # Each contender in a fresh interpreter: a fresh RUSAGE_CHILDREN maximum.
            wrapped = [sys.executable, "-c", _CHILD, *command]
            proc = subprocess.run(wrapped, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{contender} on {fmt} failed:\n{proc.stderr[-3000:]}")
            row = {
                "format": fmt,
                "contender": contender,
                "rows": args.rows,
                **json.loads(proc.stdout),
            }
            row["rows_per_second"] = round(args.rows / row["seconds"])
            results.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(results))


def markdown_table(results: list[dict[str, object]]) -> str:
    """Results as a Markdown table, with each contender's time relative to batchpredict's."""
    lines = [
        "| format | contender | seconds | rows/s | peak RSS MiB | batchpredict speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ours = {r["format"]: r for r in results if r["contender"] == "batchpredict"}
    for row in results:
        base = ours.get(row["format"])
        ratio = f"{float(row['seconds']) / float(base['seconds']):.2f}x" if base else "-"  # type: ignore[arg-type]
        lines.append(
            f"| {row['format']} | {row['contender']} | {row['seconds']} | "
            f"{row['rows_per_second']:,} | {row['peak_rss_mib']} | {ratio} |"
        )
    return "\n".join(lines)


# Runs one command as its own child and prints its wall time and peak RSS as JSON.
_CHILD = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - started
if proc.returncode:
    sys.stderr.write(proc.stderr[-3000:]); sys.exit(proc.returncode)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": round(wall, 2), "peak_rss_mib": round(peak, 1)}))
"""


if __name__ == "__main__":
    main()
