"""`kizuna alerts tail`: print the alerts on the alert topics as they come, decoded.

It reads with assigned partitions and no consumer group, so it never moves anyone's offsets
and leaves nothing behind on the broker.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from services.common.errors import KizunaError
from services.common.kafka import client_config
from services.common.schema_registry import serde_for
from services.common.serde import ALERT, DecodeError
from services.common.settings import Settings
from services.common.topics import ALERTS_CART_ABANDONMENT, ALERTS_CHURN_RISK

TYPES = {"cart_abandonment": ALERTS_CART_ABANDONMENT, "churn_risk": ALERTS_CHURN_RISK}


def alerts(settings: Settings, types: list[str], from_beginning: bool,
           idle_timeout: float | None = None) -> Iterator[dict]:
    """Decoded alerts, oldest first per partition; stops after `idle_timeout` seconds with
    nothing new (never, when None)."""
    consumer = Consumer({**client_config(settings), "group.id": "kizuna-alerts-tail",
                         "enable.auto.commit": False, "enable.auto.offset.store": False})
    serde = serde_for(settings)
    try:
        metadata = consumer.list_topics(timeout=10)
        assignment = []
        for kind in types:
            name = TYPES[kind].name(settings.topic_prefix)
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                raise KizunaError(f"topic {name} does not exist: run `kizuna up` or "
                                  "`kizuna topics create`")
            assignment += [TopicPartition(name, p, OFFSET_BEGINNING if from_beginning
                                          else OFFSET_END) for p in sorted(topic.partitions)]
        consumer.assign(assignment)
        idle_since = time.monotonic()
        while idle_timeout is None or time.monotonic() - idle_since < idle_timeout:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            idle_since = time.monotonic()
            try:
                yield serde.decode(ALERT, msg.value())
            except DecodeError as exc:
                yield {"undecodable": f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}"}
    finally:
        consumer.close()


def _at(value: datetime | int) -> str:
    """fastavro reads timestamp-millis as an aware datetime."""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value / 1000, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def line(alert: dict) -> str:
    if "undecodable" in alert:
        return f"undecodable record {alert['undecodable']}"
    cart = alert.get("cart")
    what = (f"cart {cart['cart_id']} {cart['value']:.2f} {cart['currency'] or ''}".rstrip()
            if cart else f"score {alert['score_snapshot']:.1f}"
            if alert.get("score_snapshot") is not None else "")
    return (f"{_at(alert['detected_at'])}  {alert['alert_type']:<16} {alert['status']:<8} "
            f"{alert['customer_id'] or alert['anonymous_id']}  severity {alert['severity']}  "
            f"{','.join(alert['reasons'])}  {what}  -> {alert['recommended_action']} via "
            f"{alert['recommended_channel'] or 'no reachable channel'}  {alert['alert_id']}")


def tail(settings: Settings, types: list[str], from_beginning: bool, as_json: bool,
         limit: int | None, idle_timeout: float | None, out: TextIO = sys.stdout) -> int:
    count = 0
    for alert in alerts(settings, types, from_beginning, idle_timeout):
        out.write((json.dumps(alert, default=_at) if as_json else line(alert)) + "\n")
        out.flush()
        count += 1
        if limit is not None and count >= limit:
            break
    return count
