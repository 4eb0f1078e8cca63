"""Avro on Kafka: the schemas in `schemas/`, in one of two framings.

With a schema registry (the default), Confluent's wire format, which stock deserializers,
Kafka Connect, ksqlDB, Flink and Spark read unchanged:

    0x00 | 4-byte big-endian schema id in the registry | the Avro binary datum

Without one (`KIZUNA_SCHEMA_REGISTRY_URL=none`), the Avro specification's single-object
encoding:

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
    parsing canonical form | the Avro binary datum

A reader takes both, so topics written before a switch still load. It finds the writer
schema by id (asking the registry once for an id it has not seen) or by fingerprint among the
current schemas and those kept in `schemas/history/`, and resolves it against its own (Avro
schema resolution), so a new field with a default is read by old readers and old data by new
readers.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from services.common import resources

SCHEMAS_DIR = Path(os.environ.get("KIZUNA_SCHEMAS_DIR")
                   or resources.directory("services.schemas"))
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = 5

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


class RegistryError(RuntimeError):
    """The schema registry could not answer (unreachable, refused): nothing is wrong with the
    record, so a stage retries rather than dead-letters it."""


class Registry:
    """What the serde needs of a schema registry (`services.common.schema_registry`)."""

    def schema_id(self, name: str, schema: Mapping[str, Any]) -> int:
        """The id of `schema` (schema `name`), registered by `kizuna topics create`."""
        raise NotImplementedError

    def schema(self, schema_id: int) -> dict | None:
        """The schema with this id, or None when the registry has none."""
        raise NotImplementedError


@dataclass(frozen=True)
class Schema:
    name: str
    parsed: Any
    fingerprint: bytes
    #: The same schema read without its logical types: a timestamp stays the epoch
    #: milliseconds it is on the wire (the binary encoding is the same).
    plain: Any

    @classmethod
    def from_json(cls, name: str, schema: Mapping[str, Any]) -> Schema:
        parsed = parse_schema(dict(schema))  # the write hint: fastavro will not parse it again
        canonical = to_parsing_canonical_form(parsed)
        return cls(name, parsed, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
                   parse_schema(_without_logical_types(schema)))


def _without_logical_types(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(x) for x in node]
    return node


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
    """Encodes and decodes the named schemas; parse once, share everywhere.

    With a `registry`, values are framed in Confluent's wire format; the id of each schema is
    asked once, at `prepare` or at its first use."""

    def __init__(self, current: Mapping[str, Mapping], history: Iterable[Mapping] = (),
                 registry: Registry | None = None) -> None:
        self._json = {name: dict(s) for name, s in current.items()}
        self._current = {name: Schema.from_json(name, s) for name, s in current.items()}
        self._writers: dict[bytes, Schema] = {}
        for schema in history:
            parsed = Schema.from_json("history", schema)
            self._writers[parsed.fingerprint] = parsed
        for schema in self._current.values():
            self._writers[schema.fingerprint] = schema
        self._registry = registry
        self._by_id: dict[int, Schema] = {}
        self._missing: set[int] = set()  # ids the registry does not have: asked once
        self._headers: dict[str, bytes] = {} if registry else {
            name: MAGIC + schema.fingerprint for name, schema in self._current.items()}

    @property
    def confluent(self) -> bool:
        """Whether this serde writes Confluent's wire format (it has a registry)."""
        return self._registry is not None

    def schema(self, name: str) -> Schema:
        return self._current[name]

    def schema_json(self, name: str) -> dict:
        """Schema `name` as it is registered: standalone, references inlined."""
        return self._json[name]

    def prepare(self, names: Iterable[str]) -> None:
        """Ask the registry now for the ids of the schemas this process writes, so that a
        schema nobody registered stops it at start with a clear error, not at its first
        record."""
        for name in names:
            self._header(name)

    def _header(self, name: str) -> bytes:
        header = self._headers.get(name)
        if header is None:
            schema_id = self._registry.schema_id(name, self._json[name])
            self._by_id[schema_id] = self._current[name]
            header = self._headers[name] = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        return header

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._headers.get(name) or self._header(name))
        fastavro.schemaless_writer(buf, self._current[name].parsed, record)
        return buf.getvalue()

    def datum(self, name: str, record: Mapping[str, Any]) -> bytes:
        """The Avro binary datum alone, without framing: for values built from parts
        (`array`)."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._current[name].parsed, record)
        return buf.getvalue()

    def frame(self, name: str, datum: bytes) -> bytes:
        """A datum of schema `name` framed as a value on a topic."""
        return (self._headers.get(name) or self._header(name)) + datum

    def decode(self, name: str, data: bytes, *, epoch_ms: bool = False) -> dict[str, Any]:
        """Read `data` as schema `name`, whatever compatible schema version wrote it, in
        either framing. `epoch_ms`: timestamps as epoch milliseconds (ints) instead of
        datetimes, a third cheaper to read (the sessionizer's hot path)."""
        if data and data[0] == 0 and len(data) >= CONFLUENT_HEADER_SIZE:
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
            writer = self._by_id.get(schema_id) or self._fetch(schema_id)
            start = CONFLUENT_HEADER_SIZE
        elif data and len(data) >= HEADER_SIZE and data[:2] == MAGIC:
            writer = self._writers.get(data[2:HEADER_SIZE])
            if writer is None:
                raise DecodeError(
                    "unknown_schema",
                    f"writer schema fingerprint {data[2:HEADER_SIZE].hex()} is not in schemas/")
            start = HEADER_SIZE
        else:
            raise DecodeError(
                "undecodable", "neither Confluent's wire format (0x00 and a schema id) nor Avro "
                "single-object encoding (0xC3 0x01 and a fingerprint)")
        reader = self._current[name]
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            read = (writer.plain, reader.plain) if epoch_ms else (writer.parsed, reader.parsed)
            record = fastavro.schemaless_reader(buf, read[0], None if writer is reader else read[1])
        except Exception as exc:  # fastavro raises many types for bad bytes
            raise DecodeError("undecodable", f"{name}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError(
                "undecodable", f"{name}: {len(data) - buf.tell()} trailing bytes after the datum")
        return record

    def decode_foreign(self, data: bytes) -> Any:
        """A value of a schema that is not ours, in Confluent's wire format (a user's own
        topic), read with the schema that wrote it: records as dicts, timestamps as
        datetimes."""
        if not (data and data[0] == 0 and len(data) >= CONFLUENT_HEADER_SIZE):
            raise DecodeError("undecodable", "not Confluent's wire format (0x00 and a schema id)")
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
        writer = self._by_id.get(schema_id) or self._fetch(schema_id)
        buf = io.BytesIO(data)
        buf.seek(CONFLUENT_HEADER_SIZE)
        try:
            value = fastavro.schemaless_reader(buf, writer.parsed, None)
        except Exception as exc:  # fastavro raises many types for bad bytes
            raise DecodeError("undecodable", f"{type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError("undecodable", f"{len(data) - buf.tell()} trailing bytes after "
                                             "the datum")
        return value

    def _fetch(self, schema_id: int) -> Schema:
        """The writer schema of a registry id not seen before (one request per id)."""
        if self._registry is None:
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id} (Confluent's wire format), and no "
                "schema registry is configured (KIZUNA_SCHEMA_REGISTRY_URL)")
        found = None if schema_id in self._missing else self._registry.schema(schema_id)
        if found is None:
            if len(self._missing) < 10_000:
                self._missing.add(schema_id)
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id} is not in the schema registry")
        try:
            writer = Schema.from_json("registry", found)
        except Exception as exc:  # a schema fastavro cannot parse: the record cannot be read
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        writer = self._writers.get(writer.fingerprint, writer)  # ours: the fast path
        self._by_id[schema_id] = writer
        return writer


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


def _history() -> list[dict]:
    history_dir = SCHEMAS_DIR / "history"
    return [json.loads(p.read_text()) for p in sorted(history_dir.glob("*.avsc"))]


@cache
def default_serde() -> AvroSerde:
    """The serde of this checkout's `schemas/` (current files plus `schemas/history/`),
    without a registry: single-object encoding."""
    return AvroSerde(read_schema_files(SCHEMAS_DIR), _history())


def registry_serde(registry: Registry) -> AvroSerde:
    """The serde of this checkout's `schemas/` framed with `registry`'s ids."""
    return AvroSerde(read_schema_files(SCHEMAS_DIR), _history(), registry)
