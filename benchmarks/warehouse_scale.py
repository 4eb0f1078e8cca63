"""`make bench-warehouse-scale`: the analysts' queries at a retailer's size, embedded engine.

    python -m benchmarks.warehouse_scale --touchpoints 20000000 --customers 1000000

Fills a fresh embedded ClickHouse (chdb, the contract's migrations applied) with rows shaped
as the pipeline writes them, made by ClickHouse itself from `numbers()` (a Python run of the
pipeline to this size takes hours here), in inserts of `--insert-rows` so the tables hold
many parts, as a loader's batches leave them:

- touchpoints: each customer's touches in sessions of 5 (a page view, a product view, a cart
  add, a checkout, a purchase on every 3rd session) over the year, on web, app, email or pos;
  every 3rd customer's first session anonymous, on a device a later session links;
- sessions: one row per session (and its device in `anonymous_ids`);
- customer_profiles: one per customer; alerts: one cart alert per 10 customers.

Then times every query of `queries/` (the pack, the report's, a customer's page) and
`kizuna profile`'s: the median of 3 runs, and the rows each returns.
Writes out/warehouse-scale-<touchpoints>.json and .md. `--keep DIR` leaves the data in DIR;
`--reuse DIR` times the queries again on it (after a change to a view or a query).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "2025-01-01 00:00:00"

TOUCHPOINTS = """
INSERT INTO kizuna_store.touchpoints
SELECT event_id, event_type, channel, profile_id, customer_id, anonymous_id,
       t AS occurred_at, NULL AS sent_at, t + 1 AS received_at, t AS event_time,
       NULL AS session_id, 'bench' AS source,
       if(step = 2, concat(customer, '-cart-', toString(session)), NULL) AS cart_id,
       if(step = 4, concat(customer, '-order-', toString(session)), NULL) AS order_id,
       if(step = 2, concat('P', toString(cityHash64(event_id) % 500)), NULL) AS product_id,
       if(step = 2, 1, NULL) AS quantity,
       if(step = 2, 10 + cityHash64(event_id) % 200, NULL) AS unit_price,
       if(step = 4, toFloat64(10 + cityHash64(event_id) % 200), NULL) AS value,
       if(step IN (2, 4), 'EUR', NULL) AS currency,
       map('page', concat('/p/', toString(cityHash64(event_id) % 500))) AS properties,
       map() AS context, 1 AS version
FROM
(
    SELECT n, customer, touch, session, step, device,
           concat(customer, '-', toString(touch)) AS event_id,
           ['page_view', 'product_view', 'cart_add', 'checkout_start',
            if(session % 3 = 0, 'purchase', 'page_view')][step + 1] AS event_type,
           ['web', 'web', 'app', 'email', 'pos'][cityHash64(customer, session) % 5 + 1]
               AS channel,
           anonymous AS anon,
           if(anon, NULL, customer) AS customer_id,
           device AS anonymous_id,
           if(anon, device, customer) AS profile_id,
           toDateTime64('{start}', 3, 'UTC') + toIntervalMillisecond(
               (cityHash64(customer) % (60 * 86400)) * 1000 + session * {session_gap_ms}
               + step * 180000) AS t
    FROM
    (
        SELECT number AS n, {per} AS per,
               concat('c', leftPad(toString(n % {customers}), 7, '0')) AS customer,
               intDiv(n, {customers}) AS touch,
               intDiv(touch, 5) AS session, touch % 5 AS step,
               concat('d', leftPad(toString(n % {customers}), 7, '0')) AS device,
               (n % {customers}) % 3 = 0 AND intDiv(touch, 5) = 0 AS anonymous
        FROM numbers({first}, {count})
    )
)
"""

SESSIONS = """
INSERT INTO kizuna_store.sessions_by_id
SELECT concat(customer, '-s', toString(session)) AS session_id,
       if(anon, device, customer) AS profile_id, if(anon, NULL, customer) AS customer_id,
       device AS anonymous_id, [device] AS anonymous_ids,
       started, started + toIntervalMillisecond(4 * 180000) AS ended_at, 5 AS event_count,
       [channel] AS channels,
       map('page_view', if(session % 3 = 0, 1, 2), 'product_view', 1, 'cart_add', 1,
           'checkout_start', 1, 'purchase', if(session % 3 = 0, 1, 0)) AS event_type_counts,
       if(session % 3 = 0, 1, 0) AS purchase_count, 0.0 AS revenue,
       'page_view' AS entry_event_type,
       if(session % 3 = 0, 'purchase', 'page_view') AS exit_event_type,
       'closed' AS status, NULL AS merged_into, 42 AS version
