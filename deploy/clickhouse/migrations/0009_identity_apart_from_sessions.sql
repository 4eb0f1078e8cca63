-- At 20 million touchpoints every read of `{db}.touchpoints` took 12-16 s, and the daily
-- rollups, which recompute from it every 30 s, never finished (docs/benchmarks.md, "Warehouse
-- at a retailer's size"). Two changes, the same rows:
--
-- 1. The view's two halves are apart. `{store}.touchpoints_identified` deduplicates the table
--    and resolves each touch's customer (the event's own, else its device's); the contract
--    view adds the session on top of it (the ASOF join, two thirds of a read). The rollups
--    need no session, so they read the identity half: a recompute at 20M takes 4 s, not 16.
-- 2. `FINAL` merges within each partition only (`do_not_merge_across_partitions_select_final`)
--    and skips a partition that is one part. That is exact here: touchpoints are partitioned by
--    the month of `occurred_at`, which is the same on every delivery of an event (the client's
--    own timestamp), so all versions of a row are in one partition; sessions are not
--    partitioned at all.
-- 3. One customer's touchpoints have a view of their own, `{db}.customer_touchpoints`, with the
--    customer as its parameter: `SELECT * FROM kizuna.customer_touchpoints(customer_id = 'c1')`.
--    The contract view cannot narrow its joins by a filter on the customer it computes, so one
--    customer's touches took as long as all of them (14 s at 20M); this view reads only the
--    customer's own and their devices' rows (by the table's key) and their sessions: 0.6 s. The
--    same rows as `{db}.touchpoints WHERE customer_id = 'c1'` (a test holds them equal): the
--    touches the customer carried, and those of the devices whose link resolves to them (a
--    device seen with several customers goes to the least id, as above).
--
-- And a rollup refreshes 30 s after its last refresh ended (`REFRESH AFTER`), where it started
-- the next at the full 30 s (`REFRESH EVERY`): a recompute longer than the period no longer
-- keeps a core busy for good.

CREATE OR REPLACE VIEW {store}.touchpoints_identified AS
SELECT tp.* EXCEPT (customer_id, version),
       coalesce(tp.customer_id, l.linked_customer) AS customer_id,
       ifNull(coalesce(tp.customer_id, l.linked_customer, tp.anonymous_id), '')
           AS resolved_profile
FROM {store}.touchpoints AS tp FINAL
LEFT JOIN
(
    SELECT arrayJoin(anonymous_ids) AS device, min(customer_id) AS linked_customer
    FROM {store}.sessions_by_id FINAL
    WHERE customer_id IS NOT NULL
    GROUP BY device
) AS l ON tp.anonymous_id = l.device
SETTINGS do_not_merge_across_partitions_select_final = 1;

CREATE OR REPLACE VIEW {db}.touchpoints AS
SELECT t.* EXCEPT (session_id, resolved_profile),
       if(s.session_id != '' AND t.event_time <= s.ended_at, s.session_id, NULL) AS session_id
FROM {store}.touchpoints_identified AS t
ASOF LEFT JOIN
(
    SELECT profile_id, session_id, started_at, ended_at
    FROM {store}.sessions_by_id FINAL
    WHERE status != 'merged'
) AS s ON t.resolved_profile = s.profile_id AND t.event_time >= s.started_at
SETTINGS do_not_merge_across_partitions_select_final = 1;

CREATE OR REPLACE VIEW {db}.sessions AS
    SELECT * EXCEPT version FROM {store}.sessions_by_id FINAL WHERE status != 'merged'
    SETTINGS do_not_merge_across_partitions_select_final = 1;

CREATE OR REPLACE VIEW {db}.customer_touchpoints AS
SELECT t.* EXCEPT (session_id, resolved_profile),
       if(s.session_id != '' AND t.event_time <= s.ended_at, s.session_id, NULL) AS session_id
FROM
(
    SELECT tp.* EXCEPT (customer_id, version),
           CAST({customer_id:String} AS Nullable(String)) AS customer_id,
           {customer_id:String} AS resolved_profile
    FROM {store}.touchpoints AS tp FINAL
    WHERE tp.profile_id = {customer_id:String} OR tp.profile_id IN
    (
        SELECT device
        FROM
        (
            SELECT arrayJoin(anonymous_ids) AS device, min(customer_id) AS linked_customer
            FROM {store}.sessions_by_id FINAL
            WHERE customer_id IS NOT NULL AND hasAny(anonymous_ids, (
                SELECT groupUniqArrayArray(anonymous_ids) FROM {store}.sessions_by_id FINAL
                WHERE customer_id = {customer_id:String}))
            GROUP BY device
        )
        WHERE linked_customer = {customer_id:String}
    )
) AS t
ASOF LEFT JOIN
(
    SELECT profile_id, session_id, started_at, ended_at
    FROM {store}.sessions_by_id FINAL
    WHERE status != 'merged' AND profile_id = {customer_id:String}
) AS s ON t.resolved_profile = s.profile_id AND t.event_time >= s.started_at
SETTINGS do_not_merge_across_partitions_select_final = 1;

DROP VIEW IF EXISTS {db}.daily_touchpoints;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_touchpoints
REFRESH AFTER 30 SECOND TO {store}.daily_touchpoints
AS SELECT
    toDate(event_time) AS day,
    channel,
    event_type,
    count() AS events,
    uniqExact(ifNull(customer_id, anonymous_id)) AS profiles,
    uniqExact(customer_id) AS customers,
    round(sumIf(ifNull(value, 0), event_type = 'purchase'), 2) AS revenue
FROM {store}.touchpoints_identified
GROUP BY day, channel, event_type;

DROP VIEW IF EXISTS {db}.daily_funnel;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_funnel
REFRESH AFTER 30 SECOND TO {store}.daily_funnel
AS SELECT
    toDate(event_time) AS day,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'product_view') AS viewed,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'cart_add') AS added_to_cart,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'checkout_start') AS checked_out,
    uniqExactIf(ifNull(customer_id, anonymous_id), event_type = 'purchase') AS purchased,
    round(if(viewed = 0, 0, purchased / viewed), 4) AS conversion
FROM {store}.touchpoints_identified
GROUP BY day;

DROP VIEW IF EXISTS {db}.daily_alerts;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_alerts
REFRESH AFTER 30 SECOND TO {store}.daily_alerts
AS SELECT
    toDate(detected_at) AS day,
    alert_type,
    reasons[1] AS reason,
    count() AS alerts,
    countIf(status = 'resolved') AS resolved,
    round(avg(severity), 2) AS mean_severity
FROM {db}.alerts
GROUP BY day, alert_type, reason;
