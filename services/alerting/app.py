"""Alerting's faust adapter: attributed touches in, cart and churn alerts out (kizuna.alerts.*).

It reads the sessionizer's attributed topic with its own consumer group, hands each
partition's messages to the pure `AlertProcessor`, writes each changed customer's state once,
and produces the alerts keyed by customer id, flushed before the batch is acknowledged.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import faust
from prometheus_client import Counter, Gauge

from services.alerting.carts import CartRules
from services.alerting.churn import ChurnRules
from services.alerting.processor import (
    CART,
    CHURN,
    AlertProcessor,
    alert_record,
    churn_record,
    published,
)
from services.common import faults, faust_stage, logs, stage_metrics
from services.common.errors import KizunaError
from services.common.kafka import ensure_topics
from services.common.serde import ALERT
from services.common.settings import (
    AlertingSettings,
    EngagementScorerSettings,
    SessionizerSettings,
    load,
)
from services.common.topics import (
    ALERTS_CART_ABANDONMENT,
    ALERTS_CHURN_RISK,
    ALERTS_HISTORY,
    ATTRIBUTED,
)
from services.common.weights_file import load_weights
from services.domain import attributed
from services.domain.eventtime import DAY_MS, HOUR_MS, MINUTE_MS
from services.domain.weights import Weights

log = logging.getLogger("kizuna.alerting")
STAGE = "alerting"
ALERTS = Counter("kizuna_alerting_alerts", "Alerts emitted", ["alert_type", "status"])
TOUCHES = Counter("kizuna_alerting_touches", "Attributed touches judged")
REPLAYS = Counter("kizuna_alerting_replays",
                  "Customers decided again from all their touches because a late one came")
PENDING = Gauge("kizuna_alerting_pending_decisions",
                "Customers with a cart or churn decision waiting for event time, this worker")
EVENT_TIME = Gauge("kizuna_alerting_event_time_seconds",
                   "Event time each partition has reached (epoch seconds)", ["partition"])


def rules_of(settings: AlertingSettings) -> CartRules:
    lateness = load(SessionizerSettings).lateness_minutes  # one lateness for the pipeline
    return CartRules(delay_ms=int(settings.abandonment_minutes * MINUTE_MS),
                     cap_ms=int(settings.cart_cap_hours * HOUR_MS),
                     lateness_ms=int(lateness * MINUTE_MS),
                     horizon_ms=int(settings.correction_horizon_days * DAY_MS))


def churn_rules_of(settings: AlertingSettings) -> ChurnRules:
    return ChurnRules(engagement_fraction=settings.churn_engagement_fraction,
                      min_peak=settings.churn_min_peak,
                      silence_factor=settings.churn_silence_factor,
                      silence_min_ms=int(settings.churn_silence_min_days * DAY_MS),
                      dormancy_ms=int(settings.churn_dormancy_days * DAY_MS),
                      cooldown_ms=int(settings.churn_cooldown_days * DAY_MS))


def create_app(settings: AlertingSettings, weights: Weights) -> faust.App:
    common = settings.common
    prefix = common.topic_prefix
    ensure_topics(common, (ATTRIBUTED, ALERTS_HISTORY))
    parts = faust_stage.stage(STAGE, common, sources=(ATTRIBUTED.name(prefix),),
                              table="customers", port=settings.port, store=settings.store,
                              batch_size=settings.batch_size)
    rules = rules_of(settings)
    processor = AlertProcessor(rules, weights, parts.store, churn_rules_of(settings))
    topics = {CART: ALERTS_CART_ABANDONMENT.name(prefix), CHURN: ALERTS_CHURN_RISK.name(prefix)}
    history = ALERTS_HISTORY.name(prefix)
    serde = parts.serde
    serde.prepare((ALERT,))

    fault = faults.markers(common.fault_injection, STAGE)

    def handle(partition: int, messages: list) -> None:
        faults.check(fault, attributed.event_ids(messages))
        TOUCHES.inc(sum(len(touches) for m in messages
                        for _, touches in attributed.customer_touches(m)))
        now = int(time.time() * 1000)
        clock = now if settings.alert_clock == "wall" else None
        alerted = processor.process(partition, messages, clock)
        for customer, kind, found, snapshot in alerted.alerts:
            record = (alert_record(customer, found, snapshot, now, rules)
                      if kind == CART else churn_record(customer, found, snapshot, now))
            topic = topics[kind] if published(record) else history
            parts.outbox.produce(topic, serde.encode(ALERT, record), customer.encode())
            ALERTS.labels(record["alert_type"], record["status"]).inc()
        REPLAYS.inc(len(alerted.replayed))
        for customer, at, settled in alerted.replayed[:3]:
            log.info("customer %s decided again: a touch at %s came after decisions up to %s",
                     customer, at, settled)
        for corrupt in alerted.corrupt:
            parts.corrupt_state(corrupt)
        EVENT_TIME.labels(str(partition)).set(max(processor.stream_time(partition), 0) / 1000)
        stage_metrics.observe_latency(STAGE, max(m["t"] for m in messages))

    PENDING.set_function(processor.pending)
    parts.agent(handle, faust_stage.attributed_units, faust_stage.attributed_payload)
    parts.on_revoked(processor.drop_index)
    return parts.app


def main() -> None:
    settings = load(AlertingSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    try:  # the scorer's weights: the same engagement chooses the recommended channel
        scorer = load(EngagementScorerSettings)
        weights = load_weights(Path(scorer.weights_file) if scorer.weights_file else None)
    except KizunaError as exc:
        print(f"alerting: error: {exc}", file=sys.stderr)
        sys.exit(2)
    faust_stage.run_worker(create_app(settings, weights), settings.common)