FROM
(
    SELECT concat('c', leftPad(toString(number % {customers}), 7, '0')) AS customer,
           concat('d', leftPad(toString(number % {customers}), 7, '0')) AS device,
           intDiv(number, {customers}) AS session,
           (number % {customers}) % 3 = 0 AND session = 0 AS anon,
           ['web', 'web', 'app', 'email', 'pos'][cityHash64(customer, session) % 5 + 1]
               AS channel,
           toDateTime64('{start}', 3, 'UTC') + toIntervalMillisecond(
               (cityHash64(customer) % (60 * 86400)) * 1000 + session * {session_gap_ms})
               AS started
    FROM numbers({first}, {count})
)
"""

PROFILES = """
INSERT INTO kizuna_store.customer_profiles
SELECT customer AS customer_id, score AS engagement_score,
       multiIf(score >= 50, 'high', score >= 20, 'medium', 'low') AS tier,
       map('web', score * 0.6, 'app', score * 0.3, 'email', score * 0.1) AS channel_scores,
       last AS last_event_at, purchases AS purchase_count, purchases * 105.0 AS total_revenue,
       if(purchases > 0, first, NULL) AS first_purchase_at,
       if(purchases > 0, last, NULL) AS last_purchase_at,
       greatest(purchases, 1) - 1 AS frequency, 30.0 * frequency AS recency, 300.0 AS T,
       if(frequency > 0, 105.0, 0.0) AS monetary_value, NULL AS rfm_segment,
       false AS top_revenue_20, 'web' AS preferred_channel, ['web', 'email'] AS
       reachable_channels, if(frequency > 0, 30.0, NULL) AS median_interpurchase_days,
       last AS as_of, 7 AS version
FROM
(
    SELECT concat('c', leftPad(toString(number), 7, '0')) AS customer,
           toFloat64(cityHash64(customer) % 10000) / 100 AS score,
           toUInt32(intDiv({sessions} + 2, 3)) AS purchases,
           toDateTime64('{start}', 3, 'UTC')
               + toIntervalSecond(cityHash64(customer) % (60 * 86400)) AS first,
           first + toIntervalDay(300) AS last
    FROM numbers({first}, {count})
)
"""

ALERTS = """
INSERT INTO kizuna_store.alerts
SELECT concat('cart_abandonment:', customer, '-cart-1') AS alert_id,
       'cart_abandonment' AS alert_type, ['open', 'resolved'][number % 2 + 1] AS status,
       customer AS customer_id, NULL AS anonymous_id, at AS detected_at, at AS emitted_at,
       ['cart_inactive_60m'] AS reasons, 2 AS severity, [concat(customer, '-2')] AS
       evidence_event_ids, concat(customer, '-cart-1') AS cart_id, 120.0 AS cart_value,
       [('P1', 1, 120.0)] AS cart_items, 12.5 AS score_snapshot, 'email' AS
       recommended_channel, 'send_reminder' AS recommended_action, 1 AS version
