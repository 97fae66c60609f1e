"""Avro object container files: the header, then blocks (a record count, a byte size, the
records, compressed, and the sync marker), read within bounds whatever the file claims:
counts and sizes up to 2**31 - 1 (as Avro's Java reader), no block decompressed beyond
`--max_record_bytes` (a bomb)."""

from __future__ import annotations

import bz2
import json
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import cramjam
import fastavro
import zstandard

from batchpredict.errors import error_text

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
MAX_BLOCK = 2**31 - 1
_OBJECT_REPR = re.compile(r"\s*(from\s+)?<[\w.]+ object at 0x[0-9a-f]+>")
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
    """The block at byte `offset` cannot be read: the message says why."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset


def read_long(read: Callable[[int], bytes], first: bytes = b"") -> int:
    """One Avro `long` (a zig-zag varint of at most 10 bytes): `first`, then from `read`."""
    value = 0
    for shift in range(0, 70, 7):
        byte, first = first or read(1), b""
        if not byte:
            raise EOFError("unexpected end of data inside a varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return (value >> 1) ^ -(value & 1)
    raise ValueError("varint longer than 10 bytes")


def encode_long(value: int) -> bytes:
    """One Avro `long` (a zig-zag varint)."""
    zigzag, out = (value << 1) ^ (value >> 63), bytearray()
    while zigzag >= 0x80:
        out.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    return bytes([*out, zigzag])


def _unsnappy(data: bytes, limit: int) -> bytes:
    """A snappy block (its CRC-32 unchecked, as other readers do) of a length within `limit`."""
    if len(data) < 4:
        raise ValueError("snappy block shorter than its checksum")
    if cramjam.snappy.decompress_raw_len(data[:-4]) > limit:
        raise BlockTooLarge(limit)
    return bytes(cramjam.snappy.decompress_raw(data[:-4]))


#: Each decompresses a block to at most `limit` + 1 bytes (deflate is raw; what follows
#: its end is ignored, and zstandard is streamed: writers do not always store its size).
DECOMPRESS: dict[str, Callable[[bytes, int], bytes]] = {
    "null": lambda data, limit: data,
    "deflate": lambda data, limit: zlib.decompressobj(-15).decompress(data, limit + 1),
    "snappy": _unsnappy,
    "zstandard": lambda data, limit: (
        zstandard.ZstdDecompressor().stream_reader(data).read(limit + 1)
    ),
    "bzip2": lambda data, limit: bz2.BZ2Decompressor().decompress(data, limit + 1),
    "xz": lambda data, limit: lzma.LZMADecompressor().decompress(data, limit + 1),
}


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
    codec = header["meta"].get("avro.codec", b"null").decode() or "null"
    if codec not in DECOMPRESS:
        raise ValueError(f"codec {codec!r} is not supported (supported: {', '.join(DECOMPRESS)})")
    schema = fastavro.parse_schema(json.loads(header["meta"]["avro.schema"]))
    return Header(schema=schema, codec=codec, sync=header["sync"])


@dataclass(frozen=True)
class Block:
    """One block: where it starts, its record count and its data, decompressed."""

    offset: int
    count: int
    data: bytes


def iter_blocks(stream: BinaryIO, header: Header, limit: int) -> Iterator[Block]:
    """The blocks from the current position of `stream` on, decompressed to at most `limit`
    bytes each. Raises CorruptBlock at the first that cannot be read; whitespace after the
    last block (some writers end the file with a newline) is no block."""
    return iter(_Blocks(stream, header, limit))


class _Blocks:
    """The blocks of `stream`, keeping the first bytes read of the current one (`seen`):
    what tells a trailing newline from a broken block on streams that cannot seek back."""

    def __init__(self, stream: BinaryIO, header: Header, limit: int) -> None:
        self.stream, self.header, self.limit, self.seen = stream, header, limit, b""

    def __iter__(self) -> Iterator[Block]:
        while True:
            offset, self.seen = self.stream.tell(), b""
            try:
                block = self._next(offset)
            except Exception as exc:
                rest = self.seen + self.stream.read(33)
                if len(rest) < 32 and not rest.strip():
                    return
                raise CorruptBlock(offset, reason(exc)) from exc
            if block is None:
                return
            yield block

    def _read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.seen += data[: max(0, 33 - len(self.seen))]
        return data

    def _next(self, offset: int) -> Block | None:
        """The block at `offset` (where the stream is), or None at the end of the input."""
        if not (first := self._read(1)):
            return None
        count, size = read_long(self._read, first), read_long(self._read)
        if not (0 <= count <= MAX_BLOCK and 0 <= size <= MAX_BLOCK):
            raise ValueError(f"block count {count} or size {size} out of range")
        if self.header.codec == "null" and size > self.limit:
            raise BlockTooLarge(self.limit)
        payload = self._read(size)
        if len(payload) < size:
            raise EOFError("unexpected end of data")
        if self._read(SYNC_SIZE) != self.header.sync:
            raise ValueError("sync marker does not match the header's")
        data = DECOMPRESS[self.header.codec](payload, self.limit)
        if len(data) > self.limit:
            raise BlockTooLarge(self.limit)
        return Block(offset, count, data)


def reason(exc: BaseException) -> str:
    """An exception's message on one line, without object reprs (fastavro's have some)."""
    if isinstance(exc, EOFError) and not str(exc):
        return "unexpected end of data"
    return _OBJECT_REPR.sub("", error_text(exc))
