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
import orjson
from prometheus_client import Counter

from services.alerting.carts import HOUR_MS, MINUTE_MS, CartRules
from services.alerting.churn import ChurnRules
from services.alerting.processor import CART, CHURN, AlertProcessor, alert_record, churn_record
from services.common import faust_stage, logs
from services.common.errors import KizunaError
from services.common.kafka import admin_client, ensure_topics
from services.common.serde import ALERT, default_serde
from services.common.settings import AlertingSettings, ScorerSettings, SessionizerSettings, load
from services.common.topics import ALERTS_CART_ABANDONMENT, ALERTS_CHURN_RISK
from services.engagement_scorer.weights import DAY_MS, Weights, load_weights
from services.sessionizer.app import ATTRIBUTED

log = logging.getLogger("kizuna.alerting")
STAGE = "alerting"
ALERTS = Counter("kizuna_alerting_alerts", "Alerts emitted", ["alert_type", "status"])


def rules_of(settings: AlertingSettings) -> CartRules:
    lateness = load(SessionizerSettings).lateness_minutes  # one lateness for the pipeline
    return CartRules(delay_ms=int(settings.abandonment_minutes * MINUTE_MS),
                     cap_ms=int(settings.cart_cap_hours * HOUR_MS),
                     lateness_ms=int(lateness * MINUTE_MS))


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
    ensure_topics(common, (ATTRIBUTED,))
    source_name = ATTRIBUTED.name(prefix)
    partitions = len(admin_client(common).list_topics(timeout=30).topics[source_name].partitions)
    app = faust_stage.create_app(STAGE, common, port=settings.port, store=settings.store,
                                 partitions=partitions, batch_size=settings.batch_size)
    source = app.topic(source_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    table = app.Table("customers", default=None, partitions=partitions)
    outbox = faust_stage.Outbox(common)
    store = faust_stage.state_store(table, settings.store, outbox)
    rules = rules_of(settings)
    processor = AlertProcessor(rules, weights, store, churn_rules_of(settings))
    topics = {CART: ALERTS_CART_ABANDONMENT.name(prefix), CHURN: ALERTS_CHURN_RISK.name(prefix)}
    serde = default_serde()

    @app.agent(source, concurrency=1)  # >1 can commit past an in-flight message (faust #606)
    async def alert(stream: faust.Stream) -> None:
        async for events in stream.take_events(settings.batch_size, within=1.0):
            try:
                for group in faust_stage.by_partition(events).values():
                    faust_stage.enter_partition(store, group[-1])
                    messages = [orjson.loads(event.message.value) for event in group]
                    now = int(time.time() * 1000)
                    for customer, kind, found, snapshot in processor.process(
                            group[-1].message.partition, messages):
                        record = (alert_record(customer, found, snapshot, now, rules)
                                  if kind == CART else churn_record(customer, found, snapshot, now))
                        outbox.produce(topics[kind], serde.encode(ALERT, record),
                                       customer.encode())
                        ALERTS.labels(record["alert_type"], record["status"]).inc()
                await outbox.flush_async()
            except Exception as exc:  # noqa: BLE001 - nothing of this batch may be acked
                faust_stage.fail_stop(STAGE, exc)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        for tp in revoked:
            processor.forget_partition(tp.partition)

    return app


def main() -> None:
    settings = load(AlertingSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    try:  # the scorer's weights: the same engagement chooses the recommended channel
        scorer = load(ScorerSettings)
        weights = load_weights(Path(scorer.weights_file) if scorer.weights_file else None)
    except KizunaError as exc:
        print(f"alerting: error: {exc}", file=sys.stderr)
        sys.exit(2)
    app = create_app(settings, weights)
    worker = faust.Worker(app, loglevel=settings.common.log_level.lower(),
                          redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
