"""Wall time, rows/s and peak RSS of batchpredict against the seed's pandas script, Ray Data
and batchpredict's own stages in isolation, per input format. See benchmarks/README.md.

    python benchmarks/bench.py [--rows 1000000] [--formats csv,parquet,jsonl,avro]
                               [--contenders batchpredict,seed,seed_tuned,ray,ray_engine,stages]
                               (also batchpredict_tfdata: with --prefetch tfdata)
                               [--repeat 1] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
#: The installed console script next to this interpreter: batchpredict as a user runs it.
BATCHPREDICT = str(Path(sys.executable).with_name("batchpredict"))
N_FEATURES = 30
#: Codec of the generated Avro inputs (batchpredict's own Avro writer uses deflate).
AVRO_CODEC = "null"
SAMPLE_SECONDS = 0.05
QUIET: dict[str, Any] = {"capture_output": True, "text": True}
FORMATS = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl", "avro": ".avro"}
#: `batchpredict_tfdata` is batchpredict with `--prefetch tfdata` forced (on the CPU the
#: default is `numpy`): run it with `--contenders batchpredict,batchpredict_tfdata`.
END_TO_END = ("batchpredict", "batchpredict_tfdata", "seed", "seed_tuned", "ray", "ray_engine")
#: Contenders that need `import ray`.
NEEDS_RAY = ("ray", "ray_engine")
STAGES = ("read", "predict", "write", "startup")
#: Not a contender of its own: runs whenever batchpredict does, to measure its start-up.
ONE_ROW = "batchpredict_1row"
#: The same for `--engine ray`: its start-up (Ray's included) on a 1-row file.
RAY_ONE_ROW = "ray_engine_1row"
LABELS = {
    "batchpredict": "batchpredict (end to end)",
    "batchpredict_tfdata": "batchpredict `--prefetch tfdata`",
    ONE_ROW: "batchpredict on a 1-row file (= its start-up)",
    "seed": "seed script (pandas, `predict` batch 32)",
    "seed_tuned": "seed script, `batch_size=8192`",
    "ray": "Ray Data (1 actor, batch 8192)",
    "ray_engine": "batchpredict `--engine ray` (local Ray)",
    RAY_ONE_ROW: "`--engine ray` on a 1-row file (= its start-up)",
    "read": "stage: read (our reader)",
    "predict": "stage: predict (tf.function [8192, 30])",
    "write": "stage: write (our writer)",
    "startup": "stage: start-up (import TF + load + 1 batch)",
}
VERSIONS = ("tensorflow", "keras", "pyarrow", "pandas", "numpy", "fastavro", "batchpredict", "ray")


def parse_args() -> argparse.Namespace:
    """The command line; `stages` in --contenders stands for read,predict,write,startup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument(
        "--contenders", default="batchpredict,seed,seed_tuned,ray,ray_engine,stages"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is reported")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.formats = args.formats.split(",")
    names = args.contenders.replace("stages", ",".join(STAGES)).split(",")
    args.contenders = [name for name in (*END_TO_END, *STAGES) if name in names]
    unknown = set(names) - set(args.contenders) | set(args.formats) - set(FORMATS)
    if unknown or args.rows < 1 or args.repeat < 1:
        parser.error(f"unknown or invalid: {sorted(unknown) or 'rows/repeat must be >= 1'}")
    return args


# -- inputs ----------------------------------------------------------------------------------
def write_input(path: Path, rows: int, fmt: str) -> None:
    """Write `rows` rows of int64 `id` and float32 `f0..f29` (seeded normal values)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    columns = {"id": np.arange(rows, dtype=np.int64)}
    columns.update({f"f{j}": rng.normal(size=rows).astype(np.float32) for j in range(N_FEATURES)})
    table = pa.table(columns)
    batches = table.to_batches(max_chunksize=65536)
    if fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "jsonl":
        with path.open("w") as handle:
            for batch in batches:
                batch.to_pandas().to_json(handle, orient="records", lines=True)
    else:
        import fastavro

        fields = [{"name": "id", "type": "long"}]
        fields += [{"name": f"f{j}", "type": "float"} for j in range(N_FEATURES)]
        schema = {"type": "record", "name": "Row", "fields": fields}
        records = (record for batch in batches for record in batch.to_pylist())
        with path.open("wb") as handle:
            fastavro.writer(handle, schema, records, codec=AVRO_CODEC)


def cached_input(out: Path, rows: int, fmt: str) -> Path:
    """The input file for rows+format under `out`, written first if absent."""
    path = out / f"data_{rows}{FORMATS[fmt]}"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        partial = path.with_name(f"_partial_{path.name}")
        write_input(partial, rows, fmt)
        partial.replace(path)
    return path


def cached_model(out: Path) -> Path:
    """The Keras MLP 30->256->256->1, saved once (in a child: the parent stays light)."""
    path = out / "mlp.keras"
    if not path.exists():
        made = subprocess.run([PYTHON, str(HERE / "stages.py"), "model", str(path)], **QUIET)
        if made.returncode:
            raise SystemExit(f"could not save the model:\n{made.stderr[-3000:]}")
    return path


def warm_cache(path: Path) -> None:
    """Read a file once so that every contender finds it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


# -- measuring -------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 once it is gone or a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss_kib(root: int) -> int:
    """VmRSS summed over `root` and all its live descendants, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(name))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += rss_kib(pid)
        pending.extend(children.get(pid, ()))
    return total


def measure(command: list[str], log: Path) -> dict[str, Any]:
    """Run `command`: wall seconds, peak RSS MiB of its process tree, status, stdout."""
    with log.with_suffix(".out").open("wb") as out, log.with_suffix(".err").open("wb") as err:
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=err)
        except OSError as exc:
            return {"status": f"failed: cannot start {command[0]}: {exc}"}
        pidfd = os.pidfd_open(proc.pid)
        exited = select.poll()
        exited.register(pidfd, select.POLLIN)
        peak_kib = 0
        while not exited.poll(SAMPLE_SECONDS * 1000):
            peak_kib = max(peak_kib, tree_rss_kib(proc.pid))
        wall = time.perf_counter() - started
        os.close(pidfd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss catches a spike of the main process that fell between two samples.
    peak_kib = max(peak_kib, usage.ru_maxrss)
    result = {"wall_seconds": round(wall, 3), "peak_rss_mib": round(peak_kib / 1024, 1)}
    if proc.returncode:
        lines = log.with_suffix(".err").read_text(errors="replace").strip().splitlines()
        last = lines[-1][:300] if lines else "(no output)"
        return {"status": f"failed: exit {proc.returncode}: {last}", **result}
    return {"status": "ok", "stdout": log.with_suffix(".out").read_text(), **result}


def ray_installed() -> bool:
    """Whether `import ray` works in this interpreter."""
    return subprocess.run([PYTHON, "-c", "import ray"], **QUIET).returncode == 0


def help_seconds(logs: Path) -> float | None:
    """Minimum wall time of `batchpredict --help` over 3 runs (None if it fails)."""
    runs = [measure([BATCHPREDICT, "--help"], logs / f"help-{i}") for i in range(3)]
    ok = [r["wall_seconds"] for r in runs if r["status"] == "ok"]
    return min(ok) if len(ok) == len(runs) else None


# -- contenders ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What every contender of one format needs."""

    fmt: str
    rows: int
    data: Path
    one_row: Path
    model: Path
    work: Path


def output_path(name: str, setup: Setup) -> Path:
    """Where a contender writes: our own format, or CSV for Avro where pandas/Ray have none."""
    if name in ("ray_engine", RAY_ONE_ROW):
        return setup.work / f"{setup.fmt}-{name}"  # a folder of part files
    ours = name in (*STAGES, "batchpredict", "batchpredict_tfdata", ONE_ROW)
    extension = FORMATS[setup.fmt] if ours or setup.fmt != "avro" else ".csv"
    return setup.work / f"{setup.fmt}-{name}{extension}"


def command_for(name: str, setup: Setup) -> list[str]:
    """The command line of one contender."""
    data, model, output = str(setup.data), str(setup.model), str(output_path(name, setup))
    predict = [BATCHPREDICT, "predict", "--model", model, "--input_file"]
    options = ["--output_file", output, "--keep_columns", "id", "--no_progress"]
    seed = [PYTHON, str(HERE / "seed_script.py"), data, output, model]
    stage = [PYTHON, str(HERE / "stages.py"), name, model]
    ray_options = [*options[2:], "--engine", "ray"]
    commands = {
        "batchpredict": [*predict, data, *options],
        "batchpredict_tfdata": [*predict, data, *options, "--prefetch", "tfdata"],
        ONE_ROW: [*predict, str(setup.one_row), *options],
        "seed": seed,
        "seed_tuned": [*seed, "8192"],
        "ray": [PYTHON, str(HERE / "ray_script.py"), data, output, model],
        "ray_engine": [*predict, data, "--output_dir", output, *options[2:], "--engine", "ray"],
        RAY_ONE_ROW: [*predict, str(setup.one_row), "--output_dir", output, *ray_options],
        "write": [*stage, output, str(setup.rows)],
    }
    return commands.get(name, [*stage, data, str(setup.rows)])


def remove(path: Path) -> None:
    """Delete a previous output, file or (Ray's) directory."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_contender(name: str, setup: Setup, log: Path) -> dict[str, Any]:
    """One measured run; `seconds` is the wall time, or for a stage its own inner time."""
    remove(output_path(name, setup))
    result = measure(command_for(name, setup), log)
    stdout = result.pop("stdout", "")
    if result["status"] == "ok" and name in STAGES:
        result["stage"] = json.loads(stdout.strip().splitlines()[-1])
        result["seconds"] = round(result["stage"]["seconds"], 3)
    elif result["status"] == "ok":
        result["seconds"] = result["wall_seconds"]
    ours_or_ray = ("batchpredict", "batchpredict_tfdata", ONE_ROW, "ray_engine", RAY_ONE_ROW)
    if result["status"] == "ok" and name in ours_or_ray:
        result["reported_seconds"] = reported_seconds(log.with_suffix(".err"))
        result["after_startup_seconds"] = after_startup_seconds(log.with_suffix(".err"))
    return result


def log_events(stderr: Path) -> dict[str, dict[str, Any]]:
    """batchpredict's JSON log lines (off a terminal), the last of each event."""
    events = {}
    for line in stderr.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            events[record.get("event", "")] = record
    return events


def after_startup_seconds(stderr: Path) -> float | None:
    """A run's processing time after its start-up, from its own log: for the local engine,
    `run started` (logged once the model is loaded) to `run finished`; for `--engine ray`,
    the `ray scoring` seconds (first model actor ready to every part written) plus its
    commit (`ray scoring` to `run finished`). Both include reading, scoring, writing and
    committing, and exclude imports, Ray's start-up and loading the model."""
    events = log_events(stderr)
    finished = events.get("run finished")
    if finished is None:
        return None

    def at(record: dict[str, Any]) -> float:
        return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()

    scoring = events.get("ray scoring")
    if scoring is not None:
        return round(scoring["seconds"] + at(finished) - at(scoring), 3)
    started = events.get("run started")
    return None if started is None else round(at(finished) - at(started), 3)


def reported_seconds(stderr: Path) -> float | None:
    """The `seconds` of batchpredict's own "run finished" log line (JSON off a terminal)."""
    for line in stderr.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"run finished"' in line:
            return json.loads(line).get("seconds")
    return None


def summarize(name: str, runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """Median seconds and max peak RSS over the rounds; the first failure if any failed."""
    failed = [r["status"] for r in runs if r["status"] != "ok"]
    if failed:
        return {"status": failed[0], "runs": runs}
    seconds = statistics.median(r["seconds"] for r in runs)
    summary: dict[str, Any] = {
        "status": "ok",
        "seconds": round(seconds, 3),
        "rows_per_second": (
            None if name in ("startup", ONE_ROW, RAY_ONE_ROW) else round(rows / seconds)
        ),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": runs,
    }
    if name in STAGES:
        medians = {k: statistics.median(r["stage"][k] for r in runs) for k in runs[0]["stage"]}
        summary["stage"] = {k: round(value, 3) for k, value in medians.items()}
    for key in ("reported_seconds", "after_startup_seconds"):
        found = [r.get(key) for r in runs]
        if None not in found:
            summary[key] = statistics.median(found)
    return summary


def derived(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Adds speed-ups to `results`; returns batchpredict's processing time and the stage sum."""
    seconds = {k: v["seconds"] for k, v in results.items() if v["status"] == "ok"}
    ours = seconds.get("batchpredict")
    for name in END_TO_END:
        if ours is not None and name in seconds:
            results[name]["speedup"] = round(seconds[name] / ours, 2)
    stages = [seconds[k] for k in ("read", "predict", "write") if k in seconds]
    complete = len(stages) == 3
    startup = seconds.get(ONE_ROW)
    ray, ray_startup = seconds.get("ray_engine"), seconds.get(RAY_ONE_ROW)
    return {
        "startup_seconds": startup,
        "processing_seconds": None if None in (ours, startup) else round(ours - startup, 3),
        "ray_startup_seconds": ray_startup,
        "ray_processing_seconds": (
            None if ray is None or ray_startup is None else round(ray - ray_startup, 3)
        ),
        "stage_sum_seconds": round(sum(stages), 3) if complete else None,
        "stage_max_seconds": max(stages) if complete else None,
    }


def bench_format(fmt: str, args: argparse.Namespace, model: Path, ray_ok: bool) -> dict:
    """All contenders on one format, alternating, `--repeat` rounds (odd rounds reversed)."""
    data = cached_input(args.out, args.rows, fmt)
    one_row = cached_input(args.out, 1, fmt)
    warm_cache(data)
    plan = [n for n in args.contenders if n not in NEEDS_RAY or ray_ok]
    if "batchpredict" in plan:
        plan.insert(plan.index("batchpredict") + 1, ONE_ROW)
    if "ray_engine" in plan:
        plan.insert(plan.index("ray_engine") + 1, RAY_ONE_ROW)
    setup = Setup(fmt, args.rows, data, one_row, model, args.out / "work")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    for round_ in range(args.repeat):
        for name in plan if round_ % 2 == 0 else plan[::-1]:
            run = run_contender(name, setup, args.out / "logs" / f"{fmt}-{name}-{round_}")
            runs[name].append(run)
            print(f"{fmt} {name} round {round_}: {json.dumps(run)}", flush=True)
    results = {name: summarize(name, found, args.rows) for name, found in runs.items()}
    for name in NEEDS_RAY:
        if name in args.contenders and not ray_ok:
            results[name] = {"status": "skipped: ray not installed"}
    return {"contenders": results, **derived(results)}


# -- report ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPUs, CPU model, memory and load of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    """Python and the libraries that matter here."""
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def ratio(value: float | None) -> str:
    """A speed-up as "N.N×", or "—"."""
    return "—" if value is None else f"{value:.1f}×"


def table_row(name: str, result: dict[str, Any]) -> str:
    """One Markdown table row."""
    if result["status"] != "ok":
        return f"| {LABELS[name]} | {result['status'].replace('|', '/')} | | | |"
    rate = result["rows_per_second"]
    return (
        f"| {LABELS[name]} | {result['seconds']:.2f} | {'—' if rate is None else f'{rate:,}'} | "
        f"{result['peak_rss_mib']:,.0f} | {ratio(result.get('speedup'))} |"
    )


def format_markdown(fmt: str, rows: int, found: dict[str, Any]) -> str:
    """One format's table, then the notes on where batchpredict's time goes."""
    results = found["contenders"]
    lines = [
        f"### {fmt} ({rows:,} rows)",
        "",
        "| contender | seconds | rows/s | peak RSS MiB | batchpredict speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(table_row(name, results[name]) for name in LABELS if name in results),
        "",
    ]
    if fmt == "avro":
        lines += ["The seed script and Ray write CSV for Avro; batchpredict writes Avro.", ""]
    return "\n".join([*lines, *time_notes(fmt, found), ""])


def time_notes(fmt: str, found: dict[str, Any]) -> list[str]:
    """batchpredict's processing time against its stages, and what start-up is made of."""
    results, notes = found["contenders"], []
    processing, stage_sum = found["processing_seconds"], found["stage_sum_seconds"]
    if processing is not None:
        ours = results["batchpredict"]
        notes.append(
            f"- batchpredict processing: {processing:.2f} s = wall {ours['seconds']:.2f} s − "
            f"start-up {found['startup_seconds']:.2f} s (its wall time on a 1-row {fmt} file)."
        )
        if ours.get("reported_seconds") is not None:
            notes.append(
                f"- batchpredict's own `run finished` seconds: {ours['reported_seconds']:.2f} "
                "(timed by batchpredict from the start of its pipeline, after its imports)."
            )
    if stage_sum is not None:
        parts = " + ".join(f"{k} {results[k]['seconds']:.2f}" for k in ("read", "predict", "write"))
        notes.append(
            f"- Stages alone: {parts} = {stage_sum:.2f} s (max {found['stage_max_seconds']:.2f} s)."
        )
    if processing is not None and stage_sum is not None:
        notes.append(
            "- Start-up noise exceeds the processing time at this size: no ratios."
            if processing <= 0
            else f"- Processing ÷ stage sum = {processing / stage_sum:.2f}, ÷ stage max = "
            f"{processing / found['stage_max_seconds']:.2f} (1.00 against the max would be "
            "perfect overlap of read, predict and write)."
        )
    notes += ray_notes(found)
    if results.get("startup", {}).get("status") == "ok":
        s = results["startup"]["stage"]
        notes.append(
            f"- Start-up in one process: import TF {s['import_seconds']:.2f} + model load "
            f"{s['load_seconds']:.2f} + first batch {s['first_batch_seconds']:.2f} = "
            f"{s['seconds']:.2f} s."
        )
    return notes


def ray_notes(found: dict[str, Any]) -> list[str]:
    """`--engine ray` against the local engine after start-up, as each run measured it
    (`after_startup_seconds`) and from walls (wall − 1-row wall, noisy), and their peak
    RSS."""
    results = found["contenders"]
    ours, ray = results.get("batchpredict", {}), results.get("ray_engine", {})
    if ours.get("status") != "ok" or ray.get("status") != "ok":
        return []
    rows = round(ray["rows_per_second"] * ray["seconds"])
    memory = ray["peak_rss_mib"] / ours["peak_rss_mib"]
    notes = []
    local_in, ray_in = ours.get("after_startup_seconds"), ray.get("after_startup_seconds")
    if local_in and ray_in:
        notes.append(
            f"- After start-up, timed inside each run: batchpredict {rows / local_in:,.0f} "
            f"rows/s ({local_in:.2f} s, `run started` to `run finished`), `--engine ray` "
            f"{rows / ray_in:,.0f} rows/s ({ray_in:.2f} s, first model actor ready to "
            f"`run finished`): ray ÷ local time {ray_in / local_in:.2f}×; peak RSS "
            f"{ray['peak_rss_mib']:,.0f} ÷ {ours['peak_rss_mib']:,.0f} MiB = {memory:.2f}×."
        )
    local, by_walls = found["processing_seconds"], found.get("ray_processing_seconds")
    if by_walls is not None and local is not None and by_walls > 0 and local > 0:
        notes.append(
            f"- After start-up from walls (noisy): batchpredict {rows / local:,.0f} rows/s "
            f"({local:.2f} s), `--engine ray` {rows / by_walls:,.0f} rows/s ({by_walls:.2f} s "
            f"= wall {ray['seconds']:.2f} s − start-up {found['ray_startup_seconds']:.2f} s): "
            f"ray ÷ local time {by_walls / local:.2f}×."
        )
    return notes


def report_markdown(report: dict[str, Any]) -> str:
    """The whole run as Markdown: context, then one table per format."""
    m, v = report["machine"], report["versions"]
    help_time = report["help_seconds"]
    lines = [
        f"Date: {report['date']}  ",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB; "
        f"load average (1, 5, 15 min) at start {m['load_average_at_start']}, "
        f"at end {m['load_average_at_end']}  ",
        "Versions: " + ", ".join(f"{k} {value}" for k, value in v.items()) + "  ",
        f"`batchpredict --help`: {'failed' if help_time is None else f'{help_time:.2f} s'} "
        "(min of 3)",
        "",
        "Seconds are wall time of the whole process (start-up included), median over "
        "--repeat rounds; for the `stage:` rows, the stage's own time inside its process. "
        "Peak RSS sums VmRSS over the process tree every 50 ms. Speed-up = contender "
        f"seconds ÷ batchpredict seconds. Avro inputs use the {AVRO_CODEC} codec.",
        "",
    ]
    for fmt, found in report["formats"].items():
        lines.append(format_markdown(fmt, report["rows"], found))
    return "\n".join(lines)


def main() -> None:
    """Generate inputs, run every contender per format, print and save the results."""
    args = parse_args()
    for folder in ("logs", "work"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    model = cached_model(args.out)
    ray_ok = any(name in args.contenders for name in NEEDS_RAY) and ray_installed()
    report: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
        "rows": args.rows,
        "repeat": args.repeat,
        "avro_input_codec": AVRO_CODEC,
        "machine": machine(),
        "versions": versions(),
        "help_seconds": help_seconds(args.out / "logs"),
        "formats": {},
    }
    for fmt in args.formats:
        report["formats"][fmt] = bench_format(fmt, args, model, ray_ok)
        print(format_markdown(fmt, args.rows, report["formats"][fmt]), flush=True)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(report_markdown(report))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
