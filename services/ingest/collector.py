"""What the collector does with a request body, apart from HTTP and Kafka (pure, testable)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka.partitioner import murmur2

from services.common.serde import DEAD_LETTER, TOUCHPOINT, TOUCHPOINT_BATCH, AvroSerde, array
from services.common.topics import TOUCHPOINTS_DLQ, TOUCHPOINTS_RAW
from services.ingest.producer import Message
from services.ingest.validation import Enrichment, Rejection, profile_id, validate

STAGE = "ingest"


class RequestError(Exception):
    """The whole request is refused (400 or 413)."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class Outcome:
    records: list[dict] = field(default_factory=list)
    rejected: list[tuple[int, object, Rejection, bytes]] = field(default_factory=list)

    def response(self) -> dict:
        return {
            "accepted": len(self.records),
            "rejected": [
                {"index": index, "event_id": event_id, **rejection.as_dict()}
                for index, event_id, rejection, _ in self.rejected
            ],
        }


def split_events(payload: object, max_events: int) -> tuple[list[object], bool]:
    """The events of a body (one event, or {"events": [...]}) and whether it was a batch."""
    if isinstance(payload, dict) and "events" in payload and "event_id" not in payload:
        events = payload["events"]
        if not isinstance(events, list):
            raise RequestError(400, "invalid_batch", '"events" must be an array')
        if len(events) > max_events:
            raise RequestError(
                413, "too_many_events", f"{len(events)} events; at most {max_events} a request")
        return events, True
    if isinstance(payload, list):
        raise RequestError(400, "invalid_batch", 'a batch is {"events": [...]}, not an array')
    return [payload], False


def process(payload: object, raw_body: bytes, enrich: Enrichment, *, max_events: int,
            max_event_bytes: int) -> Outcome:
    events, batch = split_events(payload, max_events)
    return process_events(events, batch, raw_body, enrich, max_event_bytes=max_event_bytes)


def process_events(events: list[object], batch: bool, raw_body: bytes, enrich: Enrichment, *,
                   max_event_bytes: int, originals: list[object] | None = None) -> Outcome:
    """Validate `events`; a rejected one keeps its raw form as evidence: the body, or the
    event, or `originals[i]` when the events were mapped from another format."""
    if not batch and len(raw_body) > max_event_bytes:
        raise RequestError(
            413, "event_too_large", f"event is {len(raw_body)} bytes; at most {max_event_bytes}")
    outcome = Outcome()
    # No event of a body within the per-event limit can exceed it: measure only when needed.
    measure = batch and len(raw_body) > max_event_bytes
    for index, event in enumerate(events):
        raw = _compact(event) if measure else None
        if raw is not None and len(raw) > max_event_bytes:
            result: dict | Rejection = Rejection(
                "too_large", "", f"event is {len(raw)} bytes; at most {max_event_bytes}")
        else:
            result = validate(event, enrich)
        if isinstance(result, Rejection):
            event_id = event.get("event_id") if isinstance(event, dict) else None
            event_id = event_id if isinstance(event_id, str) else None
            if originals is not None:
                raw = _compact(originals[index])
            elif raw is None:
                raw = _compact(event) if batch else raw_body
            outcome.rejected.append((index, event_id, result, raw))
        else:
            outcome.records.append(result)
    return outcome


def _compact(event: object) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


#: Where a rejected event was read from when it came from a topic: (topic, partition, offset).
Origin = tuple[str, int, int]


def dead_letter(reason: str, detail: str, source: str | None, payload: bytes,
                received_at_ms: int, origin: Origin | None = None) -> dict:
    # the same payload delivered again is the same dead letter; read from a topic, its place
    # there is part of what it is
    where = "{}\0{}\0{}\0".format(*origin) if origin else ""
    digest = hashlib.sha256(f"{STAGE}\0{source}\0{where}".encode() + payload).hexdigest()[:32]
    topic, partition, offset = origin or (None, None, None)
    return {
        "dead_letter_id": digest, "reason": reason, "detail": detail, "stage": STAGE,
        "source": source, "payload": payload, "received_at": received_at_ms,
        "origin_topic": topic, "origin_partition": partition, "origin_offset": offset,
    }


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java client (and faust, and Kafka Streams) gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionBatcher:
    """Packs accepted touchpoints into one Kafka message per partition and up to `size`
    touchpoints (schema touchpoint_batch, header kizuna-type), so that a bulk import costs
    the stages one message per few hundred events instead of one per event. A partition's
    touchpoints keep their order; a lone one goes as an ordinary keyed touchpoint message."""

    def __init__(self, serde: AvroSerde, topic: str, partitions: int, send,
                 size: int = 500) -> None:
        self.topic = topic
        self.partitions = partitions
        self.send = send  # (topic, value, key, events, **produce options)
        self.size = size
        self.serde = serde
        self.pending: dict[int, list[dict]] = {}

    def add(self, record: dict) -> None:
        key = profile_id(record).encode()
        self.add_encoded(partition_of(key, self.partitions), key,
                         self.serde.datum(TOUCHPOINT, record))

    def add_encoded(self, partition: int, key: bytes, datum: bytes) -> None:
        """A touchpoint already encoded (its Avro datum), for `partition`, keyed by `key`."""
        batch = self.pending.setdefault(partition, [])
        batch.append((key, datum))
        if len(batch) >= self.size:
            self._send(partition)

    def flush(self) -> None:
        for partition in list(self.pending):
            self._send(partition)

    def _send(self, partition: int) -> None:
        batch = self.pending.pop(partition)
        if len(batch) == 1:
            key, datum = batch[0]
            self.send(self.topic, self.serde.frame(TOUCHPOINT, datum), key, 1)
            return
        value = self.serde.frame(TOUCHPOINT_BATCH, array([datum for _, datum in batch]))
        self.send(self.topic, value, None, len(batch), partition=partition,
                  headers={"kizuna-type": TOUCHPOINT_BATCH})


