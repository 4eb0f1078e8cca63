-- Contract section 5: the analyst-facing names live in {db}; storage tables in {store}.
--
-- Latest-state and deduplicated tables are ReplacingMergeTree. ClickHouse collapses rows
-- lazily (and the embedded engine may never merge), so every contract name in {db} is a view
-- over `FINAL`: a plain `SELECT count() FROM {db}.touchpoints` counts each event once.
-- ReplacingMergeTree only collapses rows within one partition, so tables are partitioned by a
-- column that never changes for a row's versions (occurred_at is the client's own timestamp,
-- identical on every retry), and latest-state tables are not partitioned at all.

CREATE DATABASE IF NOT EXISTS {db};
CREATE DATABASE IF NOT EXISTS {store};

CREATE TABLE IF NOT EXISTS {store}.touchpoints
(
    event_id      String,
    event_type    LowCardinality(String),
    channel       LowCardinality(String),
    profile_id    String COMMENT 'customer_id, else anonymous_id, as the event itself carried them',
    customer_id   Nullable(String) COMMENT 'resolved customer (after identity resolution)',
    anonymous_id  Nullable(String),
    occurred_at   DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    sent_at       Nullable(DateTime64(3, 'UTC')),
    received_at   DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    event_time    DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'occurred_at corrected for client clock skew',
    session_id    Nullable(String),
    source        LowCardinality(String),
    cart_id       Nullable(String),
    order_id      Nullable(String),
    product_id    Nullable(String),
    quantity      Nullable(Int64),
    unit_price    Nullable(Float64),
    value         Nullable(Float64),
    currency      LowCardinality(Nullable(String)),
    properties    Map(String, String),
    context       Map(String, String),
    version       UInt64 COMMENT 'highest wins: later enrichment replaces earlier rows'
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (profile_id, event_id);

CREATE TABLE IF NOT EXISTS {store}.sessions
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
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (profile_id, session_id);

CREATE TABLE IF NOT EXISTS {store}.customer_profiles
(
    customer_id               String,
    engagement_score          Float64,
    tier                      LowCardinality(String),
    channel_scores            Map(LowCardinality(String), Float64),
    last_event_at             DateTime64(3, 'UTC'),
    purchase_count            UInt32,
    total_revenue             Float64,
    first_purchase_at         Nullable(DateTime64(3, 'UTC')),
    last_purchase_at          Nullable(DateTime64(3, 'UTC')),
    frequency                 UInt32,
    recency                   Float64,
    T                         Float64,
    monetary_value            Float64,
    rfm_segment               LowCardinality(Nullable(String)),
    top_revenue_20            Bool,
    preferred_channel         LowCardinality(Nullable(String)),
    reachable_channels        Array(LowCardinality(String)),
    median_interpurchase_days Nullable(Float64),
    updated_at                DateTime64(3, 'UTC') COMMENT 'event time the profile was computed at (as_of)',
    version                   UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id;

CREATE TABLE IF NOT EXISTS {store}.alerts
(
    alert_id            String,
    alert_type          LowCardinality(String),
    status              LowCardinality(String),
    customer_id         Nullable(String),
    anonymous_id        Nullable(String),
    detected_at         DateTime64(3, 'UTC'),
    emitted_at          DateTime64(3, 'UTC'),
    reasons             Array(LowCardinality(String)),
    severity            UInt8,
    evidence_event_ids  Array(String),
    cart_id             Nullable(String),
    cart_value          Nullable(Float64),
    cart_items          Array(Tuple(product_id String, quantity Int64, unit_price Nullable(Float64))),
    score_snapshot      Nullable(Float64),
    recommended_channel LowCardinality(Nullable(String)),
    recommended_action  LowCardinality(String),
    version             UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (alert_type, alert_id);

CREATE TABLE IF NOT EXISTS {store}.dead_letters
(
    dead_letter_id   String,
    reason           LowCardinality(String),
    detail           String,
    stage            LowCardinality(String),
    source           LowCardinality(Nullable(String)),
    payload          String CODEC(ZSTD(3)),
    received_at      DateTime64(3, 'UTC'),
    origin_topic     Nullable(String),
    origin_partition Nullable(Int32),
    origin_offset    Nullable(Int64)
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY dead_letter_id
TTL toDateTime(received_at) + INTERVAL 90 DAY;

CREATE VIEW IF NOT EXISTS {db}.touchpoints AS
    SELECT * EXCEPT version FROM {store}.touchpoints FINAL;

CREATE VIEW IF NOT EXISTS {db}.sessions AS
    SELECT * EXCEPT version FROM {store}.sessions FINAL WHERE status != 'merged';

CREATE VIEW IF NOT EXISTS {db}.customer_profiles AS
    SELECT * EXCEPT version FROM {store}.customer_profiles FINAL;

CREATE VIEW IF NOT EXISTS {db}.alerts AS
    SELECT * EXCEPT version FROM {store}.alerts FINAL;

CREATE VIEW IF NOT EXISTS {db}.dead_letters AS
    SELECT * FROM {store}.dead_letters FINAL;
