"""The schema registry: Kizuna's schemas registered for its topics, ids for the serde.

Subjects follow Confluent's TopicNameStrategy: a topic's own schema is `<topic>-value`. The
control records some topics also carry (told apart by the `kizuna-type` header: the
collector's batches, watermarks and erase requests on the touchpoint topic) are registered
under `<topic>-<record full name>` (TopicRecordNameStrategy), so each subject keeps one
record type and its own compatibility history. A stock deserializer needs none of this: it
reads the id in each value and fetches that schema.

`kizuna topics create` registers every subject (new subjects get compatibility BACKWARD);
a stage only looks ids up, so a schema change the registry refuses stops at
`kizuna topics create`, with the registry's reason, before anything is produced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from services.common import serde as serdes
from services.common.errors import StackError
from services.common.settings import Settings
from services.common.topics import ALERTS_HISTORY, PUBLIC_TOPICS, TopicSpec

COMPATIBILITY = "BACKWARD"
#: Topics whose values are registered: the public ones and the alert history (internal, but
#: written with the alert schema, so readable by the same consumers).
REGISTERED_TOPICS: tuple[TopicSpec, ...] = (*PUBLIC_TOPICS, ALERTS_HISTORY)
#: Registry error codes for "no such subject / version / schema".
NOT_FOUND = (40401, 40402, 40403)


@dataclass(frozen=True)
class Subject:
    name: str  # the registry subject
    topic: str
    schema: str  # the schema's name in `schemas/` (serde.TOUCHPOINT, ...)


@dataclass(frozen=True)
class Registered:
    subject: Subject
    schema_id: int
    new_version: bool


def subjects(settings: Settings) -> Iterator[Subject]:
    """Every subject Kizuna writes under, in declaration order."""
    files = serdes.read_schema_files(serdes.SCHEMAS_DIR)
    for spec in REGISTERED_TOPICS:
        topic = spec.name(settings.topic_prefix)
        for i, name in enumerate(spec.schemas):
            if i == 0:
                yield Subject(f"{topic}-value", topic, name)
            else:
                record = files[name]
                yield Subject(f"{topic}-{record['namespace']}.{record['name']}", topic, name)


def _text(schema: Mapping[str, Any]) -> Schema:
    return Schema(json.dumps(schema, separators=(",", ":")), "AVRO")


def client(settings: Settings) -> SchemaRegistryClient:
    conf: dict[str, Any] = {"url": settings.schema_registry_url.rstrip("/"), "timeout": 10}
    if settings.schema_registry_basic_auth:
        conf["basic.auth.credentials.source"] = "USER_INFO"
        conf["basic.auth.user.info"] = settings.schema_registry_basic_auth
    if settings.schema_registry_ca_location:
        conf["ssl.ca.location"] = settings.schema_registry_ca_location
    return SchemaRegistryClient(conf)


def _reason(exc: Exception) -> str:
    if isinstance(exc, SchemaRegistryError):
        return f"{exc.error_message} (HTTP {exc.http_status_code}, code {exc.error_code})"
    return f"{type(exc).__name__}: {exc}"


class RegistryLookup(serdes.Registry):
    """The serde's view of the registry: ids by lookup (never registering), schemas by id."""

    def __init__(self, settings: Settings) -> None:
        self._client = client(settings)
        self._url = settings.schema_registry_url
        self._subject = {}
        for subject in subjects(settings):
            self._subject.setdefault(subject.schema, subject.name)

    def schema_id(self, name: str, schema: Mapping[str, Any]) -> int:
        subject = self._subject[name]
        try:
            return self._client.lookup_schema(subject, _text(schema)).schema_id
        except SchemaRegistryError as exc:
            if exc.error_code in NOT_FOUND:
                raise StackError(
                    f"schema {name} is not registered under subject {subject} at {self._url}: "
                    "run `kizuna topics create` (it registers the schemas)") from None
            raise serdes.RegistryError(
                f"schema registry at {self._url}: {_reason(exc)}") from None
        except Exception as exc:  # httpx's connection errors and timeouts
            raise serdes.RegistryError(
                f"schema registry at {self._url} unreachable: {_reason(exc)}") from None

    def schema(self, schema_id: int) -> dict | None:
        try:
            found = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.error_code in NOT_FOUND or exc.http_status_code == 404:
                return None
            raise serdes.RegistryError(
                f"schema registry at {self._url}: {_reason(exc)}") from None
        except Exception as exc:
            raise serdes.RegistryError(
                f"schema registry at {self._url} unreachable: {_reason(exc)}") from None
        if (found.schema_type or "AVRO") != "AVRO":
            return None
        return json.loads(found.schema_str)


@cache
def serde_for(settings: Settings) -> serdes.AvroSerde:
    """The serde of this deployment: Confluent framing with the configured registry, or
    single-object encoding with `KIZUNA_SCHEMA_REGISTRY_URL=none`. One per process."""
    if not settings.schema_registry:
        return serdes.default_serde()
    return serdes.registry_serde(RegistryLookup(settings))


def register(settings: Settings) -> list[Registered]:
    """Register every schema under its subjects (idempotent: an unchanged schema is found, not
    registered again). A new subject gets compatibility BACKWARD first. A schema the registry
    refuses raises StackError with the registry's reason, naming the schema file."""
    sr = client(settings)
    files = serdes.read_schema_files(serdes.SCHEMAS_DIR)
    done = []
    for subject in subjects(settings):
        schema = _text(files[subject.schema])
        try:
            try:
                found = sr.lookup_schema(subject.name, schema)
                done.append(Registered(subject, found.schema_id, False))
                continue
            except SchemaRegistryError as exc:
                if exc.error_code not in NOT_FOUND and exc.http_status_code != 404:
                    raise
            if not _exists(sr, subject.name):
                sr.register_schema(subject.name, schema)  # the subject exists from here
                sr.set_compatibility(subject.name, COMPATIBILITY)
                schema_id = sr.lookup_schema(subject.name, schema).schema_id
            else:
                schema_id = sr.register_schema(subject.name, schema)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise StackError(
                    f"the schema registry refused schemas/{subject.schema}.avsc for subject "
                    f"{subject.name} (compatibility "
                    f"{_compatibility(sr, subject.name)}): {exc.error_message}") from None
            raise StackError(
                f"registering schemas/{subject.schema}.avsc under {subject.name} at "
                f"{settings.schema_registry_url}: {_reason(exc)}") from None
        except Exception as exc:
            raise StackError(
                f"schema registry at {settings.schema_registry_url} unreachable: "
                f"{_reason(exc)}") from None
        done.append(Registered(subject, schema_id, True))
    return done


def _exists(sr: SchemaRegistryClient, subject: str) -> bool:
    try:
        return bool(sr.get_versions(subject))
    except SchemaRegistryError as exc:
        if exc.error_code in NOT_FOUND or exc.http_status_code == 404:
            return False
        raise


def _compatibility(sr: SchemaRegistryClient, subject: str) -> str:
    try:
        return sr.get_compatibility(subject)
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"
