"""Avro on Kafka: the schemas in `schemas/`, framed as Avro single-object encoding.

Framing (the Avro specification's "single object encoding"), for every value on a public topic:

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
    parsing canonical form | the Avro binary datum

A reader finds the writer schema by fingerprint among the current schemas and those kept in
`schemas/history/`, and resolves it against its own (Avro schema resolution), so a new field
with a default is read by old readers and old data by new readers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

#: Schema names (file stems in `schemas/`) of every public message.
TOUCHPOINT = "touchpoint"
SESSION = "session"
ENGAGEMENT_PROFILE = "engagement_profile"
ALERT = "alert"
DEAD_LETTER = "dead_letter"
WATERMARK = "watermark"
ERASE = "erase"


class DecodeError(ValueError):
    """Bytes that are not a value this serde can read; `reason` is a dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Schema:
    name: str
    parsed: Any
    fingerprint: bytes

    @classmethod
    def from_json(cls, name: str, schema: Mapping[str, Any]) -> Schema:
        parsed = parse_schema(dict(schema))  # the write hint: fastavro will not parse it again
        canonical = to_parsing_canonical_form(parsed)
        return cls(name, parsed, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")))


TOUCHPOINT_BATCH = "touchpoint_batch"


def read_schema_files(directory: Path) -> dict[str, dict]:
    schemas = {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.avsc"))}
    by_name = {f"{s['namespace']}.{s['name']}": s for s in schemas.values()}
    return {stem: _inline(schema, by_name, set()) for stem, schema in schemas.items()}


def _inline(node: Any, by_name: dict[str, dict], defined: set[str]) -> Any:
    """Replace a reference to another file's record by its definition (at its first use, as
    Avro's parsing canonical form does), so that each schema stands alone."""
    if isinstance(node, str):
        if node in by_name and node not in defined:
            defined.add(node)
            return _inline(by_name[node], by_name, defined)
        return node
    if isinstance(node, list):
        return [_inline(x, by_name, defined) for x in node]
    if isinstance(node, dict):
        if node.get("type") == "record" and "namespace" in node:
            defined.add(f"{node['namespace']}.{node['name']}")
        return {k: v if k in ("name", "namespace", "doc") else _inline(v, by_name, defined)
                for k, v in node.items()}
    return node


class AvroSerde:
    """Encodes and decodes the named schemas; parse once, share everywhere."""

    def __init__(self, current: Mapping[str, Mapping], history: Iterable[Mapping] = ()) -> None:
        self._current = {name: Schema.from_json(name, s) for name, s in current.items()}
        self._writers: dict[bytes, Schema] = {}
        for schema in history:
            parsed = Schema.from_json("history", schema)
            self._writers[parsed.fingerprint] = parsed
        for schema in self._current.values():
            self._writers[schema.fingerprint] = schema

    def schema(self, name: str) -> Schema:
        return self._current[name]

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        schema = self._current[name]
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def datum(self, name: str, record: Mapping[str, Any]) -> bytes:
        """The Avro binary datum alone, without framing: for values built from parts
        (`array`)."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._current[name].parsed, record)
        return buf.getvalue()

    def frame(self, name: str, datum: bytes) -> bytes:
        """A datum of schema `name` framed as a value on a topic."""
        return MAGIC + self._current[name].fingerprint + datum

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        """Read `data` as schema `name`, whatever compatible schema version wrote it."""
        if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError(
                "undecodable", "not Avro single-object encoding (missing 0xC3 0x01 header)")
        writer = self._writers.get(data[2:HEADER_SIZE])
        if writer is None:
            raise DecodeError(
                "unknown_schema",
                f"writer schema fingerprint {data[2:HEADER_SIZE].hex()} is not in schemas/")
        reader = self._current[name]
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(
                buf, writer.parsed, None if writer is reader else reader.parsed)
        except Exception as exc:  # fastavro raises many types for bad bytes
            raise DecodeError("undecodable", f"{name}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError(
                "undecodable", f"{name}: {len(data) - buf.tell()} trailing bytes after the datum")
        return record


def array(items: list[bytes]) -> bytes:
    """The Avro encoding of an array of already encoded items (one block, then the end):
    the datum of a record whose only field is that array."""
    return _long(len(items)) + b"".join(items) + b"\x00" if items else b"\x00"


def _long(n: int) -> bytes:
    """Avro's zig-zag varint of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@cache
def default_serde() -> AvroSerde:
    """The serde of this checkout's `schemas/` (current files plus `schemas/history/`)."""
    history_dir = SCHEMAS_DIR / "history"
    history = [json.loads(p.read_text()) for p in sorted(history_dir.glob("*.avsc"))]
    return AvroSerde(read_schema_files(SCHEMAS_DIR), history)