FROM
(
    SELECT concat('c', leftPad(toString(number * 10), 7, '0')) AS customer,
           toDateTime64('{start}', 3, 'UTC')
               + toIntervalSecond(cityHash64(customer) % (300 * 86400)) AS at, number
    FROM numbers({first}, {count})
)
"""


def fill(client, touchpoints: int, customers: int, chunk: int) -> dict:
    """The tables, in inserts of `chunk` rows; seconds per table."""
    per = touchpoints // customers
    sessions = per // 5
    gap_ms = (300 // max(1, sessions)) * 86_400_000
    took = {}
    plan = (("touchpoints", TOUCHPOINTS, customers * per),
            ("sessions", SESSIONS, customers * sessions),
            ("customer_profiles", PROFILES, customers),
            ("alerts", ALERTS, customers // 10))
    for table, sql, rows in plan:
        started = time.monotonic()
        for first in range(0, rows, chunk):
            client.command(sql.format(start=START, customers=customers, per=per,
                                      sessions=sessions, session_gap_ms=gap_ms, first=first,
                                      count=min(chunk, rows - first)))
        took[table] = {"rows": rows, "insert_s": round(time.monotonic() - started, 1)}
        print(f"{table}: {rows:,} rows in {took[table]['insert_s']} s", flush=True)
    return took


def queries(customer: str) -> list[tuple[str, str]]:
    """(name, SQL) of every query the analysts, the report and `kizuna profile` run."""
    from services.common.queries import bind

    found = []
    for path in sorted((ROOT / "queries").rglob("*.sql")):
        name = str(path.relative_to(ROOT / "queries"))
        found.append((name, bind(path.read_text(), {"customer_id": customer})))
    found.append(("kizuna profile", bind("SELECT * FROM kizuna.customer_profiles WHERE "
                                         "customer_id = {customer_id:String}",
                                         {"customer_id": customer})))
    return found


def timed(client, sql: str, runs: int) -> dict:
    seconds = []
    for _ in range(runs):
        started = time.monotonic()
        result = client.query(sql)
        seconds.append(time.monotonic() - started)
    return {"median_s": round(statistics.median(seconds), 3), "rows": len(result.result_rows)}


def main() -> None:
    from services.common import clickhouse
    from services.common.settings import Settings, load
    from services.warehouse.migrations import apply_migrations

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--touchpoints", type=int, default=20_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--insert-rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", help="leave the data in this directory")
    parser.add_argument("--reuse", help="time the queries again on the data a --keep run left "
                                        "in this directory (no fill)")
    args = parser.parse_args()

    where = Path(args.reuse or args.keep or tempfile.mkdtemp(prefix="kz-whscale-"))
    settings = load(Settings, {"KIZUNA_HOME": str(where),
                               "KIZUNA_CLICKHOUSE_URL": f"chdb://{where / 'clickhouse'}"})
    client = clickhouse.connect(settings)
    result: dict = {"touchpoints": args.touchpoints, "customers": args.customers}
    try:
        apply_migrations(client, settings)
        if not args.reuse:
            result["inserts"] = fill(client, args.touchpoints, args.customers,
                                     args.insert_rows)
        parts = client.query("SELECT table, count() FROM system.parts WHERE active AND "
                             "database = 'kizuna_store' GROUP BY table").result_rows
        result["parts"] = dict(parts)
        customer = f"c{args.customers // 2:07d}"  # identified, with a cart alert
        result["queries"] = {}
        for name, sql in queries(customer):
            try:
                result["queries"][name] = timed(client, sql, args.runs)
            except Exception as exc:  # noqa: BLE001 - a query that fails is a finding
                result["queries"][name] = {"error": str(exc).splitlines()[0][:300]}
            print(f"{name:<40} {result['queries'][name]}", flush=True)
    finally:
        client.close()
        if not (args.keep or args.reuse):
            shutil.rmtree(where, ignore_errors=True)
    out = ROOT / "out" / f"warehouse-scale-{args.touchpoints}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    lines = ["| query | median s | rows |", "|---|---|---|"]
    for name, r in result["queries"].items():
        lines.append(f"| {name} | {r.get('median_s', 'error: ' + r.get('error', ''))} | "
                     f"{r.get('rows', '')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
