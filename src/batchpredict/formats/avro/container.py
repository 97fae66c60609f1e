"""Avro object container files: the header, then blocks, each read and decompressed within
bounds, whatever the file claims.

A block is a record count, a byte size, the (compressed) records and the file's 16-byte
sync marker. Sizes and counts are refused beyond 2**31 - 1 (as Avro's Java reader does),
a size beyond the end of a file is a truncated block, and a block is decompressed to at
most `--max_record_bytes`, so that a small block cannot inflate to gigabytes (a bomb).
"""

from __future__ import annotations

import bz2
import io
import itertools
import json
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import cramjam
import fastavro
import zstandard

from batchpredict.errors import error_text

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
#: Largest block size and record count taken from a file.
MAX_BLOCK = 2**31 - 1
_OBJECT_REPR = re.compile(r"\s*(from\s+)?<[\w.]+ object at 0x[0-9a-f]+>")
#: The container header, as the Avro specification defines it.
_HEADER_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "org.apache.avro.file.Header",
        "fields": [
            {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": len(MAGIC)}},
            {"name": "meta", "type": {"type": "map", "values": "bytes"}},
            {"name": "sync", "type": {"type": "fixed", "name": "Sync", "size": SYNC_SIZE}},
        ],
    }
)


class BlockTooLarge(ValueError):
    """A block that holds, or decompresses to, more than `ReadOptions.max_record_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"block decompresses to more than --max_record_bytes ({limit} bytes): "
            "corrupt, or too large to read"
        )


class CorruptBlock(Exception):
    """The block at byte `offset` cannot be read: `reason` says why."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset


# -- varints -----------------------------------------------------------------------------
def read_varint(data: Iterator[int]) -> int:
    """One unsigned little-endian base-128 varint (at most 10 bytes) from `data`."""
    result = 0
    for shift in range(0, 70, 7):
        byte = next(data, None)
        if byte is None:
            raise EOFError("unexpected end of data inside a varint")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
    raise ValueError("varint longer than 10 bytes")


def read_long(data: Iterator[int]) -> int:
    """One Avro `long` (a zig-zag varint) from `data`."""
    raw = read_varint(data)
    return (raw >> 1) ^ -(raw & 1)


class _Readable(Protocol):
    """What reading blocks needs of a stream."""

    def read(self, size: int = -1, /) -> bytes: ...

    def tell(self) -> int: ...


def _bytes_of(stream: _Readable) -> Iterator[int]:
    """The bytes of `stream`, one at a time, as they are asked for."""
    while byte := stream.read(1):
        yield byte[0]


def encode_long(value: int) -> bytes:
    """One Avro `long` (a zig-zag varint)."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


# -- codecs: each decompresses one block to at most `limit` bytes, else BlockTooLarge ------
def _bounded(data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise BlockTooLarge(limit)
    return data


def _inflate(data: bytes, limit: int) -> bytes:
    """A deflate block (raw deflate; trailing bytes ignored, as other readers do)."""
    return _bounded(zlib.decompressobj(-15).decompress(data, limit + 1), limit)


def _unsnappy(data: bytes, limit: int) -> bytes:
    """A snappy block and its CRC-32 (not checked, as other readers do); the length its
    header declares is checked before anything is decompressed."""
    if len(data) < 4:
        raise ValueError("snappy block shorter than its checksum")
    if read_varint(iter(data)) > limit:
        raise BlockTooLarge(limit)
    return bytes(cramjam.snappy.decompress_raw(data[:-4]))


def _unzstd(data: bytes, limit: int) -> bytes:
    """A zstandard block; streamed, as writers do not always store the content size."""
    with zstandard.ZstdDecompressor().stream_reader(data) as reader:
        return _bounded(reader.read(limit + 1), limit)


DECOMPRESS: dict[str, Callable[[bytes, int], bytes]] = {
    "null": _bounded,
    "deflate": _inflate,
    "snappy": _unsnappy,
    "zstandard": _unzstd,
    "bzip2": lambda data, limit: _bounded(bz2.BZ2Decompressor().decompress(data, limit + 1), limit),
    "xz": lambda data, limit: _bounded(lzma.LZMADecompressor().decompress(data, limit + 1), limit),
}


# -- header and blocks -------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """What a container's header says: the writer schema (parsed), codec and sync marker."""

    schema: Any
    codec: str
    sync: bytes


