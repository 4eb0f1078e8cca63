"""What every faust stage shares: the app, batches per partition, outputs, state, readiness.

A stage's agent takes batches of events, handles each partition's events together (table
writes go to the changelog partition of the current event, so it is set per partition),
queues its outputs in an `Outbox`, and flushes the outbox before the next batch: faust
commits offsets only of events acknowledged after that, so processing is at-least-once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import faust
import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event
from prometheus_client import Counter, Gauge, Histogram

from services.common import isolation
from services.common.kafka import admin_client, client_config, ensure_topics
from services.common.progress import Progress
from services.common.schema_registry import serde_for
from services.common.serde import DEAD_LETTER, AvroSerde, default_serde
from services.common.settings import Settings
from services.common.topics import TOUCHPOINTS_DLQ, framework_topics
from services.domain import attributed
from services.domain.processing import CorruptState

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
POISON = Counter("kizuna_stage_poison_records",
                 "Records a stage could not process, dead-lettered", ["stage", "reason"])


def observe_latency(stage: str, event_time_ms: int | None,
                    received_at_ms: int | None = None) -> None:
    now = time.time()
    if event_time_ms is not None and event_time_ms > 0:
        LATENCY.labels(stage, "event").observe(max(0.0, now - event_time_ms / 1000))
    if received_at_ms is not None and received_at_ms > 0:
        LATENCY.labels(stage, "wall").observe(max(0.0, now - received_at_ms / 1000))


def state_directory(common: Settings, name: str) -> Path:
    """Where a stage keeps its local state: per consumer group (topic prefix and stage), so
    that two pipelines sharing a KIZUNA_HOME never read each other's databases."""
    directory = common.home / "state" / f"{common.topic_prefix}{name}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def rocksdb_options(common: Settings) -> dict:
    """faust's RocksDB options, bounded: its defaults give each partition's database a
    2 GiB block cache and three 64 MiB write buffers."""
    return {"block_cache_size": common.state_cache_mb * 2**20,
            "block_cache_compressed_size": 0,
            "write_buffer_size": common.state_write_buffer_mb * 2**20,
            "max_write_buffer_number": 2}


def create_app(name: str, common: Settings, *, port: int, store: str, partitions: int,
               batch_size: int, progress: Progress | None = None) -> faust.App:
    app = faust.App(
        f"{common.topic_prefix}{name}",
        broker=[f"kafka://{server.strip()}" for server in common.kafka_bootstrap.split(",")],
        broker_credentials=common.kafka.faust_credentials(),
        store=store,
        datadir=str(state_directory(common, name)),
        topic_partitions=partitions,
        topic_replication_factor=common.replication_factor,
        table_standby_replicas=common.standby_replicas,
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
        if not app.tables.recovery.completed.is_set():
            return web.json({"stage": name, "status": "recovering"}, status=503)
        problem = progress.problem() if progress is not None else None
        if problem is not None:
            return web.json({"stage": name, "status": "stalled", "reason": problem},
                            status=503)
        return web.json({"stage": name, "status": "ok"})

    @app.page("/healthz")
    async def healthz(web: object, request: object) -> object:
        return web.json({"stage": name, "status": "ok"})

    if common.fault_injection:  # chaos testing only: stall a partition on purpose
        @app.page("/v1/faults/{action}")
        async def faults(web: object, request: object, action: str) -> object:
            from faust.types import TP

            query = request.query  # type: ignore[attr-defined]
            tp = TP(query["topic"], int(query["partition"]))
            if action == "pause":
                app.consumer.pause_partitions({tp})
            elif action == "resume":
                app.consumer.resume_partitions({tp})
            else:
                return web.json({"error": "pause or resume"}, status=404)
            return web.json({"stage": name, action: f"{tp.topic}[{tp.partition}]"})

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
                partition: int = -1) -> None:
        if self.held is not None:
            self.held.append((topic, value, key, partition))
        else:
            self._produce(topic, value, key, partition)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 partition: int) -> None:
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


