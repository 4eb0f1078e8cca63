-- Daily rollups for dashboards: materialized, exact, and cheap to read.
--
-- They are refreshable materialized views over the deduplicated contract views: every 30
-- seconds ClickHouse recomputes each one from `{db}.touchpoints` / `{db}.alerts` and swaps the
-- result in atomically. So a rollup is never double-counted by an at-least-once redelivery
-- (it reads deduplicated rows), follows late events, merges and `kizuna erase`, and is at most
-- about 30 seconds behind the tables. (Incremental materialized views on the insert stream
-- would count a redelivered batch twice.) The recompute reads the whole history; beyond
-- hundreds of millions of events, restrict it to recent days with `REFRESH ... APPEND` and a
-- `WHERE day >= today() - N`, or move to an incremental view keyed by event_id.
--
-- day is the UTC day of event time. Queries: `SELECT ... FROM {db}.daily_touchpoints`. The
-- results live in {store} tables of the same names, so {db} shows only the rollups.

CREATE TABLE IF NOT EXISTS {store}.daily_touchpoints
(
    day        Date,
    channel    LowCardinality(String),
    event_type LowCardinality(String),
    events     UInt64,
    profiles   UInt64,
    customers  UInt64,
    revenue    Float64
)
ENGINE = MergeTree
ORDER BY (day, channel, event_type);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_touchpoints
REFRESH EVERY 30 SECOND TO {store}.daily_touchpoints
AS SELECT
    toDate(event_time) AS day,
    channel,
    event_type,
    count() AS events,
    uniqExact(ifNull(customer_id, anonymous_id)) AS profiles,
    uniqExact(customer_id) AS customers,
    round(sumIf(ifNull(value, 0), event_type = 'purchase'), 2) AS revenue
FROM {db}.touchpoints
GROUP BY day, channel, event_type;

CREATE TABLE IF NOT EXISTS {store}.daily_funnel
(
    day           Date,
    viewed        UInt64,
    added_to_cart UInt64,
    checked_out   UInt64,
    purchased     UInt64,
    conversion    Float64
)
ENGINE = MergeTree
ORDER BY day;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_funnel
REFRESH EVERY 30 SECOND TO {store}.daily_funnel
AS SELECT
    toDate(event_time) AS day,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'product_view') AS viewed,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'cart_add') AS added_to_cart,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'checkout_start') AS checked_out,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'purchase') AS purchased,
    round(if(viewed = 0, 0, purchased / viewed), 4) AS conversion
FROM {db}.touchpoints
GROUP BY day;

CREATE TABLE IF NOT EXISTS {store}.daily_alerts
(
    day           Date,
    alert_type    LowCardinality(String),
    reason        LowCardinality(String),
    alerts        UInt64,
    resolved      UInt64,
    mean_severity Float64
)
ENGINE = MergeTree
ORDER BY (day, alert_type, reason);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_alerts
REFRESH EVERY 30 SECOND TO {store}.daily_alerts
AS SELECT
    toDate(detected_at) AS day,
    alert_type,
    reasons[1] AS reason,
    count() AS alerts,
    countIf(status = 'resolved') AS resolved,
    round(avg(severity), 2) AS mean_severity
FROM {db}.alerts
GROUP BY day, alert_type, reason;
