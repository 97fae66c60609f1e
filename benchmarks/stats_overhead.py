"""What run statistics cost: batchpredict on bench.py's inputs (int64 id, 30 float32
features, 1M rows by default), the same command with statistics (`--stats_file`) and
without (the default), alternating, per format. See benchmarks/README.md.

    python benchmarks/stats_overhead.py [--rows 1000000] [--formats csv,parquet,jsonl,avro]
                                        [--repeat 3] [--out benchmarks/out]

Prints each run, then per format the median wall seconds and CPU seconds (user + system,
of the process and its children: less swayed by a shared machine's load than wall time)
of each, and the overhead in percent of the run without statistics.
"""

from __future__ import annotations

import argparse
import json
import resource
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
        return base
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
        wall: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(args.repeat):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                before = _children_cpu()
                result = measure(command(mode, data, model, work, fmt), logs / f"{fmt}-{mode}")
                result["cpu_seconds"] = round(_children_cpu() - before, 3)
                result.pop("stdout", None)
                print(f"{fmt} {mode} round {round_}: {json.dumps(result)}", flush=True)
                if result["status"] != "ok":
                    raise SystemExit(result["status"])
                wall[mode].append(result["wall_seconds"])
                cpu[mode].append(result["cpu_seconds"])
        summary[fmt] = {
            kind: [statistics.median(found[mode]) for mode in MODES]
            for kind, found in (("wall", wall), ("cpu", cpu))
        }
    print("| format | wall off s | wall on s | wall +% | CPU off s | CPU on s | CPU +% |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for fmt, found in summary.items():
        cells = []
        for off, on in (found["wall"], found["cpu"]):
            cells += [f"{off:.2f}", f"{on:.2f}", f"{100 * (on - off) / off:+.1f}%"]
        print(f"| {fmt} | {' | '.join(cells)} |")


def _children_cpu() -> float:
    """User + system seconds of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
