"""polars decodes what fastavro decodes, for every schema the Avro reader gives it to.

The reader chooses polars per file from the writer schema and does not check its values
when it runs (see formats/avro/decode.py); these tests are the proof that it may: on the
corpora's Avro files and on generated schemas and values, the batches (values, types and
sizes) and the errors are those of the fastavro path, and polars never needs its help.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpredict.errors import BatchPredictError
from batchpredict.formats import ReadOptions
from batchpredict.formats.avro import AvroReader, files
from batchpredict.formats.avro.container import Block, Header, read_header
from batchpredict.formats.avro.decode import FastavroDecoder, PolarsDecoder, decoder_for

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
Outcome = tuple[list[tuple[pa.Schema, Any]], str | None]


class Fallbacks:
    """The runs of blocks a PolarsDecoder handed to fastavro."""

    def __init__(self) -> None:
        self.runs = 0

    def decoder(self, path: str, header: Header, schema: pa.Schema) -> Any:
        decoder = decoder_for(path, header, schema)
        if isinstance(decoder, PolarsDecoder):
            slow = decoder._slow.decode

            def fallback(blocks: list[Block], before: int) -> pa.Table | None:
                self.runs += bool(blocks)
                return slow(blocks, before)

            decoder._slow.decode = fallback  # type: ignore[method-assign]
        return decoder


def comparable(value: Any) -> Any:
    """`value` with NaN (not equal to itself) spelled out, lists and dicts gone through."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [comparable(item) for item in value]
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    return value


def read_with(path: Path, decoder: Callable[..., Any], chunk_size: int) -> Outcome:
    """The batches (schema and rows) read with `decoder`, and the error that ended them."""
    original = files.decoder_for
    files.decoder_for = decoder  # type: ignore[assignment]
    got: list[tuple[pa.Schema, Any]] = []
    try:
        for batch in AvroReader(str(path), ReadOptions(chunk_size=chunk_size)).iter_batches():
            got.append((batch.schema, comparable(batch.to_pylist(maps_as_pydicts="strict"))))
    except BatchPredictError as exc:
        return got, f"{type(exc).__name__}: {exc}"
    finally:
        files.decoder_for = original  # type: ignore[assignment]
    return got, None


def uses_polars(path: Path) -> bool:
    with path.open("rb") as stream:
        header = read_header(stream)
    return isinstance(decoder_for(str(path), header, pa.schema([])), PolarsDecoder)


def assert_same_as_fastavro(path: Path, chunk_size: int) -> None:
    fallbacks = Fallbacks()
    fast = read_with(path, fallbacks.decoder, chunk_size)
    assert fast == read_with(path, FastavroDecoder, chunk_size)
    if fast[1] is None:
        assert fallbacks.runs == 0, "polars could not decode a valid file"


# -- the corpora ---------------------------------------------------------------------------
def corpora_files() -> list[Path]:
    return sorted(CORPORA.rglob("*.avro")) if CORPORA.is_dir() else []


def readable_header(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            read_header(stream)
    except Exception:  # noqa: BLE001 - files that are not containers are not for this test
        return False
    return True


@pytest.mark.corpora
@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"no corpora folder at {CORPORA}")
def test_corpora_files_polars_reads_read_as_fastavro_reads_them() -> None:
    polars_files = [p for p in corpora_files() if readable_header(p) and uses_polars(p)]
    # weather*.avro (4 codecs), the js tests' person files and tensorflow-io's weather
    assert len(polars_files) >= 5, polars_files
    for path in polars_files:
        for chunk_size in (1, 3, 1000):
            assert_same_as_fastavro(path, chunk_size)


# -- generated schemas and values ----------------------------------------------------------
_LONG = (-(2**63), 2**63 - 1)
_INT = (-(2**31), 2**31 - 1)
#: The leaf types polars is given, and the values written for them (any the type holds,
#: out of the range fastavro turns into dates and datetimes too).
LEAVES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "long": ("long", st.integers(*_LONG)),
    "int": ("int", st.integers(*_INT)),
    "float": ("float", st.floats(width=32)),
    "double": ("double", st.floats()),
    "string": ("string", st.text(max_size=20)),
    "bytes": ("bytes", st.binary(max_size=20)),
    **{
        logical: ({"type": "long", "logicalType": logical}, st.integers(*_LONG))
        for logical in (
            "timestamp-millis",
            "timestamp-micros",
            "local-timestamp-millis",
            "local-timestamp-micros",
        )
    },
}
#: Leaves only a record's own fields may have (polars reads them as fastavro does there).
TOP_LEAVES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "boolean": ("boolean", st.booleans()),
    "date": ({"type": "int", "logicalType": "date"}, st.integers(-800_000, 3_000_000)),
}


def field_types(top: bool, depth: int) -> st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]]:
    """An Avro type polars is given, with a strategy for its values."""
    leaves = {**LEAVES, **TOP_LEAVES} if top else LEAVES
    plain = st.sampled_from(sorted(leaves)).map(lambda name: leaves[name])
    if depth:
        arrays = field_types(False, depth - 1).map(
            lambda item: ({"type": "array", "items": item[0]}, st.lists(item[1], max_size=4))
        )
        plain = plain | arrays
    nullable = st.tuples(plain, st.booleans()).map(
        lambda pair: (
            ["null", pair[0][0]] if pair[1] else [pair[0][0], "null"],
            st.none() | pair[0][1],
        )
    )
    return plain | nullable


@st.composite
def files_and_rows(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kinds = draw(st.lists(field_types(top=True, depth=2), min_size=1, max_size=4))
    schema = {
        "type": "record",
        "name": "Row",
        "fields": [{"name": f"c{i}", "type": kind} for i, (kind, _) in enumerate(kinds)],
    }
    row = st.fixed_dictionaries({f"c{i}": values for i, (_, values) in enumerate(kinds)})
    return schema, draw(st.lists(row, max_size=40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    written=files_and_rows(),
    codec=st.sampled_from(["null", "deflate", "snappy", "bzip2", "xz"]),
    sync_interval=st.sampled_from([1, 100, 16000]),
    chunk_size=st.sampled_from([1, 7, 1000]),
)
def test_generated_files_read_as_fastavro_reads_them(
    tmp_path_factory: pytest.TempPathFactory,
    written: tuple[dict[str, Any], list[dict[str, Any]]],
    codec: str,
    sync_interval: int,
    chunk_size: int,
) -> None:
    schema, rows = written
    out = io.BytesIO()
    fastavro.writer(out, schema, rows, codec=codec, sync_interval=sync_interval)
    path = tmp_path_factory.mktemp("gen") / "gen.avro"
    path.write_bytes(out.getvalue())
    assert uses_polars(path)
    assert_same_as_fastavro(path, chunk_size)
