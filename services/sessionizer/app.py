"""The sessionizer's faust adapter: Kafka in, `PartitionProcessor` in the middle, Kafka out.

One agent reads the raw touchpoints and the stage's own handoff topic (co-partitioned: same
partition count, same Java-compatible partitioner), in batches. Each batch is split by
partition and handed to the pure processor; its state is a faust table with a changelog topic,
written once per changed key per batch. Sessions, handoffs and dead letters are produced
before the batch's offsets are committed: processing is at-least-once, and the outputs are
idempotent (versioned sessions, deduplicated touches, deterministic dead-letter ids).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections import Counter as Counter_
from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping

import faust
import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event
from prometheus_client import Counter, Gauge

from services.common import logs
from services.common.kafka import admin_client, client_config, ensure_topics
from services.common.serde import DEAD_LETTER, SESSION, TOUCHPOINT, WATERMARK, default_serde
from services.common.settings import SessionizerSettings, load
from services.common.topics import SESSIONS, TOUCHPOINTS_DLQ, TOUCHPOINTS_RAW, TopicSpec
from services.sessionizer.processor import (
    DeadLetter,
    Handoff,
    Outputs,
    PartitionProcessor,
    Touchpoint,
    Watermark,
)
from services.sessionizer.sessions import HOUR_MS, MINUTE_MS, SessionRules

log = logging.getLogger("kizuna.sessionizer")
STAGE = "sessionizer"
HANDOFF = TopicSpec(
    "sessionizer.handoff", "identity links and device state on their way to the customer's "
    "partition (internal)", key="profile id", retention_ms=7 * 24 * HOUR_MS)

EVENTS = Counter("kizuna_sessionizer_events", "Touchpoints and handoffs by outcome", ["outcome"])
SESSIONS_OUT = Counter("kizuna_sessionizer_sessions", "Session updates emitted", ["status"])
OPEN_SESSIONS = Gauge("kizuna_sessionizer_open_sessions", "Sessions open in this worker's state")
DEAD_LETTERS = Counter("kizuna_sessionizer_dead_letters", "Dead letters by reason", ["reason"])


def rules_of(settings: SessionizerSettings) -> SessionRules:
    return SessionRules(gap_ms=int(settings.gap_minutes * MINUTE_MS),
                        max_length_ms=int(settings.max_length_hours * HOUR_MS),
                        lateness_ms=int(settings.lateness_minutes * MINUTE_MS))


def _header(message: faust.types.Message, name: str) -> bytes | None:
    headers = message.headers or ()
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return value
    return None


class Decoder:
    """Kafka messages to the processor's inputs; what cannot be read becomes a dead letter."""

    def __init__(self, raw_topic: str) -> None:
        self.raw_topic = raw_topic
        self.serde = default_serde()

    def item(self, message: faust.types.Message) -> object:
        origin = (message.topic, message.partition, message.offset)
        value = message.value
        try:
            if message.topic != self.raw_topic:
                return Handoff(json.loads(value))
            if _header(message, "kizuna-type") == WATERMARK.encode():
                record = self.serde.decode(WATERMARK, value)
                return Watermark(_ms(record["watermark_time"]))
            record = self.serde.decode(TOUCHPOINT, value)
        except ValueError as exc:  # DecodeError, JSONDecodeError
            reason = getattr(exc, "reason", "undecodable")
            return DeadLetter(reason, str(exc)[:500], value or b"", origin)
        record["event_time"] = _ms(record["event_time"])
        return Touchpoint(record, value, origin)


def _ms(value: object) -> int:
    return value if isinstance(value, int) else int(value.timestamp() * 1000)


def dead_letter_record(dead: DeadLetter) -> dict:
    digest = hashlib.sha256(f"{STAGE}\0{dead.reason}\0".encode() + dead.payload).hexdigest()
    topic, partition, offset = dead.origin or (None, None, None)
    return {
        "dead_letter_id": digest[:32], "reason": dead.reason, "detail": dead.detail,
        "stage": STAGE, "source": None, "payload": dead.payload,
        "received_at": int(time.time() * 1000), "origin_topic": topic,
        "origin_partition": partition, "origin_offset": offset,
    }


