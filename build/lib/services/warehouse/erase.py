"""`kizuna erase --customer ID`: a customer forgotten by every stage and every table.

1. An erase record (schema `schemas/erase.avsc`, header `kizuna-type: erase`) goes onto
   `kizuna.touchpoints.raw`, keyed by the customer, so it reaches the customer's partition
   after their earlier events. The sessionizer drops the customer's state and tells each linked
   device to forget the link; the scorer and alerting drop theirs; the scorer writes a
   tombstone on the compacted `kizuna.engagement.scores`.
2. Once every stage has consumed it (and the warehouse has loaded everything before it), the
   customer's rows are deleted from every table (`ALTER TABLE ... DELETE`, synchronously):
   touchpoints (their own and their devices' anonymous ones), sessions, the profile, alerts,
   and dead letters that name them.
"""

from __future__ import annotations

import re
import time

from confluent_kafka import Producer

from services.common.errors import KizunaError
from services.common.kafka import client_config
from services.common.schema_registry import serde_for
from services.common.serde import ERASE
from services.common.settings import Settings
from services.common.topics import TOUCHPOINTS_RAW

#: storage table -> condition, `{c}` the customer literal, `{d}` their devices' array literal
TABLES = {
    "touchpoints": "customer_id = {c} OR profile_id = {c} "
                   "OR (customer_id IS NULL AND has({d}, anonymous_id))",
    "sessions_by_id": "customer_id = {c} OR profile_id = {c} "
                      "OR (customer_id IS NULL AND has({d}, profile_id))",
    "customer_profiles": "customer_id = {c}",
    "alerts": "customer_id = {c}",
    # the id as a whole token of the payload (JSON text or Avro bytes)
    "dead_letters": "match(payload, {token})",
}


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def devices_sql(store: str, customer: str) -> str:
    c = literal(customer)
    return (f"SELECT DISTINCT arrayJoin(anonymous_ids) AS device FROM {store}.sessions_by_id "
            f"WHERE customer_id = {c} UNION DISTINCT SELECT DISTINCT assumeNotNull(anonymous_id) "
            f"FROM {store}.touchpoints WHERE customer_id = {c} AND anonymous_id IS NOT NULL")


def conditions(customer: str, devices: list[str]) -> dict[str, str]:
    """table -> the WHERE condition of the customer's rows."""
    token = literal(f"(^|[^A-Za-z0-9_.:-]){re.escape(customer)}([^A-Za-z0-9_.:-]|$)")
    d = "[" + ", ".join(literal(x) for x in sorted(devices)) + "]::Array(String)"
    return {table: cond.format(c=literal(customer), d=d, token=token)
            for table, cond in TABLES.items()}


def count_sql(store: str, where: dict[str, str]) -> str:
    return "SELECT " + ", ".join(f"(SELECT count() FROM {store}.{table} WHERE {cond}) AS {table}"
                                 for table, cond in where.items())


def erase_rows(client, store: str, customer: str) -> dict[str, int]:
    """Delete the customer's rows from every table; returns rows deleted per table."""
    devices = [row[0] for row in client.query(devices_sql(store, customer)).result_rows]
    where = conditions(customer, devices)
    before = dict(zip(where, client.query(count_sql(store, where)).result_rows[0], strict=True))
    for table, cond in where.items():
        client.command(f"ALTER TABLE {store}.{table} DELETE WHERE {cond}",
                       settings={"mutations_sync": 2})
    left = client.query(count_sql(store, where)).result_rows[0]
    if any(left):
        raise KizunaError(f"rows of {customer!r} are still there after the delete: "
                          f"{dict(zip(TABLES, left, strict=True))}")
    return before


def send_erase(settings: Settings, customer: str) -> None:
    """The erase record onto the raw topic, on the customer's partition."""
    producer = Producer({**client_config(settings), "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    value = serde_for(settings).encode(ERASE, {"customer_id": customer,
                                           "requested_at": int(time.time() * 1000)})
    producer.produce(TOUCHPOINTS_RAW.name(settings.topic_prefix), value, customer.encode(),
                     headers={"kizuna-type": ERASE})
    if producer.flush(30) != 0:
        raise KizunaError("Kafka did not acknowledge the erase record within 30 s")
