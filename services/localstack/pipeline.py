"""Where the pipeline stands: every stage's consumer group and what it reads."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException

from services.common.errors import KizunaError
from services.common.kafka import check_reachable, group_positions
from services.common.settings import Settings
from services.common.topics import (
    ALERTS_CART_ABANDONMENT,
    ALERTS_CHURN_RISK,
    ATTRIBUTED,
    ENGAGEMENT_SCORES,
    HANDOFF,
    SESSIONS,
    TOUCHPOINTS_DLQ,
    TOUCHPOINTS_RAW,
)

log = logging.getLogger("kizuna.pipeline")


def stage_inputs(settings: Settings) -> dict[str, list[str]]:
    """Consumer group -> the topics it reads."""
    prefix = settings.topic_prefix
    sources = {f"{prefix}ingest": settings.source_topic_names} \
        if settings.source_topic_names else {}
    return {
        **sources,  # users' own topics (KIZUNA_SOURCE_TOPICS), read by the ingest stage
        f"{prefix}sessionizer": [TOUCHPOINTS_RAW.name(prefix), HANDOFF.name(prefix)],
        f"{prefix}engagement_scorer": [ATTRIBUTED.name(prefix)],
        f"{prefix}alerting": [ATTRIBUTED.name(prefix)],
        f"{prefix}warehouse": [TOUCHPOINTS_RAW.name(prefix), SESSIONS.name(prefix),
                               TOUCHPOINTS_DLQ.name(prefix), ENGAGEMENT_SCORES.name(prefix),
                               ALERTS_CART_ABANDONMENT.name(prefix),
                               ALERTS_CHURN_RISK.name(prefix)],
    }


#: Consumer-group hops from the raw topic to ClickHouse: the sessionizer (three times when a
#: login hands a device's history over: link, transfer, and its event time announced through
#: the handoff topic), the scorer and alerting, the warehouse.
PIPELINE_DEPTH = 5


def wait_caught_up(settings: Settings, timeout: float) -> dict[str, int]:
    """Return when every stage has processed everything sent before, or raise with the lags.

    At rest, that is every stage with nothing left on its inputs twice in a row (a stage's last
    batch may still have been producing). Live, the sessionizer's tick adds a record of event
    time to its output every second, so a lag of 0 may never be seen: then it is every stage
    having committed what its inputs held when the round began, for as many rounds in a row as
    the pipeline has hops, plus one (the outputs of one round are the inputs of the next).
    """
    check_reachable(settings)
    stages = stage_inputs(settings)
    deadline = time.monotonic() + timeout
    settled = rounds = 0
    targets: dict[str, dict] | None = None
    while True:
        try:
            positions = {group: group_positions(settings, group, topics)
                         for group, topics in stages.items()}
        except KafkaException as exc:  # the broker restarting: not caught up, ask again
            positions, targets, rounds = {}, None, 0
            log.info("lag unknown for now: %s", exc)
        lags = {group: sum(max(0, high - done) for done, high in found.values())
                for group, found in positions.items()} or {"kafka": -1}
        settled = settled + 1 if not any(lags.values()) else 0
        if targets is not None and all(
                positions[group].get(tp, (0, 0))[0] >= end
                for group, ends in targets.items() for tp, end in ends.items()):
            rounds, targets = rounds + 1, None
        if settled >= 2 or rounds > PIPELINE_DEPTH + bool(settings.source_topic_names):
            return lags
        if targets is None and positions:
            targets = {group: {tp: high for tp, (_, high) in found.items()}
                       for group, found in positions.items()}
        if time.monotonic() > deadline:
            raise KizunaError("not caught up after {:g} s: {}".format(timeout, ", ".join(
                f"{g} lag {n}" for g, n in lags.items())))
        time.sleep(1.0)
