"""The same run with its input (and output) in an S3 bucket instead of on local disk: wall
time, rows/s and peak RSS, against moto's S3 server on the loopback interface.

    python benchmarks/object_storage.py [--rows 1000000] [--formats parquet,csv]
                                        [--out benchmarks/out]

moto is a Python server on the same two cores, so the ratios bound what the S3 code path
costs here (listing, HEAD, ranged GETs, multipart upload, server-side copy) rather than
what a real bucket's network does; the peak RSS shows that objects are streamed, not
downloaded whole. Needs the test extra (moto[server], boto3).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the benchmark's own helpers: inputs, model, measuring

BUCKET = "bench"
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """moto_server on a free loopback port; the process and its endpoint URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto_server did not start") from None
            time.sleep(0.2)


def run(name: str, command: list[str], rows: int, log: Path) -> dict[str, Any]:
    result = bench.measure(command, log)
    result.pop("stdout", None)
    if result["status"] == "ok":
        result["rows_per_second"] = round(rows / result["wall_seconds"])
    print(f"  {name}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="parquet,csv")
    parser.add_argument("--out", type=Path, default=bench.HERE / "out")
    args = parser.parse_args()
    import boto3

    args.out.mkdir(parents=True, exist_ok=True)
    model = bench.cached_model(args.out)
    proc, endpoint = start_server()
    os.environ.update({**ENV, "AWS_ENDPOINT_URL": endpoint})
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    report: dict[str, Any] = {"rows": args.rows, "machine": bench.machine(), "formats": {}}
    try:
        for fmt in args.formats.split(","):
            source = bench.cached_input(args.out, args.rows, fmt)
            key = f"exports/{source.name}"
            client.upload_file(str(source), BUCKET, key)
            bench.warm_cache(source)
            local_out = args.out / f"s3bench_out{bench.FORMATS[fmt]}"
            common = [bench.BATCHPREDICT, "predict", "--model", str(model)]
            tail = ["--keep_columns", "id", "--no_progress"]
            commands = {
                "local file -> local file": [
                    *common, "--input_file", str(source), "--output_file", str(local_out), *tail,
                ],
                "s3 object -> local file": [
                    *common, "--input_file", f"s3://{BUCKET}/{key}",
                    "--output_file", str(local_out), *tail,
                ],
                "s3 object -> s3 object": [
                    *common, "--input_file", f"s3://{BUCKET}/{key}",
                    "--output_file", f"s3://{BUCKET}/scored/{source.name}", *tail,
                ],
            }  # fmt: skip
            print(f"{fmt}, {args.rows} rows:", flush=True)
            results = {
                name: run(name, command, args.rows, args.out / f"s3bench_{fmt}_{i}")
                for i, (name, command) in enumerate(commands.items())
            }
            base = results["local file -> local file"].get("wall_seconds")
            for result in results.values():
                if base and result.get("wall_seconds"):
                    result["time_vs_local"] = round(result["wall_seconds"] / base, 2)
            report["formats"][fmt] = results
            local_out.unlink(missing_ok=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    path = args.out / "object_storage.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
