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
import weakref
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import NoReturn

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event

from services.common import isolation
from services.common.dead_letters import dead_letter, state_corrupt
from services.common.kafka import admin_client, client_config, ensure_topics
from services.common.outbox import Outbox
from services.common.progress import Progress
from services.common.schema_registry import serde_for
from services.common.serde import DEAD_LETTER, AvroSerde, default_serde
from services.common.settings import Settings
from services.common.stage_health import health_pages, watch_progress
from services.common.stage_metrics import POISON, STATE_KEYS
from services.common.stage_state import (
    BatchStore,
    ChangelogStore,
    mark_seen,
    rocksdb_options,
    state_directory,
    state_store,
    unseen,
)
from services.common.topics import TOUCHPOINTS_DLQ, framework_topics
from services.domain import attributed
from services.domain.processing import CorruptState

log = logging.getLogger("kizuna.stage")


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

    health_pages(app, name, progress, fault_injection=common.fault_injection)
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


def enter_partition(store: MutableMapping, event: faust.types.EventT) -> None:
    use_partition(event)
    inner = store.inner if isinstance(store, BatchStore) else store
    if isinstance(inner, ChangelogStore):
        inner.partition = event.message.partition




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
        for drop_index in self.stage.drop_index:  # indexes over the state: rebuilt
            drop_index(self.partition)


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
    drop_index: list[Callable[[int], None]] = field(default_factory=list)
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
            new = unseen(store, group)
            if not new:
                continue
            units = []
            for event in new:
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

    def corrupt_state(self, corrupt: CorruptState) -> None:
        """A state the processor could not read, to the dead-letter topic (it went on with
        a new one for that key)."""
        self.outbox.produce(self.dead_letters,
                            self.serde.encode(DEAD_LETTER, state_corrupt(self.name, corrupt)))

    def finish_blocking(self) -> None:
        """The end of `run_batch`, without giving way to the event loop (a second write of
        the changelog writes nothing: its records are cleared once produced)."""
        self.outbox.flush()
        inner = self.store.inner
        if isinstance(inner, ChangelogStore):
            inner.write_changelog()
            self.outbox.flush()

    def on_revoked(self, drop_index: Callable[[int], None]) -> None:
        """`drop_index(partition)` for each partition this worker loses in a rebalance, and for
        a partition whose batch was rolled back (its in-memory indexes over the state)."""
        self.drop_index.append(drop_index)

        async def revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
            for tp in revoked:
                drop_index(tp.partition)

        self.app.on_partitions_revoked.connect(revoked)


def attributed_units(event: faust.types.EventT) -> list:
    """The units of an attributed message (`services.domain.attributed.units`): one per
    customer, so a customer's touches that a stage cannot take are dead-lettered alone."""
    return attributed.units(event.message.value)


def attributed_payload(unit: object, event: faust.types.EventT) -> bytes:
    """A dead-lettered unit of an attributed message: that customer's part of it."""
    return attributed.unit_payload(unit, event.message.value)


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
