-- Kizuna on a ClickHouse cluster: replicated storage, sharded by customer, read through
-- Distributed tables under the single-node names, so the loader, the contract views
-- (migrations 0001-0004) and `kizuna query` work unchanged.
--
-- How to apply (once, from any node; {cluster} is the cluster name of remote_servers, and the
-- macros {shard} and {replica} are set on every node):
--   1. run the single-node migrations into a template database on every node, for the column
--      lists:  KIZUNA_CLICKHOUSE_DATABASE=kizuna_template kizuna migrate
--      (it creates kizuna_template and kizuna_template_store; only the latter is used)
--   2. run this file with {store} = kizuna_store, {cluster} = your cluster:
--        clickhouse-client --multiquery < cluster.sql
--   3. run `kizuna migrate` (the views of 0001-0004 read the Distributed tables by name).
--
-- Sharding: every version of a row must live on one shard, because ReplacingMergeTree (and
-- FINAL) deduplicate within a shard only. So each table is sharded by a key its rows never
-- change: touchpoints by profile_id (the ids the event itself carried), sessions by
-- session_id (a session keeps its id when it moves from a device to its customer), profiles
-- and alerts by customer_id, dead letters by their id. A customer's touchpoints, profile and
-- alerts are therefore on one shard (profile_id is the customer id when the event has one).

CREATE DATABASE IF NOT EXISTS {store} ON CLUSTER '{cluster}';

CREATE TABLE IF NOT EXISTS {store}.touchpoints_local ON CLUSTER '{cluster}'
AS kizuna_template_store.touchpoints
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{store}/touchpoints', '{replica}', version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (profile_id, event_id);

CREATE TABLE IF NOT EXISTS {store}.touchpoints ON CLUSTER '{cluster}'
AS {store}.touchpoints_local
ENGINE = Distributed('{cluster}', {store}, touchpoints_local, cityHash64(profile_id));

CREATE TABLE IF NOT EXISTS {store}.sessions_by_id_local ON CLUSTER '{cluster}'
AS kizuna_template_store.sessions_by_id
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{store}/sessions_by_id', '{replica}', version)
ORDER BY session_id;

CREATE TABLE IF NOT EXISTS {store}.sessions_by_id ON CLUSTER '{cluster}'
AS {store}.sessions_by_id_local
ENGINE = Distributed('{cluster}', {store}, sessions_by_id_local, cityHash64(session_id));

CREATE TABLE IF NOT EXISTS {store}.customer_profiles_local ON CLUSTER '{cluster}'
AS kizuna_template_store.customer_profiles
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{store}/customer_profiles', '{replica}', version)
ORDER BY customer_id;

CREATE TABLE IF NOT EXISTS {store}.customer_profiles ON CLUSTER '{cluster}'
AS {store}.customer_profiles_local
ENGINE = Distributed('{cluster}', {store}, customer_profiles_local, cityHash64(customer_id));

CREATE TABLE IF NOT EXISTS {store}.alerts_local ON CLUSTER '{cluster}'
AS kizuna_template_store.alerts
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{store}/alerts', '{replica}', version)
ORDER BY (alert_type, alert_id);

CREATE TABLE IF NOT EXISTS {store}.alerts ON CLUSTER '{cluster}'
AS {store}.alerts_local
ENGINE = Distributed('{cluster}', {store}, alerts_local, cityHash64(ifNull(customer_id, alert_id)));

CREATE TABLE IF NOT EXISTS {store}.dead_letters_local ON CLUSTER '{cluster}'
AS kizuna_template_store.dead_letters
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{store}/dead_letters', '{replica}', received_at)
ORDER BY dead_letter_id
TTL toDateTime(received_at) + INTERVAL 90 DAY;

CREATE TABLE IF NOT EXISTS {store}.dead_letters ON CLUSTER '{cluster}'
AS {store}.dead_letters_local
ENGINE = Distributed('{cluster}', {store}, dead_letters_local, cityHash64(dead_letter_id));