def read_header(stream: BinaryIO) -> Header:
    """The header at the start of `stream`; raises (ValueError, EOFError, ...) if corrupt."""
    header = fastavro.schemaless_reader(stream, _HEADER_SCHEMA, None)
    assert isinstance(header, dict)
    if header["magic"] != MAGIC:
        raise ValueError("bad magic")
    meta = header["meta"]
    codec = meta.get("avro.codec", b"null").decode() or "null"
    if codec not in DECOMPRESS:
        raise ValueError(f"codec {codec!r} is not supported (supported: {', '.join(DECOMPRESS)})")
    schema = fastavro.parse_schema(json.loads(meta["avro.schema"]))
    return Header(schema=schema, codec=codec, sync=header["sync"])


@dataclass(frozen=True)
class Block:
    """One block: where it starts, its record count and its data, decompressed."""

    offset: int
    count: int
    data: bytes


def iter_blocks(stream: BinaryIO, header: Header, limit: int) -> Iterator[Block]:
    """The blocks from the current position of `stream` on, decompressed to at most
    `limit` bytes each. Raises CorruptBlock at the first that cannot be read; whitespace
    after the last block (some writers end the file with a newline) is no block."""
    end = _size(stream)
    decompress = DECOMPRESS[header.codec]
    tail = _Tail(stream)
    while True:
        offset = stream.tell()
        tail.mark()
        try:
            block = _read_block(tail, header.sync, decompress, limit, end)
        except Exception as exc:
            if tail.only_whitespace():
                return
            raise CorruptBlock(offset, reason(exc)) from exc
        if block is None:
            return
        yield block


def _read_block(
    stream: _Readable,
    sync: bytes,
    decompress: Callable[[bytes, int], bytes],
    limit: int,
    end: int | None,
) -> Block | None:
    """The block at the current position, or None at the end of the input."""
    offset = stream.tell()
    first = stream.read(1)
    if not first:
        return None
    count = read_long(itertools.chain(first, _bytes_of(stream)))
    size = read_long(_bytes_of(stream))
    if not (0 <= count <= MAX_BLOCK and 0 <= size <= MAX_BLOCK):
        raise ValueError(f"block count {count} or size {size} out of range")
    if end is not None and size + SYNC_SIZE > end - stream.tell():
        raise EOFError(f"block of {size} bytes past the end of the file")
    if decompress is _bounded and size > limit:
        raise BlockTooLarge(limit)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("unexpected end of data")
    if stream.read(SYNC_SIZE) != sync:
        raise ValueError("sync marker does not match the header's")
    return Block(offset, count, decompress(payload, limit))


def _size(stream: BinaryIO) -> int | None:
    """The length of a seekable stream, else None."""
    if not stream.seekable():
        return None
    position = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(position)
    return end


class _Tail:
    """`stream` read through, keeping the first bytes read since the last `mark`: what
    tells a trailing newline from a broken block, on streams that cannot seek back too."""

    _KEPT = 32

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._seen = b""

    def mark(self) -> None:
        self._seen = b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if len(self._seen) <= self._KEPT:
            self._seen += data[: self._KEPT + 1 - len(self._seen)]
        return data

    def tell(self) -> int:
        return self._stream.tell()

    def only_whitespace(self) -> bool:
        """Whether fewer than 32 bytes, all whitespace, follow the mark to the end."""
        rest = self._seen + self._stream.read(self._KEPT + 1)
        return len(rest) < self._KEPT and not rest.strip()


def reason(exc: BaseException) -> str:
    """An exception's message on one line, without object reprs (fastavro's have some)."""
    if isinstance(exc, EOFError) and not str(exc):
        return "unexpected end of data"
    return _OBJECT_REPR.sub("", error_text(exc))


def container_header(schema: Any, sync: bytes) -> bytes:
    """The header of a container of `schema` (a JSON-able schema), codec null."""
    meta = {"avro.schema": json.dumps(schema).encode(), "avro.codec": b"null"}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _HEADER_SCHEMA, {"magic": MAGIC, "meta": meta, "sync": sync})
    return out.getvalue()
