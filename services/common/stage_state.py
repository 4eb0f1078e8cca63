"""A stage's state as its batches see it: where it lives on disk, the memory store's
changelog through the outbox, a batch's writes kept or dropped together, and the source
offsets the state has taken (a batch redelivered after a crash is not taken twice)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path

import faust
import orjson

from services.common.outbox import Outbox
from services.common.settings import Settings


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
    wait for `commit`, and `rollback` drops them, so a batch that raised leaves no trace.
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


#: State key of the last offset of `topic`[`partition`] whose effects the state holds.
def offset_key(topic: str, partition: int) -> str:
    return f"\x00offset:{topic}:{partition}"


def unseen(store: MutableMapping, events: list[faust.types.EventT]) -> list:
    """The events the state has not taken yet. A batch whose state reached the changelog
    but whose offsets were not committed yet (a crash in that second) is redelivered: its
    events are skipped, so nothing is counted twice and no session closed by it is reopened
    by its own touches. Its outputs are in Kafka already: they went first."""
    marks: dict[tuple[str, int], int] = {}
    new = []
    for event in events:
        m = event.message
        where = (m.topic, m.partition)
        if where not in marks:
            marks[where] = store.get(offset_key(*where), -1)
        if m.offset > marks[where]:
            new.append(event)
    return new


def mark_seen(store: MutableMapping, events: list[faust.types.EventT]) -> None:
    last: dict[tuple[str, int], int] = {}
    for event in events:
        m = event.message
        last[(m.topic, m.partition)] = max(last.get((m.topic, m.partition), -1), m.offset)
    for (topic, partition), offset in last.items():
        store[offset_key(topic, partition)] = offset
