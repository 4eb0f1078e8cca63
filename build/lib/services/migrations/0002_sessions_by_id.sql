-- Sessions are deduplicated by session_id alone: a device's session moves to its customer when
-- the device identifies (same session_id, new profile_id), and the newest version must replace
-- the device's row. The 0001 table, keyed by (profile_id, session_id), was never written to by
-- a released stage; it is dropped.
--
-- The touchpoints view resolves what the raw event could not know:
-- customer_id: the event's own, else the customer its device was linked to (a device appears
--   in the anonymous_ids of its customer's sessions);
-- session_id: the live session of the resolved profile whose span holds the event (ASOF join
--   on started_at, then checked against ended_at). Merged sessions are never joined, so the
--   id is always the surviving one. An event too late to be sessionized has none.

CREATE TABLE IF NOT EXISTS {store}.sessions_by_id
(
    session_id        String,
    profile_id        String,
    customer_id       Nullable(String),
    anonymous_id      Nullable(String) COMMENT 'first device of the session',
    anonymous_ids     Array(String),
    started_at        DateTime64(3, 'UTC'),
    ended_at          DateTime64(3, 'UTC'),
    event_count       UInt32,
    channels          Array(LowCardinality(String)),
    event_type_counts Map(LowCardinality(String), UInt32),
    purchase_count    UInt32,
    revenue           Float64,
    entry_event_type  LowCardinality(Nullable(String)),
    exit_event_type   LowCardinality(Nullable(String)),
    status            LowCardinality(String) COMMENT 'open | closed | merged',
    merged_into       Nullable(String),
    version           UInt64 COMMENT 'event_count * 8 + attributed * 4 + status rank'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY session_id;

CREATE OR REPLACE VIEW {db}.sessions AS
    SELECT * EXCEPT version FROM {store}.sessions_by_id FINAL WHERE status != 'merged';

DROP TABLE IF EXISTS {store}.sessions;

CREATE OR REPLACE VIEW {db}.touchpoints AS
SELECT t.* EXCEPT (version, customer_id, session_id, resolved_customer, resolved_profile),
       t.resolved_customer AS customer_id,
       if(s.session_id != '' AND t.event_time <= s.ended_at, s.session_id, NULL) AS session_id
FROM
(
    SELECT tp.*,
           coalesce(tp.customer_id, l.linked_customer) AS resolved_customer,
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
) AS t
ASOF LEFT JOIN
(
    SELECT profile_id, session_id, started_at, ended_at
    FROM {store}.sessions_by_id FINAL
    WHERE status != 'merged'
) AS s ON t.resolved_profile = s.profile_id AND t.event_time >= s.started_at;
