"""Users' own topics as input (`KIZUNA_SOURCE_TOPICS`).

Events some producer of the user's already writes to Kafka (a Snowplow or Segment Kafka
destination, the CDC of an orders table, in-house services) come in without the HTTP
collector: the ingest stage consumes those topics as a consumer group of its own
(`<prefix>ingest`), reads each message as JSON or as Avro in Confluent's wire format (the
writer schema from the registry), validates each event as the collector does (the topic's
source and channels are a write key's), and re-batches the accepted ones per partition into the raw
topic. A message that is not JSON events, and each rejected event, becomes a dead letter that
names its topic, partition and offset.

Offsets are committed only once Kafka has acknowledged everything a batch produced; a batch
that fails is produced again from its first offsets. So a crash or a broker fault repeats a
batch and never loses one: the stages deduplicate touchpoints by event_id and dead letters by
their id (a digest of the payload). An event's receive time is its message's timestamp, so a
repeated batch gives the same records.

A topic that does not exist yet is listed by `kizuna status` and consumed as soon as it exists
(the consumer follows the cluster's metadata); nothing waits for it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter as MetricCounter

from services.common.errors import KizunaError
from services.common.kafka import client_config
from services.common.schema_registry import serde_for
from services.common.serde import (
    DEAD_LETTER,
    TOUCHPOINT,
    TOUCHPOINT_BATCH,
    AvroSerde,
    DecodeError,
    RegistryError,
)
from services.common.settings import IngestSettings
from services.common.topics import TOUCHPOINTS_RAW
from services.ingest.collector import MessageBuilder, PartitionBatcher, process_events
from services.ingest.keys import Source, parse_write_keys
from services.ingest.producer import Message, producer_config
from services.ingest.validation import Enrichment, PiiRedactor, Rejection

log = logging.getLogger("kizuna.ingest.sources")

SOURCE_EVENTS = MetricCounter(
    "kizuna_ingest_source_events", "Events read from source topics, by topic and outcome",
    ["topic", "outcome"])
#: The consumer group's name after the prefix: the ingest stage's own.
GROUP = "ingest"


@dataclass(frozen=True)
class Consumed:
    """One message of a source topic, as the relay needs it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int


@dataclass
class Relayed:
    messages: list[Message] = field(default_factory=list)
    accepted: Counter = field(default_factory=Counter)  # topic -> events
    rejected: Counter = field(default_factory=Counter)  # topic -> events


def parse_sources(spec: str) -> dict[str, Source]:
    """`topic=source:channel|channel;...` -> {topic: Source}."""
    return parse_write_keys(spec, "KIZUNA_SOURCE_TOPICS")


def events_of(value: bytes | None, serde: AvroSerde) -> tuple[list[object], bool] | Rejection:
    """The events of a message value: one event, an array of events, or a collector batch
    (`{"events": [...]}`), in JSON or in Avro in Confluent's wire format (the writer schema
    from the registry; a JSON text never starts with its 0x00); and whether it held several.
    Raises RegistryError when the registry cannot answer: the batch is tried again."""
    if not value:
        return Rejection("invalid_json", "", "an empty message")
    if value[0] == 0:
        try:
            payload = _json_ready(serde.decode_foreign(value))
        except DecodeError as exc:
            return Rejection(exc.reason, "", exc.detail[:200])
    else:
        try:
            payload = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            return Rejection("invalid_json", "", str(exc)[:200])
    if isinstance(payload, list):
        return payload, True
    if isinstance(payload, dict) and isinstance(payload.get("events"), list) \
            and "event_id" not in payload:
        return payload["events"], True
    return [payload], False