class Linger:
    """Touchpoints of concurrent requests, gathered for `linger` seconds, go as one batch
    message per partition (PartitionBatcher's): a thousand single-event requests a second
    reach the stages as a few messages, not a thousand. A request's events are appended in
    the order requests come (one event loop), so a profile's order is kept. `add` returns
    when Kafka acknowledged (None) or refused (the error) the messages holding them."""

    def __init__(self, serde: AvroSerde, topic: str, partitions: int,
                 send: Callable[[list[Message]], Awaitable[str | None]], linger: float,
                 size: int = 500) -> None:
        self.serde = serde
        self.topic = topic
        self.partitions = partitions
        self.send = send  # the producer's: messages -> awaitable error or None
        self.linger = linger
        self.size = size  # touchpoints at which a gathering goes at once
        self.pending: list[tuple[int, bytes, bytes]] = []  # partition, key, datum
        self.done: asyncio.Future[str | None] | None = None  # the pending gathering's
        self.timer: asyncio.TimerHandle | None = None

    async def add(self, records: list[dict]) -> str | None:
        datum = self.serde.datum
        for record in records:
            key = profile_id(record).encode()
            self.pending.append((partition_of(key, self.partitions), key,
                                 datum(TOUCHPOINT, record)))
        done = self.done
        if done is None:
            loop = asyncio.get_running_loop()
            done = self.done = loop.create_future()
            self.timer = loop.call_later(self.linger, self.flush)
        if len(self.pending) >= self.size:
            self.flush()
        return await asyncio.shield(done)

    def flush(self) -> None:
        """Send what is gathered (the timer's, or at `size`)."""
        if self.timer is not None:
            self.timer.cancel()
        pending, done = self.pending, self.done
        self.pending, self.done, self.timer = [], None, None
        if done is None:
            return
        messages: list[Message] = []
        batcher = PartitionBatcher(
            self.serde, self.topic, self.partitions,
            lambda topic, value, key, _n, partition=-1, headers=None: messages.append(
                (topic, key, value, partition, headers)), size=self.size)
        for partition, key, datum in pending:
            batcher.add_encoded(partition, key, datum)
        batcher.flush()

        def answered(task: asyncio.Future[str | None]) -> None:
            if done.done():
                return
            if task.cancelled():
                done.set_result("sending was cancelled (the collector stopping)")
            elif task.exception() is not None:
                error = task.exception()
                done.set_result(f"{type(error).__name__}: {error}")
            else:
                done.set_result(task.result())

        asyncio.ensure_future(self.send(messages)).add_done_callback(answered)


class MessageBuilder:
    """Kafka messages of the collector and the importer: touchpoints and dead letters."""

    def __init__(self, serde: AvroSerde, prefix: str,
                 redact: Callable[[bytes], bytes] = lambda payload: payload,
                 partitions: int | None = None) -> None:
        self.serde = serde
        self.encode = serde.encode
        self.raw_topic = TOUCHPOINTS_RAW.name(prefix)
        self.dlq_topic = TOUCHPOINTS_DLQ.name(prefix)
        self.redact = redact  # PII in the evidence of a dead letter
        # The raw topic's partitions: a request's touchpoints then go as one batch message
        # per partition. None (not known yet): one keyed message per touchpoint.
        self.partitions = partitions

    def touchpoint(self, record: dict) -> Message:
        return (self.raw_topic, profile_id(record).encode(), self.encode(TOUCHPOINT, record), -1,
                None)

    def dead_letter(self, reason: str, detail: str, source: str | None, payload: bytes,
                    received_at_ms: int, origin: Origin | None = None) -> Message:
        return self.dlq_topic, None, self.encode(DEAD_LETTER, dead_letter(
            reason, detail, source, self.redact(payload), received_at_ms, origin)), -1, None

    def rejected(self, rejection: Rejection, source: str | None, payload: bytes,
                 received_at_ms: int, origin: Origin | None = None) -> Message:
        return self.dead_letter(rejection.reason, rejection.describe(), source, payload,
                                received_at_ms, origin)

    def of(self, outcome: Outcome, source: str, received_at_ms: int) -> list[Message]:
        """A request's Kafka messages: its touchpoints as one batch message per partition (the
        stages pay their per-message cost once per batch), then its dead letters."""
        if self.partitions and len(outcome.records) > 1:
            messages: list[Message] = []
            batcher = PartitionBatcher(
                self.serde, self.raw_topic, self.partitions,
                lambda topic, value, key, _n, partition=-1, headers=None: messages.append(
                    (topic, key, value, partition, headers)))
            for record in outcome.records:
                batcher.add(record)
            batcher.flush()
        else:
            messages = [self.touchpoint(r) for r in outcome.records]
        messages += [self.rejected(rej, source, raw, received_at_ms)
                     for _, _, rej, raw in outcome.rejected]
        return messages


class TokenBucket:
    """Events per second with bursts of `burst_seconds`; `take` returns seconds to wait."""

    def __init__(self, rate: float, burst_seconds: float = 2.0) -> None:
        self.rate = rate
        self.capacity = max(rate * burst_seconds, 1.0)
        self.tokens = self.capacity
        self.updated: float | None = None

    def take(self, n: int, now: float) -> float:
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate
