"""What every faust stage shares: the app, batches per partition, outputs, state, readiness.

A stage's agent takes batches of events, handles each partition's events together (table
writes go to the changelog partition of the current event, so it is set per partition),
queues its outputs in an `Outbox`, and flushes the outbox before the next batch: faust
commits offsets only of events acknowledged after that, so processing is at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import NoReturn

import faust
import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event
from prometheus_client import Gauge, Histogram

from services.common.kafka import admin_client, client_config
from services.common.settings import Settings

log = logging.getLogger("kizuna.stage")

#: How far behind a stage runs, per batch: `wall` from the collector's receipt of the batch's
#: newest event to its processing; `event` from that event's event time (so a replay of old
#: events reads as days behind).
LATENCY = Histogram(
    "kizuna_stage_latency_seconds", "Processing latency of each batch's newest event",
    ["stage", "clock"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400,
             604800))
STATE_KEYS = Gauge("kizuna_stage_state_keys", "Keys in this worker's state table", ["stage"])


def observe_latency(stage: str, event_time_ms: int | None,
                    received_at_ms: int | None = None) -> None:
    now = time.time()
    if event_time_ms is not None and event_time_ms > 0:
        LATENCY.labels(stage, "event").observe(max(0.0, now - event_time_ms / 1000))
    if received_at_ms is not None and received_at_ms > 0:
        LATENCY.labels(stage, "wall").observe(max(0.0, now - received_at_ms / 1000))


def create_app(name: str, common: Settings, *, port: int, store: str, partitions: int,
               batch_size: int) -> faust.App:
    app = faust.App(
        f"{common.topic_prefix}{name}",
        broker=f"kafka://{common.kafka_bootstrap}",
        store=store,
        datadir=str(common.home / name),
        topic_partitions=partitions,
        topic_replication_factor=common.replication_factor,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_bind=common.bind_host,
        web_port=port,
        web_in_thread=False,
        stream_wait_empty=False,
        broker_max_poll_records=batch_size,
        stream_buffer_maxsize=2 * batch_size,
        producer_acks=-1,
        consumer_group_instance_id=common.group_instance_id(name),
    )
    # faust's own sensor: consumer and table metrics (about 25 us a message, see benchmarks).
    setup_prometheus_sensors(app, name_prefix=f"kizuna_{name}_faust")

    @app.page("/readyz")
    async def readyz(web: object, request: object) -> object:
        ready = app.tables.recovery.completed.is_set()
        return web.json({"stage": name, "status": "ok" if ready else "recovering"},
                        status=200 if ready else 503)

    @app.page("/healthz")
    async def healthz(web: object, request: object) -> object:
        return web.json({"stage": name, "status": "ok"})

    return app


def run_worker(app: faust.App, common: Settings) -> None:
    """Run a stage's app in the foreground until it is stopped (its process's main)."""
    faust.Worker(app, loglevel=common.log_level.lower(), redirect_stdouts=False,
                 override_logging=False).execute_from_commandline()


def fail_stop(stage: str, exc: BaseException) -> NoReturn:
    """Stop the process now, because a batch failed.

    faust's `take_events` acknowledges a batch in a `finally`, even when the agent raised,
    and then restarts the agent. That would commit the offsets of events never processed: a
    silent loss. Exiting before that `finally` runs leaves the batch unacknowledged. The
    process runner (supervisord, Kubernetes) starts the stage again, and the batch is
    redelivered.
    """
    log.critical("%s: a batch failed; stopping before it is acknowledged (it will be "
                 "redelivered): %r", stage, exc, exc_info=exc)
    logging.shutdown()
    os._exit(70)


def by_partition(events: list[faust.types.EventT]) -> dict[int, list[faust.types.EventT]]:
    groups: dict[int, list] = defaultdict(list)
    for event in events:
        groups[event.message.partition].append(event)
    return groups


def use_partition(event: faust.types.EventT) -> None:
    """Make `event` the current one: table writes then go to its changelog partition."""
    _current_event.set(weakref.ref(event))


class Outbox:
    """A stage's outputs through librdkafka (a few us a message, against tens through faust's
    own producer), idempotent and acks=all, flushed once per batch."""

    def __init__(self, common: Settings) -> None:
        self.producer = Producer({
            **client_config(common), "enable.idempotence": True, "acks": "all",
            "partitioner": "murmur2_random", "compression.type": "lz4", "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000})
        self.failed: list[str] = []

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self.failed.append(err.str())

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=self._delivered)
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


class ChangelogStore(MutableMapping):
    """A table's memory store, with changelog records produced through the outbox.

    faust writes one changelog message per key through aiokafka, at tens of microseconds each
    on the event loop. This writes the very records faust would (JSON key and value, a
    tombstone on delete, to the changelog partition of the batch's partition), so faust's own
    recovery rebuilds the table unchanged. Set `partition` before each partition's writes.
    """

    def __init__(self, table: faust.Table, produce: Callable[..., None]) -> None:
        self.data = table.data
        self.topic = table.changelog_topic.get_topic_name()
        self.produce = produce
        self.partition = 0
        # Changelog records wait for `write_changelog`, after the batch's outputs are in
        # Kafka: a crash between the two replays the batch with the state before it, so its
        # outputs (an alert: a decision taken once) are produced again, never lost.
        self.pending: list[tuple[bytes | None, bytes, int]] = []

    def write_changelog(self) -> None:
        for value, key, partition in self.pending:
            self.produce(self.topic, value, key, partition)
        self.pending.clear()

    def __getitem__(self, key: str) -> object:
        return self.data[key]

    def get(self, key: str, default: object = None) -> object:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: object) -> None:
        self.data[key] = value
        self.pending.append((orjson.dumps(value), orjson.dumps(key), self.partition))

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.pending.append((None, orjson.dumps(key), self.partition))

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def state_store(table: faust.Table, store_url: str, outbox: Outbox) -> MutableMapping:
    """Memory: the changelog through the outbox; rocksdb: faust's own path (it tracks the
    changelog offsets it has applied to the local database)."""
    return ChangelogStore(table, outbox.produce) if store_url.startswith("memory") else table


def enter_partition(store: MutableMapping, event: faust.types.EventT) -> None:
    use_partition(event)
    if isinstance(store, ChangelogStore):
        store.partition = event.message.partition



#: State key of the last offset of `topic`[`partition`] whose effects the state holds.
def offset_key(topic: str, partition: int) -> str:
    return f"\x00offset:{topic}:{partition}"


def unseen(store: MutableMapping, events: list[faust.types.EventT]) -> list:
    """The events the state has not taken yet. A batch whose state reached the changelog
    but whose offsets were not committed yet (a crash in that second) is redelivered: its
    events are skipped, so nothing is counted twice and no session closed by it is reopened
    by its own touches. Its outputs are in Kafka already: they went first."""
    marks: dict[tuple[str, int], int] = {}
    fresh = []
    for event in events:
        m = event.message
        where = (m.topic, m.partition)
        if where not in marks:
            marks[where] = store.get(offset_key(*where), -1)
        if m.offset > marks[where]:
            fresh.append(event)
    return fresh


def mark_seen(store: MutableMapping, events: list[faust.types.EventT]) -> None:
    last: dict[tuple[str, int], int] = {}
    for event in events:
        m = event.message
        last[(m.topic, m.partition)] = max(last.get((m.topic, m.partition), -1), m.offset)
    for (topic, partition), offset in last.items():
        store[offset_key(topic, partition)] = offset


@dataclass
class Stage:
    """A stage's faust parts: the app, its source topic(s), its state and its outputs."""

    name: str
    app: faust.App
    source: faust.TopicT
    table: faust.Table
    outbox: Outbox
    store: MutableMapping
    partitions: int
    batch_size: int
    batch_wait: float  # seconds take_events waits to fill a batch

    def agent(self, handle: Callable[[int, list[faust.types.EventT]], None]) -> None:
        """Run `handle(partition, events)` for each partition's events of every batch, then
        put the outputs in Kafka, then the state's changelog, before the batch is
        acknowledged; any failure stops the worker before faust can acknowledge the batch
        (`fail_stop`)."""

        async def process(stream: faust.Stream) -> None:
            async for events in stream.take_events(self.batch_size, within=self.batch_wait):
                try:
                    await self.run_batch(events, handle)
                except asyncio.CancelledError:
                    # faust cancels the agent on a stop or a rebalance. `handle` never awaits,
                    # so the cancel lands in a flush of a batch already processed: finish it,
                    # blocking, and let take_events acknowledge it. faust then leaves the
                    # consumer group, and a restarted worker need not wait out the session
                    # timeout.
                    try:
                        self.finish_blocking()
                    except BaseException as exc:  # noqa: BLE001
                        fail_stop(self.name, exc)
                    raise
                except BaseException as exc:  # noqa: BLE001 - nothing of this batch may be acked
                    fail_stop(self.name, exc)

        process.__name__ = process.__qualname__ = self.name
        # concurrency 1: more can commit past an in-flight message (faust #606)
        self.app.agent(self.source, name=self.name, concurrency=1)(process)

    async def run_batch(self, events: list[faust.types.EventT],
                        handle: Callable[[int, list[faust.types.EventT]], None]) -> None:
        store, outbox = self.store, self.outbox
        for partition, group in by_partition(events).items():
            enter_partition(store, group[-1])
            fresh = unseen(store, group)
            if fresh:
                handle(partition, fresh)
                mark_seen(store, fresh)
        await outbox.flush_async()  # the outputs first, then the state
        if isinstance(store, ChangelogStore):
            store.write_changelog()
            await outbox.flush_async()

    def finish_blocking(self) -> None:
        """The end of `run_batch`, without giving way to the event loop (a second write of
        the changelog writes nothing: its records are cleared once produced)."""
        self.outbox.flush()
        if isinstance(self.store, ChangelogStore):
            self.store.write_changelog()
            self.outbox.flush()

    def on_revoked(self, forget: Callable[[int], None]) -> None:
        """`forget(partition)` for each partition this worker loses in a rebalance."""

        async def revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
            for tp in revoked:
                forget(tp.partition)

        self.app.on_partitions_revoked.connect(revoked)


def stage(name: str, common: Settings, *, sources: tuple[str, ...], table: str, port: int,
          store: str, batch_size: int) -> Stage:
    """Create a stage reading the raw bytes of `sources` (co-partitioned: the first one's
    partition count is the stage's), with one JSON-valued table."""
    partitions = len(admin_client(common).list_topics(timeout=30).topics[sources[0]].partitions)
    app = create_app(name, common, port=port, store=store, partitions=partitions,
                     batch_size=batch_size)
    source = app.topic(*sources, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    state = app.Table(table, default=None, partitions=partitions)
    outbox = Outbox(common)
    stage_store = state_store(state, store, outbox)
    STATE_KEYS.labels(name).set_function(lambda: len(stage_store))
    return Stage(name, app, source, state, outbox, stage_store, partitions, batch_size,
                 common.batch_wait_seconds)