class BatchStore(MutableMapping):
    """The state as a batch sees it: inside a transaction (`begin`) its writes and deletes
    wait for `commit`, and `rollback` forgets them, so a batch that raised leaves no trace.
    The stages change the states they read in place, so a read inside a transaction gives a
    copy (once per key: later reads give the same object) when the store underneath hands out
    its own objects (the memory store; rocksdb decodes anew at each read)."""

    def __init__(self, inner: MutableMapping, copy_reads: bool) -> None:
        self.inner = inner
        self.copy_reads = copy_reads
        self.active = False
        self.reads: dict = {}
        self.writes: dict = {}
        self.deleted: set = set()

    def begin(self) -> None:
        self.active = True
        self.reads, self.writes, self.deleted = {}, {}, set()

    def commit(self) -> None:
        writes, deleted = self.writes, self.deleted
        self.rollback()
        for key in deleted:
            if key in self.inner:
                del self.inner[key]
        for key, value in writes.items():
            self.inner[key] = value

    def rollback(self) -> None:
        self.active = False
        self.reads, self.writes, self.deleted = {}, {}, set()

    def get(self, key: str, default: object = None) -> object:
        if not self.active:
            return self.inner.get(key, default)
        if key in self.writes:
            return self.writes[key]
        if key in self.deleted:
            return default
        if key in self.reads:
            return self.reads[key]
        value = self.inner.get(key, default)
        if self.copy_reads and isinstance(value, dict | list):
            value = orjson.loads(orjson.dumps(value))
        if value is not default:
            self.reads[key] = value
        return value

    def __getitem__(self, key: str) -> object:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: object) -> None:
        if not self.active:
            self.inner[key] = value
            return
        self.writes[key] = value
        self.deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        if not self.active:
            del self.inner[key]
            return
        if key not in self:
            raise KeyError(key)
        self.writes.pop(key, None)
        self.reads.pop(key, None)
        self.deleted.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self.writes or (key not in self.deleted and key in self.inner)

    def __iter__(self) -> Iterator[str]:
        for key in self.inner:
            if key not in self.deleted and key not in self.writes:
                yield key
        yield from self.writes

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self):  # noqa: ANN201 - read-only views for the indexes: no copies
        for key in self:
            yield key, self.writes[key] if key in self.writes else self.inner.get(key)


def state_store(table: faust.Table, store_url: str, outbox: Outbox) -> BatchStore:
    """Memory: the changelog through the outbox; rocksdb: faust's own path (it tracks the
    changelog offsets it has applied to the local database). Either way, behind a
    `BatchStore`, so that a batch's writes land together or not at all."""
    memory = store_url.startswith("memory")
    return BatchStore(ChangelogStore(table, outbox.produce) if memory else table,
                      copy_reads=memory)


def enter_partition(store: MutableMapping, event: faust.types.EventT) -> None:
    use_partition(event)
    inner = store.inner if isinstance(store, BatchStore) else store
    if isinstance(inner, ChangelogStore):
        inner.partition = event.message.partition



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
class Unit:
    """What the stage's logic takes one at a time when a batch must be bisected: a message,
    or one record of a message that holds several (`last`: the message's last)."""

    value: object
    event: faust.types.EventT
    last: bool = True


class _Transaction:
    """One partition's batch (or part of it): the state's writes and the outputs, together."""

    def __init__(self, stage: Stage, partition: int) -> None:
        self.stage, self.partition = stage, partition

    def begin(self) -> None:
        self.stage.store.begin()
        self.stage.outbox.begin()

    def commit(self) -> None:
        self.stage.outbox.commit()  # the outputs first (a refused one is the record's)
        self.stage.store.commit()

    def rollback(self) -> None:
        self.stage.outbox.rollback()
        self.stage.store.rollback()
        for forget in self.stage.forget:  # indexes built over the state are rebuilt
            forget(self.partition)


