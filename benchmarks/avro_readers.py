"""batchpredict's Avro reader against fastavro's record-by-record reader, on one file.

    python benchmarks/avro_readers.py benchmarks/out/data_1000000.avro

Two rounds, alternating; prints seconds and the ratio of each round.
"""

from __future__ import annotations

import sys
import time

import fastavro

from batchpredict.formats.base import ReadOptions
from batchpredict.formats.registry import reader_for


def main() -> None:
    """Time both readers over every row of the file given."""
    path = sys.argv[1]
    for _ in range(2):
        start = time.perf_counter()
        ours = sum(
            batch.num_rows
            for batch in reader_for(path, None, ReadOptions(chunk_size=65536)).iter_batches()
        )
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with open(path, "rb") as handle:
            records = sum(1 for _ in fastavro.reader(handle))
        records_seconds = time.perf_counter() - start
        print(
            f"batchpredict reader {ours_seconds:.2f} s ({ours} rows), fastavro records "
            f"{records_seconds:.2f} s ({records} rows): {records_seconds / ours_seconds:.1f}x"
        )


if __name__ == "__main__":
    main()
