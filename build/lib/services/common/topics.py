"""Kafka topics as code: every topic Kizuna names, declared once (contract section 4).

The public ones (`PUBLIC_TOPICS`) are created by `kizuna topics create`; the internal ones
between the stages (`INTERNAL_TOPICS`) by the stages that use them, at start, and so are
the topics faust would otherwise create its own way: each stage's state changelog and its
assignor's (`framework_topics`). Every one gets the replication factor of the settings and,
from 3 replicas on, `min.insync.replicas=2` (`replication_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.serde import (
    ALERT,
    DEAD_LETTER,
    ENGAGEMENT_PROFILE,
    ERASE,
    SESSION,
    TOUCHPOINT,
    TOUCHPOINT_BATCH,
    WATERMARK,
)
from services.common.settings import Settings
from services.domain.eventtime import DAY_MS


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    doc: str
    key: str
    keyed: bool = True  # keyed topics get KIZUNA_PARTITIONS, the others one partition
    cleanup_policy: str = "delete"
    retention_ms: int = 7 * DAY_MS
    config: dict[str, str] = field(default_factory=dict)
    partitions: int = 0  # 0: KIZUNA_PARTITIONS when keyed, else one
    #: The Avro schemas of its values: the first is the topic's own (registry subject
    #: `<topic>-value`); the others are control records told apart by the `kizuna-type`
    #: header (subject `<topic>-<record full name>`).
    schemas: tuple[str, ...] = ()

    def name(self, prefix: str) -> str:
        return prefix + self.suffix

    def topic_config(self) -> dict[str, str]:
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "compression.type": "producer",
            **self.config,
        }


TOUCHPOINTS_RAW = TopicSpec(
    "touchpoints.raw", "validated touchpoints", key="profile id", retention_ms=30 * DAY_MS,
    schemas=(TOUCHPOINT, TOUCHPOINT_BATCH, WATERMARK, ERASE))
TOUCHPOINTS_DLQ = TopicSpec(
    "touchpoints.dlq", "rejected input: raw bytes, reason code, stage", key="none",
    keyed=False, retention_ms=30 * DAY_MS, schemas=(DEAD_LETTER,))
SESSIONS = TopicSpec("sessions", "session summaries, versioned upserts", key="profile id",
                     schemas=(SESSION,))
ENGAGEMENT_SCORES = TopicSpec(
    # Latest state per customer: compaction keeps each customer's newest profile for rebuilds.
    "engagement.scores", "engagement, RFM and BTYD profile updates", key="customer id",
    cleanup_policy="compact,delete", retention_ms=30 * DAY_MS, schemas=(ENGAGEMENT_PROFILE,))
ALERTS_CART_ABANDONMENT = TopicSpec(
    "alerts.cart_abandonment", "cart alerts and their resolution", key="customer id",
    schemas=(ALERT,))
ALERTS_CHURN_RISK = TopicSpec("alerts.churn_risk", "churn alerts", key="customer id",
                              schemas=(ALERT,))

#: Internal: alert decisions recorded for analysts and never sent (status `historical`: more
#: than the correction horizon behind event time when made; `withdrawn`: a historical one the
#: late touches no longer give). The warehouse loads it into `alerts`; no consumer should act
#: on it.
ALERTS_HISTORY = TopicSpec(
    "alerting.history", "alert decisions recorded, never sent (internal)", key="customer id",
    retention_ms=30 * DAY_MS, schemas=(ALERT,))

#: Internal: identity links and device state on their way to the customer's partition, and
#: each partition's event time announced to the others (the sessionizer's own input beside
#: the raw topic, co-partitioned with it).
HANDOFF = TopicSpec(
    "sessionizer.handoff", "identity links and device state on their way to the customer's "
    "partition (internal)", key="profile id", retention_ms=7 * DAY_MS)
#: Internal: touches attributed to customers (services.domain.attributed), the engagement
#: scorer's and alerting's input.
ATTRIBUTED = TopicSpec(
    "sessionizer.attributed", "touches attributed to customers and the partition's event "
    "time, {t, c: {customer: touches}, e: [customers erased]} in JSON, a few messages per "
    "partition and batch (internal; the scorer's and alerting's input)",
    key="none (partition of the customers)", retention_ms=7 * DAY_MS)

INTERNAL_TOPICS: tuple[TopicSpec, ...] = (HANDOFF, ATTRIBUTED, ALERTS_HISTORY)

PUBLIC_TOPICS: tuple[TopicSpec, ...] = (
    TOUCHPOINTS_RAW, TOUCHPOINTS_DLQ, SESSIONS, ENGAGEMENT_SCORES,
    ALERTS_CART_ABANDONMENT, ALERTS_CHURN_RISK,
)


def framework_topics(app_id: str, table: str, partitions: int) -> tuple[TopicSpec, ...]:
    """A faust stage's own topics, named as faust names them (the app id is the topic prefix
    plus the stage's name): its table's changelog (compacted, as many partitions as the
    stage's source) and the assignor's leader topic (one partition)."""
    changelog = TopicSpec(f"{app_id}-{table}-changelog", "the stage's state (internal)",
                          key="state key", cleanup_policy="compact", retention_ms=-1,
                          partitions=partitions)
    leader = TopicSpec(f"{app_id}-__assignor-__leader", "faust's assignor (internal)",
                       key="none", keyed=False, retention_ms=7 * DAY_MS)
    return changelog, leader


def replication_config(settings: Settings) -> dict[str, str]:
    """What a topic's config adds for the replication factor: from 3 replicas on, a write
    is acknowledged once 2 of them have it (producers use acks=all)."""
    return {"min.insync.replicas": "2"} if settings.replication_factor >= 3 else {}


def partitions_for(spec: TopicSpec, settings: Settings) -> int:
    if spec.partitions:
        return spec.partitions
    return settings.partitions if spec.keyed else 1
