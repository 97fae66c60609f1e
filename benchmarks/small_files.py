"""Many small files against one file holding the same rows, side by side: wall time, rows/s,
peak RSS and their ratio. See benchmarks/README.md.

    python benchmarks/small_files.py [--files 2000] [--rows_per_file 100] [--format jsonl]
                                     [--repeat 3] [--out benchmarks/out/small_files]

Both runs are `batchpredict predict --model M --input_file IN --output_dir OUT
--keep_columns id --no_progress`, IN being a glob over the small files or the one file;
they alternate, round after round, so that drift of a shared machine hits them alike.
CPU seconds (user + system, of the process once reaped) are reported beside wall seconds:
on a machine shared with other work they move less than wall time does.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the benchmark's own helpers: measuring, machine, versions

N_FEATURES = 8
SAVE_MODEL = """
import sys, keras
keras.utils.set_random_seed(0)
inputs = keras.Input(shape=({n},), name="features")
hidden = keras.layers.Dense(32, activation="relu")(inputs)
keras.Model(inputs, keras.layers.Dense(1)(hidden)).save(sys.argv[1])
"""
EXTENSIONS = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
CASES = ("many", "one")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rows_per_file", type=int, default=100)
    parser.add_argument("--format", choices=sorted(EXTENSIONS), default="jsonl")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--out", type=Path, default=bench.HERE / "out" / "small_files")
    args = parser.parse_args()
    if min(args.files, args.rows_per_file, args.repeat) < 1:
        parser.error("--files, --rows_per_file and --repeat must be at least 1")
    return args


def write_table(table: Any, path: Path, fmt: str) -> None:
    """One input file: JSON lines by pandas, CSV and Parquet by pyarrow."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "jsonl":
        table.to_pandas().to_json(path, orient="records", lines=True)
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)


def cached_inputs(args: argparse.Namespace) -> tuple[str, Path, int]:
    """(glob of the small files, the one file, rows), written once under `--out`."""
    import numpy as np
    import pyarrow as pa

    extension = EXTENSIONS[args.format]
    rows = args.files * args.rows_per_file
    folder = args.out / f"data_{args.files}x{args.rows_per_file}_{args.format}"
    many, one = folder / "many", folder / f"one{extension}"
    if not one.exists():
        print(f"writing {folder} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        many.mkdir(parents=True)
        rng = np.random.default_rng(0)
        columns = {"id": np.arange(rows, dtype=np.int64)}
        columns |= {f"f{j}": rng.normal(size=rows).astype(np.float32) for j in range(N_FEATURES)}
        table = pa.table(columns)
        for i in range(args.files):
            part = table.slice(i * args.rows_per_file, args.rows_per_file)
            write_table(part, many / f"part-{i:05d}{extension}", args.format)
        write_table(table, folder / f"_partial{extension}", args.format)
        (folder / f"_partial{extension}").replace(one)
    return str(many / f"*{extension}"), one, rows


def cached_model(out: Path) -> Path:
    """A Keras MLP 8->32->1 with one input `features`, saved once (in a child process)."""
    path = out / f"mlp_{N_FEATURES}.keras"
    if not path.exists():
        code = SAVE_MODEL.format(n=N_FEATURES)
        made = subprocess.run([bench.PYTHON, "-c", code, str(path)], **bench.QUIET)
        if made.returncode:
            raise SystemExit(f"could not save the model:\n{made.stderr[-3000:]}")
    return path


def run_case(case: str, source: str, model: Path, out: Path, log: Path) -> dict[str, Any]:
    """One measured run of `case` into a fresh output folder."""
    target = out / f"work-{case}"
    shutil.rmtree(target, ignore_errors=True)
    command = [bench.BATCHPREDICT, "predict", "--model", str(model), "--input_file", source]
    command += ["--output_dir", str(target), "--keep_columns", "id", "--no_progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = bench.measure(command, log)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run, once reaped
    result.pop("stdout", None)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    result["cpu_seconds"] = round(used, 3)
    return result


def summarize(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """Median seconds and max peak RSS over the rounds; the first failure if any failed."""
    failed = [r["status"] for r in runs if r["status"] != "ok"]
    if failed:
        return {"status": failed[0], "runs": runs}
    seconds = statistics.median(r["wall_seconds"] for r in runs)
    return {
        "status": "ok",
        "seconds": round(seconds, 3),
        "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 3),
        "rows_per_second": round(rows / seconds),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": runs,
    }


def markdown(report: dict[str, Any]) -> str:
    """The two cases as a Markdown table, and their ratio."""
    lines = [
        f"{report['files']:,} {report['format']} files × {report['rows_per_file']:,} rows "
        f"against one file of {report['rows']:,} rows, median of {report['repeat']} rounds",
        "",
        "| case | seconds | CPU seconds | rows/s | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for case in CASES:
        found = report["cases"][case]
        if found["status"] != "ok":
            lines.append(f"| {case} | {found['status'].replace('|', '/')} | | | |")
            continue
        lines.append(
            f"| {case} | {found['seconds']:.2f} | {found['cpu_seconds']:.2f} | "
            f"{found['rows_per_second']:,} | {found['peak_rss_mib']:,.0f} |"
        )
    ratio, cpu = report["ratio"], report["cpu_ratio"]
    lines += ["", f"many ÷ one = {'—' if ratio is None else f'{ratio:.2f}×'}"]
    lines += [f"(CPU seconds: {'—' if cpu is None else f'{cpu:.2f}×'})", ""]
    return "\n".join(lines)


def _ratio(cases: dict[str, dict[str, Any]], key: str) -> float:
    return round(cases["many"][key] / cases["one"][key], 2)


def main() -> None:
    args = parse_args()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    many, one, rows = cached_inputs(args)
    model = cached_model(args.out)
    sources = {"many": many, "one": str(one)}
    for path in (*sorted(Path(many).parent.iterdir()), one):
        bench.warm_cache(path)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for round_ in range(args.repeat):
        for case in CASES if round_ % 2 == 0 else CASES[::-1]:
            log = args.out / "logs" / f"{case}-{round_}"
            runs[case].append(run_case(case, sources[case], model, args.out, log))
            print(f"{case} round {round_}: {json.dumps(runs[case][-1])}", flush=True)
    cases = {case: summarize(found, rows) for case, found in runs.items()}
    ok = all(found["status"] == "ok" for found in cases.values())
    report = {
        "command": " ".join(["python", "benchmarks/small_files.py", *sys.argv[1:]]),
        "files": args.files,
        "rows_per_file": args.rows_per_file,
        "rows": rows,
        "format": args.format,
        "repeat": args.repeat,
        "machine": bench.machine(),
        "versions": bench.versions(),
        "cases": cases,
        "ratio": _ratio(cases, "seconds") if ok else None,
        "cpu_ratio": _ratio(cases, "cpu_seconds") if ok else None,
    }
    (args.out / "small_files.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "small_files.md").write_text(markdown(report))
    print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