class ChangelogStore(MutableMapping):
    """The table's memory store, with changelog records produced through librdkafka.

    faust writes one changelog message per key through aiokafka, at tens of microseconds
    each on the event loop. This writes the very records faust would (JSON key and value,
    tombstone on delete, to the changelog partition of the batch's partition), so faust's
    own recovery rebuilds the table unchanged; the producer is flushed with the batch's
    outputs, before its offsets can be committed.
    """

    def __init__(self, table: faust.Table, produce: Callable[..., None]) -> None:
        self.data = table.data
        self.topic = table.changelog_topic.get_topic_name()
        self.produce = produce
        self.partition = 0

    def __getitem__(self, key: str) -> object:
        return self.data[key]

    def get(self, key: str, default: object = None) -> object:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: object) -> None:
        self.data[key] = value
        self.produce(self.topic, orjson.dumps(value), orjson.dumps(key), self.partition)

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.produce(self.topic, None, orjson.dumps(key), self.partition)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def create_app(settings: SessionizerSettings) -> faust.App:
    common = settings.common
    prefix = common.topic_prefix
    raw_name = TOUCHPOINTS_RAW.name(prefix)
    ensure_topics(common, (HANDOFF,))
    metadata = admin_client(common).list_topics(timeout=30).topics
    partitions = len(metadata[raw_name].partitions)
    app = faust.App(
        f"{prefix}sessionizer",
        broker=f"kafka://{common.kafka_bootstrap}",
        store=settings.store,
        datadir=str(common.home / "sessionizer"),
        topic_partitions=partitions,
        topic_replication_factor=common.replication_factor,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_bind=common.bind_host,
        web_port=settings.port,
        web_in_thread=False,
        stream_wait_empty=False,
        broker_max_poll_records=settings.batch_size,
        stream_buffer_maxsize=2 * settings.batch_size,
        producer_acks=-1,
    )
    setup_prometheus_sensors(app, name_prefix="kizuna_sessionizer_faust")
    source = app.topic(raw_name, HANDOFF.name(prefix), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    handoff_name, sessions_name = HANDOFF.name(prefix), SESSIONS.name(prefix)
    dlq_name = TOUCHPOINTS_DLQ.name(prefix)
    table = app.Table("profiles", default=None, partitions=partitions)  # JSON values
    # Outputs go through librdkafka (a few us a message, against tens through faust's own
    # producer), flushed once per batch before the batch is acknowledged: at-least-once.
    producer = Producer({
        **client_config(common), "enable.idempotence": True, "acks": "all",
        "partitioner": "murmur2_random", "compression.type": "lz4", "linger.ms": 5,
        "queue.buffering.max.messages": 1_000_000})
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failed.append(err.str())

    def produce(topic: str, value: bytes | None, key: bytes | None = None,
                partition: int = -1) -> None:
        while True:
            try:
                producer.produce(topic, value, key, partition, on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.05)

    store = ChangelogStore(table, produce) if settings.store.startswith("memory") else table
    processor = PartitionProcessor(rules_of(settings), store)
    # Computed when scraped: the live sessions held in this worker's state.
    OPEN_SESSIONS.set_function(lambda: sum(
        len(state["emitted"]) for key, state in list(table.items()) if key[:2] in ("c:", "a:")))
    decoder = Decoder(raw_name)
    serde = default_serde()

    def publish(out: Outputs) -> None:
        for record in out.sessions:
            produce(sessions_name, serde.encode(SESSION, record), record["profile_id"].encode())
        for key, message in out.handoffs:
            produce(handoff_name, json.dumps(message).encode(), key.encode())
        for dead in out.dead_letters:
            DEAD_LETTERS.labels(dead.reason).inc()
            produce(dlq_name, serde.encode(DEAD_LETTER, dead_letter_record(dead)))
        statuses = Counter_(r["status"] for r in out.sessions)
        for status, n in statuses.items():
            SESSIONS_OUT.labels(status).inc(n)
        for outcome, n in out.counts.items():
            EVENTS.labels(outcome).inc(n)

    def flush() -> None:
        """Block until Kafka holds every output of the batch; raise (the worker restarts and
        the batch is redelivered) if it refuses."""
        while producer.flush(30):
            log.warning("outputs not acknowledged after 30 s; still waiting for Kafka")
        if failed:
            error = failed[0]
            failed.clear()
            raise KafkaException(f"producing the sessionizer's outputs failed: {error}")

    @app.agent(source, concurrency=1)  # >1 can commit past an in-flight message (faust #606)
    async def sessionize(stream: faust.Stream) -> None:
        async for events in stream.take_events(settings.batch_size, within=1.0):
            by_partition: dict[int, list] = defaultdict(list)
            for event in events:
                by_partition[event.message.partition].append(event)
            for partition, group in by_partition.items():
                # Table writes go to the changelog partition of the current event: this one's.
                _current_event.set(weakref.ref(group[-1]))
                if isinstance(store, ChangelogStore):
                    store.partition = partition
                items, dead = [], Outputs()
                for event in group:
                    item = decoder.item(event.message)
                    if isinstance(item, DeadLetter):
                        dead.dead_letters.append(item)
                    else:
                        items.append(item)
                publish(dead)
                publish(processor.process(partition, items))
            await asyncio.get_running_loop().run_in_executor(None, flush)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        for tp in revoked:
            processor.forget_partition(tp.partition)

    @app.page("/readyz")
    async def readyz(web: object, request: object) -> object:
        ready = app.tables.recovery.completed.is_set()
        return web.json({"stage": STAGE, "status": "ok" if ready else "recovering"},
                        status=200 if ready else 503)

    @app.page("/healthz")
    async def healthz(web: object, request: object) -> object:
        return web.json({"stage": STAGE, "status": "ok"})

    if settings.tick_seconds > 0:
        watermark_topic = app.topic(raw_name, key_serializer="raw", value_serializer="raw")
        lateness_ms = int(settings.lateness_minutes * MINUTE_MS)

        @app.timer(settings.tick_seconds)
        async def tick() -> None:
            now = int(time.time() * 1000)
            value = serde.encode(WATERMARK, {"watermark_time": now - lateness_ms,
                                             "source": "tick", "issued_at": now})
            for partition in range(partitions):
                await watermark_topic.send(value=value, partition=partition,
                                           headers={"kizuna-type": WATERMARK.encode()})

    return app


def main() -> None:
    settings = load(SessionizerSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.common.log_level.lower(),
                          redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
