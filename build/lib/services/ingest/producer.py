"""Kafka producing for the collector: idempotent, acks=all, and awaitable per batch.

A request is answered only when Kafka has acknowledged (or refused) every message of it:
delivery reports from librdkafka's poll thread count down one future per batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Producer

from services.common.kafka import client_config
from services.common.settings import IngestSettings

#: topic, key, value, partition (-1: by key), headers
Message = tuple[str, bytes | None, bytes, int, dict[str, str] | None]


def producer_config(settings: IngestSettings) -> dict[str, object]:
    return {
        **client_config(settings.common),
        "enable.idempotence": True,  # implies acks=all, no reordering or duplicates on retry
        "acks": "all",
        # Java-compatible partitioning (Kafka Streams, faust and aiokafka use it too): the
        # stages' own co-partitioned topics must put a profile on the same partition number.
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "message.timeout.ms": settings.produce_timeout_ms,
        "queue.buffering.max.messages": 500000,
    }


class _BatchAck:
    """Counts delivery reports of one batch; only the poll thread calls `report`."""

    __slots__ = ("loop", "future", "remaining", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[str | None] = loop.create_future()
        self.remaining = count
        self.error: str | None = None

    def report(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None and self.error is None:
            self.error = err.str()
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


class BatchProducer:
    def __init__(self, settings: IngestSettings) -> None:
        self._producer = Producer(producer_config(settings))
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    async def send(self, messages: Sequence[Message]) -> str | None:
        """Produce all; None when Kafka holds every message, else the first error."""
        if not messages:
            return None
        ack = _BatchAck(asyncio.get_running_loop(), len(messages))
        produce = self._producer.produce
        for topic, key, value, partition, headers in messages:
            try:
                produce(topic, value, key, partition, on_delivery=ack.report, headers=headers)
            except (BufferError, KafkaException) as exc:
                # What was queued still gets delivered; the client retries the whole batch and
                # downstream deduplicates by event_id. Nobody awaits this batch's future.
                return f"producer queue refused the batch: {exc}"
        return await ack.future

    def partitions(self, topic: str, timeout: float = 10.0) -> int | None:
        """The topic's partition count; None when the broker or the topic is not there."""
        try:
            found = self._producer.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException:
            return None
        return len(found.partitions) if found is not None and found.partitions else None

    def broker_reachable(self, timeout: float = 2.0) -> bool:
        try:
            return bool(self._producer.list_topics(timeout=timeout).brokers)
        except KafkaException:
            return False

    def close(self, timeout: float = 10.0) -> int:
        remaining = self._producer.flush(timeout)
        self._running = False
        self._poller.join(2)
        return remaining
