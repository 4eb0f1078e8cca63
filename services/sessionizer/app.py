"""The sessionizer's faust adapter: Kafka in, `PartitionProcessor` in the middle, Kafka out.

One agent reads the raw touchpoints and the stage's own handoff topic (co-partitioned: same
partition count, same Java-compatible partitioner), in batches. Each batch is split by
partition and handed to the pure processor; its state is a faust table with a changelog topic,
written once per changed key per batch. Sessions, handoffs, attributed touches and dead
letters are produced, and flushed, before the batch is acknowledged: processing is
at-least-once, and the outputs are idempotent (versioned sessions, touches deduplicated by
event_id downstream, deterministic dead-letter ids).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import faust
from prometheus_client import Counter, Gauge, Histogram

from services.common import dead_letters, faults, faust_stage, logs, stage_metrics
from services.common.kafka import ensure_topics
from services.common.serde import (
    DEAD_LETTER,
    ERASE,
    SESSION,
    TOUCHPOINT,
    TOUCHPOINT_BATCH,
    WATERMARK,
    AvroSerde,
)
from services.common.settings import SessionizerSettings, load
from services.common.topics import ATTRIBUTED, HANDOFF, SESSIONS, TOUCHPOINTS_DLQ, TOUCHPOINTS_RAW
from services.domain import attributed
from services.domain.eventtime import HOUR_MS, MINUTE_MS
from services.sessionizer.processor import (
    DeadLetter,
    Erase,
    Handoff,
    Outputs,
    PartitionProcessor,
    Touchpoint,
    Watermark,
    handoff_messages,
)
from services.sessionizer.sessions import SessionRules

log = logging.getLogger("kizuna.sessionizer")
STAGE = "sessionizer"
EVENTS = Counter("kizuna_sessionizer_events", "Touchpoints and handoffs by outcome", ["outcome"])
SESSIONS_OUT = Counter("kizuna_sessionizer_sessions", "Session updates emitted", ["status"])
OPEN_SESSIONS = Gauge("kizuna_sessionizer_open_sessions", "Sessions open in this worker's state")
DEAD_LETTERS = Counter("kizuna_sessionizer_dead_letters", "Dead letters by reason", ["reason"])
LATE = Counter("kizuna_sessionizer_late_touchpoints",
               "Touchpoints behind the allowed lateness that corrected their sessions",
               ["channel"])
LATENESS = Histogram("kizuna_sessionizer_lateness_seconds",
                     "How far behind its partition's event time a late touchpoint came",
                     ["channel"], buckets=(600, 1800, 3600, 6 * 3600, 86400, 7 * 86400,
                                           30 * 86400, 365 * 86400, 3650 * 86400))
EVENT_TIME = Gauge("kizuna_sessionizer_event_time_seconds",
                   "Event time each partition has reached (epoch seconds)", ["partition"])
OUTPUT_TIME = Gauge("kizuna_sessionizer_output_time_seconds",
                    "Event time each partition gives the next stages: the lowest every "
                    "partition has announced to it, held at logins waiting for their "
                    "device's history (epoch seconds)", ["partition"])


def rules_of(settings: SessionizerSettings) -> SessionRules:
    return SessionRules(gap_ms=int(settings.gap_minutes * MINUTE_MS),
                        max_length_ms=int(settings.max_length_hours * HOUR_MS),
                        lateness_ms=int(settings.lateness_minutes * MINUTE_MS),
                        retention_ms=settings.common.history_retention_ms)


def _header(message: faust.types.Message, name: str) -> bytes | None:
    headers = message.headers or ()
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return value
    return None


class Decoder:
    """Kafka messages to the processor's inputs; what cannot be read becomes a dead letter."""

    def __init__(self, raw_topic: str, serde: AvroSerde) -> None:
        self.raw_topic = raw_topic
        self.serde = serde

    def item(self, message: faust.types.Message) -> object:
        origin = (message.topic, message.partition, message.offset)
        value = message.value
        try:
            if message.topic != self.raw_topic:
                return Handoff(json.loads(value))
            kind = _header(message, "kizuna-type")
            if kind == ERASE.encode():
                return Erase(self.serde.decode(ERASE, value)["customer_id"])
            if kind == WATERMARK.encode():
                record = self.serde.decode(WATERMARK, value, epoch_ms=True)
                return Watermark(record["watermark_time"])
            if kind == TOUCHPOINT_BATCH.encode():  # timestamps in epoch ms, as the processor
                batch = self.serde.decode(TOUCHPOINT_BATCH, value, epoch_ms=True)
                return [Touchpoint(record, None, origin) for record in batch["touchpoints"]]
            record = self.serde.decode(TOUCHPOINT, value, epoch_ms=True)
        except ValueError as exc:  # DecodeError, JSONDecodeError
            reason = getattr(exc, "reason", "undecodable")
            return DeadLetter(reason, str(exc)[:500], value or b"", origin)
        return Touchpoint(record, value, origin)


def dead_letter_record(dead: DeadLetter, serde: AvroSerde) -> dict:
    payload = dead.payload
    if payload is None:  # one touchpoint of a batch message: keep that touchpoint alone
        payload = serde.encode(TOUCHPOINT, dead.record)
    return dead_letters.dead_letter(STAGE, dead.reason, dead.detail, payload, dead.origin)


def payload_of(serde: AvroSerde) -> Callable[[object, faust.types.EventT], bytes]:
    """What a poison record's dead letter keeps: a touchpoint alone (one of a batch message
    is encoded on its own), else the message's bytes."""
    def payload(value: object, event: faust.types.EventT) -> bytes:
        if isinstance(value, Touchpoint):
            return value.payload or serde.encode(TOUCHPOINT, value.record)
        return event.message.value or b""
    return payload


def create_app(settings: SessionizerSettings) -> faust.App:
    common = settings.common
    prefix = common.topic_prefix
    raw_name = TOUCHPOINTS_RAW.name(prefix)
    ensure_topics(common, (HANDOFF, ATTRIBUTED))
    handoff_name, sessions_name = HANDOFF.name(prefix), SESSIONS.name(prefix)
    attributed_name, dlq_name = ATTRIBUTED.name(prefix), TOUCHPOINTS_DLQ.name(prefix)
    parts = faust_stage.stage(STAGE, common, sources=(raw_name, handoff_name),
                              table="profiles", port=settings.port, store=settings.store,
                              batch_size=settings.batch_size)
    app, table, outbox, partitions = parts.app, parts.table, parts.outbox, parts.partitions
    processor = PartitionProcessor(rules_of(settings), parts.store, partitions)
    # Computed when scraped: the live sessions held in this worker's state.
    OPEN_SESSIONS.set_function(lambda: sum(
        len(state["emitted"]) for key, state in list(table.items()) if key[:2] in ("c:", "a:")))
    serde = parts.serde
    serde.prepare((SESSION, WATERMARK, TOUCHPOINT, DEAD_LETTER))
    decoder = Decoder(raw_name, serde)

    def publish(out: Outputs, partition: int) -> None:
        produce = outbox.produce
        for record in out.sessions:
            produce(sessions_name, serde.encode(SESSION, record), record["profile_id"].encode())
            SESSIONS_OUT.labels(record["status"]).inc()
        for key, message, target in handoff_messages(out, partition, partitions):
            produce(handoff_name, json.dumps(message).encode(), key and key.encode(),
                    -1 if target is None else target)
        if out.stream_time is not None:
            EVENT_TIME.labels(str(partition)).set(max(out.stream_time, 0) / 1000)
        # The partition's customers are the same on the co-partitioned topic (the message
        # is services.domain.attributed's).
        if out.attributed or out.erased or out.output_time is not None:
            stream_time = processor.output_time(partition)
            OUTPUT_TIME.labels(str(partition)).set(max(stream_time, 0) / 1000)
            for message in attributed.encode(stream_time, out.attributed, out.erased,
                                             held=out.held_time):
                produce(attributed_name, message, None, partition)
        for channel, behind_ms in out.late:
            LATE.labels(channel).inc()
            LATENESS.labels(channel).observe(behind_ms / 1000)
        for dead in out.dead_letters:
            DEAD_LETTERS.labels(dead.reason).inc()
            produce(dlq_name, serde.encode(DEAD_LETTER, dead_letter_record(dead, serde)))
        for corrupt in out.corrupt:
            parts.corrupt_state(corrupt)
        for outcome, n in out.counts.items():
            EVENTS.labels(outcome).inc(n)

    def split(event: faust.types.EventT) -> list:
        """A message's items: its touchpoints (a batch message has several), a control
        record, a handoff, or the dead letter of what could not be read."""
        item = decoder.item(event.message)
        return item if isinstance(item, list) else [item]

    fault = faults.markers(common.fault_injection, STAGE)

    def handle(partition: int, values: list) -> None:
        faults.check(fault, (x.record["event_id"] for x in values if isinstance(x, Touchpoint)))
        items, dead = [], Outputs()
        for item in values:
            if isinstance(item, DeadLetter):
                dead.dead_letters.append(item)
            else:
                items.append(item)
        publish(dead, partition)
        publish(processor.process(partition, items), partition)
        newest = next((x for x in reversed(items) if isinstance(x, Touchpoint)), None)
        if newest is not None:
            stage_metrics.observe_latency(STAGE, newest.record["event_time"],
                                        newest.record["received_at"])

    parts.agent(handle, split, payload_of(serde))
    parts.on_revoked(processor.drop_index)

    if settings.tick_seconds > 0:
        lateness_ms = int(settings.lateness_minutes * MINUTE_MS)

        @app.timer(settings.tick_seconds)
        async def tick() -> None:
            now = int(time.time() * 1000)
            value = serde.encode(WATERMARK, {"watermark_time": now - lateness_ms,
                                             "source": "tick", "issued_at": now})
            # through the outbox like every output: never inside a batch's transaction,
            # since a batch never gives way to the event loop before it has committed
            for partition in range(partitions):
                outbox.produce(raw_name, value, None, partition,
                               headers={"kizuna-type": WATERMARK.encode()})
            await outbox.flush_async()

    return app


def main() -> None:
    settings = load(SessionizerSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    faust_stage.run_worker(create_app(settings), settings.common)
