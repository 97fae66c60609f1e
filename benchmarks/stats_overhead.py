"""What run statistics cost: batchpredict on bench.py's inputs (int64 id, 30 float32
features, 1M rows by default), the same command with statistics on (`--stats_file`) and
off (`--no_stats`), alternating, per format. See benchmarks/README.md.

    python benchmarks/stats_overhead.py [--rows 1000000] [--formats csv,parquet,jsonl,avro]
                                        [--repeat 3] [--out benchmarks/out]

Prints each run, then per format the median wall seconds of each and the overhead in
percent of the run without statistics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # bench.py is beside this script, not in a package
    BATCHPREDICT,
    FORMATS,
    cached_input,
    cached_model,
    measure,
    remove,
    warm_cache,
)

MODES = ("stats_off", "stats_on")


def command(mode: str, data: Path, model: Path, work: Path, fmt: str) -> list[str]:
    output = work / f"{fmt}-{mode}{FORMATS[fmt]}"
    remove(output)
    base = [BATCHPREDICT, "predict", "--model", str(model), "--input_file", str(data)]
    base += ["--output_file", str(output), "--keep_columns", "id", "--no_progress"]
    if mode == "stats_off":
        return [*base, "--no_stats"]
    return [*base, "--stats_file", str(work / f"{fmt}-stats.json")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    work, logs = args.out / "work", args.out / "logs"
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    model = cached_model(args.out)
    summary = {}
    for fmt in args.formats.split(","):
        data = cached_input(args.out, args.rows, fmt)
        warm_cache(data)
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(args.repeat):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                result = measure(command(mode, data, model, work, fmt), logs / f"{fmt}-{mode}")
                result.pop("stdout", None)
                print(f"{fmt} {mode} round {round_}: {json.dumps(result)}", flush=True)
                if result["status"] != "ok":
                    raise SystemExit(result["status"])
                seconds[mode].append(result["wall_seconds"])
        off, on = (statistics.median(seconds[mode]) for mode in MODES)
        overhead = 100 * (on - off) / off
        summary[fmt] = {"stats_off": off, "stats_on": on, "overhead_percent": overhead}
    print("| format | stats off s | stats on s | overhead |")
    print("|---|---:|---:|---:|")
    for fmt, found in summary.items():
        print(
            f"| {fmt} | {found['stats_off']:.2f} | {found['stats_on']:.2f} | "
            f"{found['overhead_percent']:+.1f}% |"
        )


if __name__ == "__main__":
    main()
