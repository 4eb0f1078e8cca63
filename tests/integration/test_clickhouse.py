"""Migrations on the real ClickHouse engine (embedded, through clickhouse-connect)."""

import datetime as dt

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from services.common.clickhouse import connect
from services.common.settings import Settings, load
from services.warehouse.migrations import MigrationError, apply_migrations, discover

pytestmark = pytest.mark.integration
CONTRACT_TABLES = {"touchpoints", "sessions", "customer_profiles", "alerts", "dead_letters"}
T0 = dt.datetime(2024, 3, 13, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(tmp_path):
    settings = load(Settings, {"KIZUNA_HOME": str(tmp_path)})
    client = connect(settings)
    yield settings, client
    client.close()


def test_migrate_creates_the_contract_tables_once(engine):
    settings, client = engine
    applied = apply_migrations(client, settings)
    assert [m.version for m in applied] == [m.version for m in discover()]
    names = {r[0] for r in client.query(
        "SELECT name FROM system.tables WHERE database = 'kizuna'").result_rows}
    assert names == CONTRACT_TABLES | {"daily_touchpoints", "daily_funnel", "daily_alerts"}
    assert apply_migrations(client, settings) == []
    columns = {r[0]: r[1] for r in client.query(
        "SELECT name, type FROM system.columns "
        "WHERE database = 'kizuna' AND table = 'customer_profiles'"
    ).result_rows}
    for name in ("customer_id", "engagement_score", "tier", "frequency", "recency", "T",
                 "monetary_value", "rfm_segment", "preferred_channel", "as_of", "updated_at"):
        assert name in columns
    assert columns["as_of"] == columns["updated_at"] == "DateTime64(3, 'UTC')"


def test_a_profile_stored_before_the_rename_reads_as_of_and_updated_at(engine):
    """Migration 0007 renames customer_profiles.updated_at to as_of (the record's name) on a
    table that holds rows; the view answers to both names."""
    settings, client = engine
    client.command(f"CREATE DATABASE IF NOT EXISTS {settings.store_database}")
    for migration in discover():
        if migration.version < 7:
            for statement in migration.statements(settings):
                client.command(statement)
    store = settings.store_database
    client.command(f"INSERT INTO {store}.customer_profiles (customer_id, engagement_score, "
                   "tier, last_event_at, updated_at, version) VALUES "
                   "('C1', 1.5, 'warm', '2024-03-13 10:00:00', '2024-03-13 10:00:00', 1)")
    for migration in discover():
        if migration.version >= 7:
            for statement in migration.statements(settings):
                client.command(statement)
    row = client.query("SELECT customer_id, as_of, updated_at FROM kizuna.customer_profiles"
                       ).result_rows
    naive = T0.replace(tzinfo=None)
    assert row == [("C1", naive, naive)]


def test_contract_names_return_deduplicated_latest_rows(engine):
    settings, client = engine
    apply_migrations(client, settings)
    cols = ["event_id", "event_type", "channel", "profile_id", "anonymous_id", "occurred_at",
            "received_at", "event_time", "source", "version"]
    row = ["e1", "page_view", "web", "dev-1", "dev-1", T0, T0, T0, "test", 0]
    # At-least-once delivery: the same event arrives twice.
    client.insert("kizuna_store.touchpoints", [row, row], column_names=cols)
    assert client.query("SELECT count() FROM kizuna.touchpoints").result_rows == [(1,)]
    assert client.query("SELECT customer_id, session_id FROM kizuna.touchpoints"
                        ).result_rows == [(None, None)]

    scols = ["session_id", "profile_id", "customer_id", "anonymous_ids", "started_at",
             "ended_at", "event_count", "purchase_count", "revenue", "status", "version"]
    client.insert("kizuna_store.sessions_by_id", [
        ["s0", "dev-1", None, ["dev-1"], T0, T0, 1, 0, 0.0, "open", 8],
        ["s0", "C1", "C1", ["dev-1"], T0, T0, 1, 0, 0.0, "merged", 15],
        ["s1", "C1", "C1", ["dev-1"], T0, T0, 1, 0, 0.0, "open", 12],
        ["s1", "C1", "C1", ["dev-1"], T0, T0, 3, 0, 0.0, "closed", 29],
    ], column_names=scols)
    assert client.query("SELECT session_id, event_count, status FROM kizuna.sessions"
                        ).result_rows == [("s1", 3, "closed")]
    # The device's event now belongs to the customer, in the surviving session.
    assert client.query("SELECT customer_id, session_id FROM kizuna.touchpoints"
                        ).result_rows == [("C1", "s1")]


def test_an_edited_migration_is_refused(engine):
    settings, client = engine
    apply_migrations(client, settings)
    client.insert("kizuna_store.schema_migrations", [[1, "contract_tables", "edited"]],
                  column_names=["version", "name", "checksum"])
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(client, settings)


def test_a_readonly_connection_cannot_write_or_drop(engine):
    settings, client = engine
    apply_migrations(client, settings)
    reader = connect(settings, readonly=True)
    try:
        for sql in ("DROP TABLE kizuna_store.touchpoints",
                    "INSERT INTO kizuna_store.dead_letters (dead_letter_id) VALUES ('x')",
                    "SET readonly = 0"):
            with pytest.raises(DatabaseError, match="readonly"):
                reader.command(sql)
        assert reader.query("SELECT count() FROM kizuna.alerts").result_rows == [(0,)]
    finally:
        reader.close()
    client.command("INSERT INTO kizuna_store.dead_letters (dead_letter_id) VALUES ('ok')")
