"""A stage's outputs to Kafka: librdkafka, idempotent, acks=all, one flush per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from services.common.kafka import client_config
from services.common.settings import Settings


class Outbox:
    """A stage's outputs through librdkafka (a few us a message, against tens through faust's
    own producer), idempotent and acks=all, flushed once per batch. Inside a transaction
    (`begin`), outputs wait for `commit`, and `rollback` drops them: a batch that raised
    sends nothing of what it had done."""

    def __init__(self, common: Settings, error_cb: Callable | None = None) -> None:
        extra = {"error_cb": error_cb} if error_cb is not None else {}
        self.producer = Producer({
            **client_config(common), **extra, "enable.idempotence": True, "acks": "all",
            "partitioner": "murmur2_random", "compression.type": "lz4", "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000})
        self.failed: list[str] = []
        self.held: list[tuple] | None = None

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self.failed.append(err.str())

    def begin(self) -> None:
        self.held = []

    def commit(self) -> None:
        held, self.held = self.held or [], None
        for args in held:
            self._produce(*args)

    def rollback(self) -> None:
        self.held = None

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                partition: int = -1, headers: dict[str, bytes] | None = None) -> None:
        if self.held is not None:
            self.held.append((topic, value, key, partition, headers))
        else:
            self._produce(topic, value, key, partition, headers)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 partition: int, headers: dict[str, bytes] | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=self._delivered,
                                      headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self) -> None:
        """Block until Kafka holds every output; raise if it refused one (the worker stops,
        and the unacknowledged batch is redelivered to the next one)."""
        while self.producer.flush(30):
            pass  # Kafka is slow or away: keep waiting, nothing is acknowledged meanwhile
        if self.failed:
            error = self.failed[0]
            self.failed.clear()
            raise KafkaException(f"producing outputs failed: {error}")

    async def flush_async(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.flush)
