"""Kafka adapter: admin operations through confluent-kafka's AdminClient."""

from __future__ import annotations

import logging
import re
import socket
import ssl
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
    """Return the number of brokers, or raise one clear UnreachableError saying why: the
    address, the credentials, the certificate, or the protocol (`diagnose`)."""
    errors: list[KafkaError] = []
    admin = AdminClient({**client_config(settings), "error_cb": errors.append})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0.5)  # the errors that explain it reach error_cb through poll
        err = exc.args[0] if exc.args else exc
        detail = err.str() if isinstance(err, KafkaError) else str(err)
        raise UnreachableError(diagnose(settings, errors, detail, timeout)) from None
    return len(metadata.brokers)


_WHERE = re.compile(r"^(?:\w+://)?([^/\s]+)/\w+: ")


def _probe(settings: Settings, overrides: dict, timeout: float = 5.0) -> list[KafkaError] | None:
    """None if a client with `overrides` reaches the cluster, else the errors it got."""
    errors: list[KafkaError] = []
    admin = AdminClient({**client_config(settings), **overrides, "error_cb": errors.append})
    try:
        admin.list_topics(timeout=timeout)
        return None
    except KafkaException:
        admin.poll(0.5)
        return errors


def _speaks_tls(address: str) -> bool:
    """Whether a TLS handshake with `host:port` completes (certificate not checked)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3) as raw, \
                context.wrap_socket(raw, server_hostname=host.strip("[]")):
            return True
    except (OSError, ValueError):
        return False


def diagnose(settings: Settings, errors: list[KafkaError], detail: str, timeout: float) -> str:
    """One line: why the cluster could not be reached, from librdkafka's errors (and, for
    a certificate or a protocol, a second look without hostname verification or with TLS)."""
    kafka = settings.kafka
    texts = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
    first = texts[0] if texts else detail
    where = _WHERE.match(first)
    broker = where[1] if where else settings.kafka_bootstrap
    reason = _WHERE.sub("", first)
    reason = re.sub(r" \(after \d+ms in state \w+\)", "", reason)
    if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
        if "mechanism" in reason and "not enabled" in reason or "Unsupported" in reason:
            return (f"the Kafka broker at {broker} does not accept SASL mechanism "
                    f"{kafka.sasl_mechanism}: {reason}")
        return (f"Kafka authentication failed for user {kafka.sasl_username!r} "
                f"({kafka.sasl_mechanism}) at {broker}: check sasl.username and sasl.password "
                "(KIZUNA_KAFKA_CONFIG_FILE or KIZUNA_KAFKA_SASL_*)")
    if "certificate verify failed" in reason:
        if kafka.check_hostname and _probe(
                settings, {"ssl.endpoint.identification.algorithm": "none"}) is None:
            return (f"the Kafka broker at {broker} presents a certificate that is not for "
                    "that address (hostname verification): connect by a name the "
                    "certificate was issued for")
        return (f"the Kafka broker at {broker} presents a certificate no CA Kizuna trusts "
                f"signed (CA: {kafka.ssl_ca_location or 'the system store'}): set "
                "ssl.ca.location (KIZUNA_KAFKA_SSL_CA_LOCATION) to its CA, in PEM")
    if "connecting to a PLAINTEXT broker listener" in reason:
        return (f"the Kafka broker at {broker} does not speak TLS, but security.protocol is "
                f"{kafka.protocol}: use PLAINTEXT or SASL_PLAINTEXT, or the cluster's TLS port")
    if "bad certificate" in reason or "certificate required" in reason:
        if not kafka.ssl_certificate_location:
            return (f"the Kafka broker at {broker} requires a client certificate (mutual "
                    "TLS): set ssl.certificate.location and ssl.key.location")
        return (f"the Kafka broker at {broker} refused the client certificate "
                f"{kafka.ssl_certificate_location}: {reason}")
    if "SSL" in reason or "ssl" in reason:
        return f"TLS with the Kafka broker at {broker} failed: {reason}"
    if not kafka.tls and (not texts or "ApiVersion" in reason) and _speaks_tls(broker):
        return (f"the Kafka broker at {broker} expects TLS, but security.protocol is "
                f"{kafka.protocol}: use SSL or SASL_SSL (and ssl.ca.location for a private CA)")
    return (f"cannot reach Kafka at {settings.kafka_bootstrap} (KIZUNA_KAFKA_BOOTSTRAP) within "
            f"{timeout:g} s: {reason}; start the local stack with `kizuna up` or fix the address")


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


def list_topic_names(settings: Settings, timeout: float = 10.0) -> set[str]:
    """The topics the cluster has."""
    return set(admin_client(settings).list_topics(timeout=timeout).topics)


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
