"""The warehouse-only way (PostHog's, dbt's): land the raw events in ClickHouse, then compute
sessions with window functions and RFM with an aggregation. Embedded ClickHouse (chdb)
through clickhouse-connect, in a process of its own so its CPU and memory are its own:

    python -m benchmarks.peers.warehouse_sql BROKERS TOPIC EVENTS DB_PATH OUT

Landing is timed as a whole (consume, decode, insert) and the inserts alone; each query on
its own. OUT (JSON) holds the timings, the sessions and the customers' totals.
"""

from __future__ import annotations

import json
import sys
import time

import clickhouse_connect
from confluent_kafka import Consumer, TopicPartition

from benchmarks.peers.job import GAP_MS, MAX_LENGTH_MS, TouchpointDecoder, touch

BLOCK = 50_000
COLUMNS = ["profile_id", "event_id", "event_type", "event_time", "value", "is_customer"]

CREATE = """
CREATE TABLE raw_touchpoints (
    profile_id String, event_id String, event_type LowCardinality(String),
    event_time Int64, value Float64, is_customer UInt8
) ENGINE = MergeTree ORDER BY (profile_id, event_time, event_id)"""

# A profile's runs: a new run where the gap to the previous touch is over 30 minutes; each run
# cut greedily at 24 h from its first touch (arrayFold numbers the pieces).
SESSIONS = f"""
WITH
  gaps AS (
    SELECT profile_id, event_id, event_type, event_time, value,
           event_time - lagInFrame(event_time, 1, event_time) OVER w AS gap,
           row_number() OVER w AS n
    FROM raw_touchpoints
    WINDOW w AS (PARTITION BY profile_id ORDER BY event_time, event_id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)),
  runs AS (
    SELECT *, sum(n = 1 OR gap > {GAP_MS}) OVER (
                PARTITION BY profile_id ORDER BY event_time, event_id
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS run
    FROM gaps),
  run_touches AS (
    SELECT profile_id, run,
           arraySort(groupArray((event_time, event_id, event_type, value))) AS touches,
           arrayMap(t -> t.1, touches) AS ats,
           arrayFold((acc, t) -> if(t - acc.1 >= {MAX_LENGTH_MS},
                                    (t, acc.2 + 1, arrayPushBack(acc.3, acc.2 + 1)),
                                    (acc.1, acc.2, arrayPushBack(acc.3, acc.2))),
                     ats, (ats[1], toInt64(0), CAST([], 'Array(Int64)'))).3 AS piece
    FROM runs GROUP BY profile_id, run)
SELECT profile_id, min(t.1) AS started_at, max(t.1) AS ended_at, count() AS event_count,
       countIf(t.3 = 'purchase') AS purchase_count,
       round(sumIf(t.4, t.3 = 'purchase'), 6) AS revenue
FROM run_touches ARRAY JOIN touches AS t, piece AS p
GROUP BY profile_id, run, p
"""

RFM = """
SELECT profile_id AS customer_id,
       countIf(event_type = 'purchase') AS purchase_count,
       round(sumIf(value, event_type = 'purchase') - sumIf(value, event_type = 'refund'), 6)
           AS total_revenue,
       minIf(event_time, event_type = 'purchase') AS first_purchase_at,
       maxIf(event_time, event_type = 'purchase') AS last_purchase_at,
       max(event_time) AS last_event_at
FROM raw_touchpoints
WHERE is_customer AND event_type IN ('purchase', 'refund')
GROUP BY profile_id
"""


def row(profile: str, record: dict) -> list:
    """A raw_touchpoints row of a decoded touchpoint keyed by `profile`."""
    at, event_id, kind, value = touch(record)
    return [profile, event_id, kind, at, value, record["customer_id"] is not None]


def create(client) -> None:
    client.command("DROP TABLE IF EXISTS raw_touchpoints")
    client.command(CREATE)


def land(client, brokers: str, topic: str, events: int) -> dict:
    decode = TouchpointDecoder()
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "bench-sql",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    rows: list[list] = []
    seen, inserting, cpu_inserting = 0, 0.0, 0.0
    started, cpu = time.monotonic(), time.process_time()

    def insert() -> tuple[float, float]:
        t, c = time.monotonic(), time.process_time()
        client.insert("raw_touchpoints", rows, column_names=COLUMNS)
        rows.clear()
        return time.monotonic() - t, time.process_time() - c

    while seen < events:
        for message in consumer.consume(1000, timeout=1.0):
            if message.error():
                continue
            rows.append(row(message.key().decode(), decode(message.value())))
            seen += 1
        if len(rows) >= BLOCK or (seen >= events and rows):
            s, c = insert()
            inserting, cpu_inserting = inserting + s, cpu_inserting + c
    consumer.close()
    return {"events": seen, "seconds": time.monotonic() - started,
            "cpu_seconds": time.process_time() - cpu,
            "insert_seconds": inserting, "insert_cpu_seconds": cpu_inserting}


def timed(client, sql: str) -> tuple[list[dict], dict]:
    started, cpu = time.monotonic(), time.process_time()
    result = client.query(sql)
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    return rows, {"seconds": time.monotonic() - started,
                  "cpu_seconds": time.process_time() - cpu}


def main(brokers: str, topic: str, events: str, path: str, out: str) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    create(client)
    landing = land(client, brokers, topic, int(events))
    sessions, sessions_time = timed(client, SESSIONS)
    customers, rfm_time = timed(client, RFM)
    with open(out, "w") as f:
        json.dump({"land": landing, "sessions_query": sessions_time, "rfm_query": rfm_time,
                   "sessions": sessions, "customers": customers}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
