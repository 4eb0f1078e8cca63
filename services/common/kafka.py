"""Kafka adapter: admin operations through confluent-kafka's AdminClient."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.common.errors import UnreachableError
from services.common.settings import Settings
from services.common.topics import PUBLIC_TOPICS, TopicSpec, partitions_for, replication_config

log = logging.getLogger(__name__)


def client_config(settings: Settings) -> dict[str, object]:
    """What every confluent-kafka client of Kizuna starts from: the cluster and how to reach
    it (services.common.kafka_config)."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        # librdkafka logs every failed connection attempt; errors reach us as exceptions.
        "log_level": 0,
        **settings.kafka.librdkafka(),
    }


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def check_reachable(settings: Settings, timeout: float = 10.0) -> int:
    """Return the number of brokers, or raise one clear UnreachableError."""
    try:
        metadata = admin_client(settings).list_topics(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        detail = err.str() if isinstance(err, KafkaError) else str(err)
        raise UnreachableError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} (KIZUNA_KAFKA_BOOTSTRAP) within "
            f"{timeout:g} s: {detail}; start the local stack with `kizuna up` or fix the address"
        ) from None
    return len(metadata.brokers)


@dataclass(frozen=True)
class TopicReport:
    name: str
    created: bool
    partitions: int
    note: str = ""


def ensure_topics(
    settings: Settings, specs: tuple[TopicSpec, ...] = PUBLIC_TOPICS, timeout: float = 30.0,
    prefix: str | None = None,
) -> list[TopicReport]:
    """Create the topics that do not exist; report (never alter) those that do. Names are
    the settings' topic prefix plus each spec's suffix, or `prefix` plus it."""
    check_reachable(settings)
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout).topics
    prefix = settings.topic_prefix if prefix is None else prefix
    wanted = {spec.name(prefix): spec for spec in specs}
    new = [
        NewTopic(name, partitions_for(spec, settings), settings.replication_factor,
                 config={**spec.topic_config(), **replication_config(settings)})
        for name, spec in wanted.items() if name not in existing
    ]
    created: set[str] = set()
    if new:
        for name, future in admin.create_topics(new, request_timeout=timeout).items():
            try:
                future.result(timeout)
                created.add(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a racing creator
                    raise UnreachableError(f"cannot create topic {name}: {exc.args[0].str()}") \
                        from None
    metadata = admin.list_topics(timeout=timeout).topics
    deadline = time.monotonic() + timeout
    while any(not (name in metadata and metadata[name].partitions) for name in created) \
            and time.monotonic() < deadline:  # a cluster's metadata follows in a moment
        time.sleep(0.2)
        metadata = admin.list_topics(timeout=timeout).topics
    reports = []
    for name, spec in wanted.items():
        have = len(metadata[name].partitions) if name in metadata else 0
        want = partitions_for(spec, settings)
        note = "" if have == want else f"has {have} partitions, settings say {want}"
        reports.append(TopicReport(name, name in created, have, note))
    return reports


def group_lag(settings: Settings, group: str, topics: list[str], timeout: float = 10.0) -> int:
    """Messages in `topics` that consumer group `group` has not committed yet."""
    return sum(max(0, high - done)
               for done, high in group_positions(settings, group, topics, timeout).values())


def group_positions(settings: Settings, group: str, topics: list[str],
                    timeout: float = 10.0) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (offset `group` has committed, or the log start; end offset)."""
    consumer = Consumer({**client_config(settings), "group.id": group,
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=timeout).topics
        tps = [TopicPartition(t, p) for t in topics if t in metadata
               for p in metadata[t].partitions]
        found = {}
        for tp in consumer.committed(tps, timeout=timeout) if tps else []:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            found[(tp.topic, tp.partition)] = (tp.offset if tp.offset >= 0 else low, high)
        return found
    finally:
        consumer.close()


@dataclass(frozen=True)
class ReplicationReport:
    topic: str
    replicas: int  # the fewest replicas of any of its partitions
    min_insync: int
    in_sync: int  # the fewest in-sync replicas of any of its partitions

    def below(self, settings: Settings) -> list[str]:
        """What falls short of the settings, in words (empty: nothing)."""
        wanted = int(replication_config(settings).get("min.insync.replicas", 1))
        out = []
        if self.replicas < settings.replication_factor:
            out.append(f"{self.replicas} replica(s), settings say {settings.replication_factor}")
        if self.min_insync < wanted:
            out.append(f"min.insync.replicas={self.min_insync}, settings say {wanted}")
        if self.in_sync < min(self.replicas, wanted):
            out.append(f"only {self.in_sync} replica(s) in sync")
        return out


def replication(settings: Settings, timeout: float = 30.0) -> list[ReplicationReport]:
    """Every topic of this deployment (the topic prefix's, faust's included): replicas,
    min.insync.replicas, and the replicas in sync now."""
    from confluent_kafka.admin import ConfigResource

    check_reachable(settings)
    admin = admin_client(settings)
    topics = {name: meta for name, meta in admin.list_topics(timeout=timeout).topics.items()
              if name.startswith(settings.topic_prefix)}
    if not topics:
        return []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics]
    configs = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        entry = future.result(timeout).get("min.insync.replicas")
        configs[resource.name] = int(entry.value) if entry is not None else 1
    return [ReplicationReport(name,
                              min((len(p.replicas) for p in meta.partitions.values()), default=0),
                              configs.get(name, 1),
                              min((len(p.isrs) for p in meta.partitions.values()), default=0))
            for name, meta in sorted(topics.items())]