@dataclass
class Stage:
    """A stage's faust parts: the app, its source topic(s), its state and its outputs."""

    name: str
    app: faust.App
    source: faust.TopicT
    table: faust.Table
    outbox: Outbox
    store: BatchStore
    partitions: int
    batch_size: int
    batch_wait: float  # seconds take_events waits to fill a batch
    forget: list[Callable[[int], None]] = field(default_factory=list)
    dead_letters: str = ""  # the dead-letter topic
    serde: AvroSerde = field(default_factory=default_serde)  # Avro of the outputs

    def agent(self, handle: Callable[[int, list], None],
              split: Callable[[faust.types.EventT], list] | None = None,
              payload: Callable[[object, faust.types.EventT], bytes] | None = None) -> None:
        """Run `handle(partition, values)` for each partition's events of every batch (the
        values `split` gives of each event; by default the events themselves), then put the
        outputs in Kafka, then the state's changelog, before the batch is acknowledged.

        A partition's batch is one transaction (`isolation`): when `handle` raises, nothing
        of it is kept, it is tried again, then bisected down to the value that fails, which
        goes to the dead-letter topic (reason `processing_error`, `payload(value, event)` or
        the message's bytes), and the rest is processed. Any other failure (Kafka refusing
        outputs, a systemic one) stops the worker before faust can acknowledge the batch
        (`fail_stop`)."""

        async def process(stream: faust.Stream) -> None:
            async for events in stream.take_events(self.batch_size, within=self.batch_wait):
                try:
                    await self.run_batch(events, handle, split, payload)
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
                        handle: Callable[[int, list], None],
                        split: Callable[[faust.types.EventT], list] | None = None,
                        payload: Callable[[object, faust.types.EventT], bytes] | None = None,
                        ) -> None:
        store = self.store
        for partition, group in by_partition(events).items():
            enter_partition(store, group[-1])
            fresh = unseen(store, group)
            if not fresh:
                continue
            units = []
            for event in fresh:
                values = split(event) if split else [event]
                units += [Unit(v, event, i == len(values) - 1) for i, v in enumerate(values)]
                if not values:
                    units.append(Unit(None, event))

            def attempt(part: list[Unit], partition: int = partition) -> None:
                values = [u.value for u in part if u.value is not None]
                if values:
                    handle(partition, values)
                mark_seen(store, [u.event for u in part if u.last])

            def poisoned(unit: Unit, failure: isolation.Failure) -> None:
                self.dead_letter(unit, failure, payload)

            isolation.process(units, attempt, _Transaction(self, partition), poisoned)
        await self.outbox.flush_async()  # the outputs first, then the state
        inner = store.inner
        if isinstance(inner, ChangelogStore):
            inner.write_changelog()
            await self.outbox.flush_async()

    def dead_letter(self, unit: Unit, failure: isolation.Failure,
                    payload: Callable[[object, faust.types.EventT], bytes] | None) -> None:
        """A poison record to the dead-letter topic, with the stage, the failure and where
        the record came from; its message counts as taken (when it is the message's last)."""
        m = unit.event.message
        value = payload(unit.value, unit.event) if payload else (m.value or b"")
        POISON.labels(self.name, "processing_error").inc()
        log.error("%s: record %s[%d]@%d dead-lettered as processing_error: %s", self.name,
                  m.topic, m.partition, m.offset, failure.describe())
        self.outbox.produce(self.dead_letters, self.serde.encode(DEAD_LETTER, dead_letter(
            self.name, "processing_error", failure.describe(), value,
            (m.topic, m.partition, m.offset))))
        if unit.last:
            self.store.begin()
            mark_seen(self.store, [unit.event])
            self.store.commit()

    def finish_blocking(self) -> None:
        """The end of `run_batch`, without giving way to the event loop (a second write of
        the changelog writes nothing: its records are cleared once produced)."""
        self.outbox.flush()
        inner = self.store.inner
        if isinstance(inner, ChangelogStore):
            inner.write_changelog()
            self.outbox.flush()

    def on_revoked(self, forget: Callable[[int], None]) -> None:
        """`forget(partition)` for each partition this worker loses in a rebalance, and for
        a partition whose batch was rolled back (its in-memory indexes over the state)."""
        self.forget.append(forget)

        async def revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
            for tp in revoked:
                forget(tp.partition)

        self.app.on_partitions_revoked.connect(revoked)


