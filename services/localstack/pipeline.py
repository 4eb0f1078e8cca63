"""Where the pipeline stands: every stage's consumer group and what it reads."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException

from services.common.errors import KizunaError
from services.common.kafka import check_reachable, group_lag
from services.common.settings import Settings
from services.common.topics import (
    ALERTS_CART_ABANDONMENT,
    ALERTS_CHURN_RISK,
    ENGAGEMENT_SCORES,
    SESSIONS,
    TOUCHPOINTS_DLQ,
    TOUCHPOINTS_RAW,
)
from services.sessionizer.app import ATTRIBUTED, HANDOFF

log = logging.getLogger("kizuna.pipeline")


def stage_inputs(settings: Settings) -> dict[str, list[str]]:
    """Consumer group -> the topics it reads."""
    prefix = settings.topic_prefix
    return {
        f"{prefix}sessionizer": [TOUCHPOINTS_RAW.name(prefix), HANDOFF.name(prefix)],
        f"{prefix}engagement_scorer": [ATTRIBUTED.name(prefix)],
        f"{prefix}alerting": [ATTRIBUTED.name(prefix)],
        f"{prefix}warehouse": [TOUCHPOINTS_RAW.name(prefix), SESSIONS.name(prefix),
                               TOUCHPOINTS_DLQ.name(prefix), ENGAGEMENT_SCORES.name(prefix),
                               ALERTS_CART_ABANDONMENT.name(prefix),
                               ALERTS_CHURN_RISK.name(prefix)],
    }


def wait_caught_up(settings: Settings, timeout: float) -> dict[str, int]:
    """Return when every stage has committed everything on its inputs (twice in a row: a
    stage's last batch may still have been producing), or raise with the lags."""
    check_reachable(settings)
    stages = stage_inputs(settings)
    deadline = time.monotonic() + timeout
    settled = 0
    while True:
        try:
            lags = {group: group_lag(settings, group, topics)
                    for group, topics in stages.items()}
        except KafkaException as exc:  # the broker restarting: not caught up, ask again
            lags = {"kafka": -1}
            log.info("lag unknown for now: %s", exc)
        settled = settled + 1 if not any(lags.values()) else 0
        if settled >= 2:
            return lags
        if time.monotonic() > deadline:
            raise KizunaError("not caught up after {:g} s: {}".format(timeout, ", ".join(
                f"{g} lag {n}" for g, n in lags.items())))
        time.sleep(1.0)