def _json_ready(value: object) -> object:
    """An Avro value as the JSON the collector takes: timestamps as ISO 8601 (UTC), nulls
    of optional fields left out (as a JSON producer would omit them)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def relay(consumed: list[Consumed], sources: dict[str, Source], builder: MessageBuilder,
          settings: IngestSettings) -> Relayed:
    """The raw topic's and the dead-letter topic's messages for `consumed` (pure: no I/O).
    Accepted touchpoints go as one batch message per raw partition, in event-time order."""
    out = Relayed()
    accepted: list[dict] = []
    touchpoints: list[Message] = []
    batcher = PartitionBatcher(
        builder.serde, builder.raw_topic, builder.partitions or 1,
        lambda topic, value, key, _n, partition=-1, headers=None: touchpoints.append(
            (topic, key, value, partition, headers)))
    for m in consumed:
        source = sources[m.topic]
        origin = (m.topic, m.partition, m.offset)
        found = events_of(m.value, builder.serde)
        if isinstance(found, Rejection):
            out.rejected[m.topic] += 1
            out.messages.append(builder.rejected(found, source.name, m.value or b"",
                                                 m.timestamp_ms, origin))
            continue
        events, several = found
        enrich = Enrichment(source.name, m.timestamp_ms, source.channels,
                            settings.pii_names, settings.pii_salt)
        outcome = process_events(events, several, m.value or b"", enrich,
                                 max_event_bytes=settings.max_event_bytes)
        accepted += outcome.records
        out.accepted.update({m.topic: len(outcome.records)} if outcome.records else {})
        out.rejected.update({m.topic: len(outcome.rejected)} if outcome.rejected else {})
        out.messages += [builder.rejected(rejection, source.name, raw, m.timestamp_ms, origin)
                         for _, _, rejection, raw in outcome.rejected]
    # in event-time order, as an import sends them: a batch fetched from several partitions of
    # a source topic comes interleaved, and the stages do less work on events in time order
    accepted.sort(key=lambda r: (r["event_time"], r["event_id"]))
    for record in accepted:
        batcher.add(record)
    batcher.flush()
    out.messages[:0] = touchpoints
    return out


class SourceRelay:
    """The consumer loop: consume a batch, produce what it relays, wait for Kafka's
    acknowledgement, commit; on a failed delivery, seek back and produce the batch again."""

    def __init__(self, settings: IngestSettings, batch: int = 5000) -> None:
        self.settings = settings
        self.sources = parse_sources(settings.common.source_topics)
        self.batch = batch
        prefix = settings.common.topic_prefix
        self.consumer = Consumer({
            **client_config(settings.common),
            "group.id": prefix + GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            "topic.metadata.refresh.interval.ms": 5000,  # a topic created later joins soon
        })
        self.producer = Producer(producer_config(settings))
        serde = serde_for(settings.common)
        serde.prepare((TOUCHPOINT, TOUCHPOINT_BATCH, DEAD_LETTER))
        raw = TOUCHPOINTS_RAW.name(prefix)
        found = self.producer.list_topics(raw, timeout=10).topics.get(raw)
        if found is None or not found.partitions:
            raise KizunaError(f"topic {raw} does not exist: run `kizuna topics create`")
        self.builder = MessageBuilder(serde, prefix, PiiRedactor(settings.pii_names,
                                                                 settings.pii_salt),
                                      len(found.partitions))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="source-topics", daemon=True)
        self.missing: set[str] = set()
        self.failing_since: float | None = None  # monotonic time of the first failed try
        self.error: str | None = None

    def problem(self) -> str | None:
        """Why the relay is not making progress (for /readyz), or None."""
        if not self.thread.is_alive() and not self.stopping.is_set():
            return f"the source topics' consumer stopped: {self.error}"
        stall = self.settings.common.stall_seconds
        if self.failing_since is not None and time.monotonic() - self.failing_since > stall:
            return f"source topics: no batch relayed for over {stall:g} s: {self.error}"
        return None

    def start(self) -> SourceRelay:
        self.consumer.subscribe(list(self.sources))
        self.thread.start()
        log.info("consuming source topics %s", ", ".join(sorted(self.sources)))
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        self.consumer.close()
        self.producer.flush(10)

    def run(self) -> None:
        backoff = 0.5
        try:
            while not self.stopping.is_set():
                consumed = self.poll()
                if not consumed:
                    continue
                error = self.relay_once(consumed)
                if error is None:
                    self.failing_since, self.error, backoff = None, None, 0.5
                    continue
                log.error("source topics: a batch failed (%s); trying it again in %.1f s",
                          error, backoff)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self.error = error
                self.rewind(consumed)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        except Exception as exc:  # the consumer itself broke: /readyz says so
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("source topics: the consumer stopped")

    def relay_once(self, consumed: list[Consumed]) -> str | None:
        """Relay one batch and commit it; None, or why it must be tried again."""
        try:
            relayed = relay(consumed, self.sources, self.builder, self.settings)
        except RegistryError as exc:
            return str(exc)
        error = self.produce(relayed.messages)
        if error is not None:
            return error
        try:
            self.commit(consumed)
        except KafkaException as exc:  # a rebalance, the coordinator away: produced again
            return f"commit: {exc}"
        for topic, n in relayed.accepted.items():
            SOURCE_EVENTS.labels(topic, "accepted").inc(n)
        for topic, n in relayed.rejected.items():
            SOURCE_EVENTS.labels(topic, "rejected").inc(n)
        return None

    def poll(self) -> list[Consumed]:
        out = []
        for m in self.consumer.consume(num_messages=self.batch, timeout=0.2):
            error = m.error()
            if error is None:
                kind, at = m.timestamp()  # a message without one: received now
                out.append(Consumed(m.topic(), m.partition(), m.offset(), m.value(),
                                    at if kind != TIMESTAMP_NOT_AVAILABLE and at > 0
                                    else int(time.time() * 1000)))
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                if m.topic() not in self.missing:
                    log.warning("source topic %s does not exist (yet): consumed once it does",
                                m.topic())
                    self.missing.add(m.topic())
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("source topics: %s", error)
        return out

    def produce(self, messages: list[Message]) -> str | None:
        """Produce all and wait for Kafka: None when it holds every one, else the error."""
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(err.str())

        for topic, key, value, partition, headers in messages:
            while True:
                try:
                    self.producer.produce(topic, value, key, partition,
                                          on_delivery=delivered, headers=headers)
                    break
                except BufferError:
                    self.producer.poll(0.1)
        left = self.producer.flush(self.settings.produce_timeout_ms / 1000 + 5)
        if left:
            return f"{left} message(s) not acknowledged"
        return errors[0] if errors else None

    def commit(self, consumed: list[Consumed]) -> None:
        last: dict[tuple[str, int], int] = {}
        for m in consumed:
            last[(m.topic, m.partition)] = max(m.offset, last.get((m.topic, m.partition), -1))
        self.consumer.commit(offsets=[TopicPartition(t, p, o + 1)
                                      for (t, p), o in last.items()], asynchronous=False)
        self.missing -= {t for t, _ in last}

    def rewind(self, consumed: list[Consumed]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in consumed:
            first.setdefault((m.topic, m.partition), m.offset)
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