def watch_progress(app: faust.App, progress: Progress, sources: tuple[str, ...],
                   store: BatchStore) -> None:
    """Every 5 s, the stage's progress on the source partitions it holds (progress.py)."""
    topics = set(sources)

    @app.timer(5.0)
    async def look() -> None:
        held = {(tp.topic, tp.partition): store.inner.get(offset_key(tp.topic, tp.partition), -1)
                for tp in app.consumer.assignment() if tp.topic in topics}
        await asyncio.get_running_loop().run_in_executor(None, progress.check, held)


def attributed_units(event: faust.types.EventT) -> list:
    """The units of an attributed message (`services.domain.attributed.units`): one per
    customer, so a customer's touches that a stage cannot take are dead-lettered alone."""
    return attributed.units(event.message.value)


def attributed_payload(unit: object, event: faust.types.EventT) -> bytes:
    """A dead-lettered unit of an attributed message: that customer's part of it."""
    return attributed.unit_payload(unit, event.message.value)


def corrupt_state(parts: Stage, stage: str, corrupt: CorruptState) -> None:
    """A state that cannot be read (every stage's processor reports them the same way): to
    the dead-letter topic (reason `state_corrupt`, the state as stored in the payload); the
    processor went on with a fresh one for that key."""
    POISON.labels(stage, "state_corrupt").inc()
    log.error("%s: state %r could not be read, dead-lettered and started again: %s", stage,
              corrupt.key, corrupt.why)
    try:
        payload = orjson.dumps({"key": corrupt.key, "state": corrupt.stored},
                               option=orjson.OPT_SORT_KEYS)
    except TypeError:
        payload = repr(corrupt.stored).encode()
    parts.outbox.produce(parts.dead_letters, parts.serde.encode(DEAD_LETTER, dead_letter(
        stage, "state_corrupt", f"state {corrupt.key!r}: {corrupt.why}", payload, None)))


def dead_letter(stage: str, reason: str, detail: str, payload: bytes,
                origin: tuple[str, int, int] | None) -> dict:
    """A DeadLetter record (schemas/dead_letter.avsc) of a stage; its id is derived from the
    stage, the reason and the payload, so a record dead-lettered twice is one row."""
    digest = hashlib.sha256(f"{stage}\0{reason}\0".encode() + payload).hexdigest()
    topic, partition, offset = origin or (None, None, None)
    return {
        "dead_letter_id": digest[:32], "reason": reason, "detail": detail[:2000],
        "stage": stage, "source": None, "payload": payload,
        "received_at": int(time.time() * 1000), "origin_topic": topic,
        "origin_partition": partition, "origin_offset": offset,
    }


def stage(name: str, common: Settings, *, sources: tuple[str, ...], table: str, port: int,
          store: str, batch_size: int) -> Stage:
    """Create a stage reading the raw bytes of `sources` (co-partitioned: the first one's
    partition count is the stage's), with one JSON-valued table."""
    partitions = len(admin_client(common).list_topics(timeout=30).topics[sources[0]].partitions)
    # faust's own topics, created as Kizuna's are (replication, min.insync.replicas) rather
    # than by faust
    ensure_topics(common, framework_topics(f"{common.topic_prefix}{name}", table, partitions),
                  prefix="")
    progress = Progress(name, client_config(common), common.stall_seconds)
    app = create_app(name, common, port=port, store=store, partitions=partitions,
                     batch_size=batch_size, progress=progress)
    source = app.topic(*sources, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    state = app.Table(table, default=None, partitions=partitions,
                      options=rocksdb_options(common) if store.startswith("rocksdb") else None)
    outbox = Outbox(common, progress.client_error)
    stage_store = state_store(state, store, outbox)
    watch_progress(app, progress, sources, stage_store)
    STATE_KEYS.labels(name).set_function(lambda: len(stage_store.inner))
    serde = serde_for(common)
    serde.prepare((DEAD_LETTER,))
    return Stage(name, app, source, state, outbox, stage_store, partitions, batch_size,
                 common.batch_wait_seconds, dead_letters=TOUCHPOINTS_DLQ.name(common.topic_prefix),
                 serde=serde)
