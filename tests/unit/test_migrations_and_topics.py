from services.common.settings import Settings, load
from services.common.topics import PUBLIC_TOPICS, partitions_for
from services.warehouse.migrations import discover, split_statements


def test_split_keeps_semicolons_inside_quotes_and_drops_comments():
    sql = """-- a comment; with a semicolon
    CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory;
    SELECT 'it''s; fine', "we;ird" ; -- trailing
    SELECT `a;b`"""
    assert split_statements(sql) == [
        "CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory",
        "SELECT 'it''s; fine', \"we;ird\"",
        "SELECT `a;b`",
    ]


def test_migrations_are_numbered_and_templated():
    migrations = discover()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    settings = load(Settings, {"KIZUNA_CLICKHOUSE_DATABASE": "analytics"})
    statements = migrations[0].statements(settings)
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS analytics"
    assert all("{db}" not in s and "{store}" not in s for s in statements)
    assert any("CREATE VIEW IF NOT EXISTS analytics.touchpoints" in s for s in statements)


def test_public_topics_follow_the_contract_and_the_prefix():
    settings = load(Settings, {"KIZUNA_TOPIC_PREFIX": "acme.kizuna.", "KIZUNA_PARTITIONS": "6"})
    names = {spec.name(settings.topic_prefix) for spec in PUBLIC_TOPICS}
    assert names == {f"acme.kizuna.{s}" for s in (
        "touchpoints.raw", "touchpoints.dlq", "sessions", "engagement.scores",
        "alerts.cart_abandonment", "alerts.churn_risk")}
    by_suffix = {spec.suffix: spec for spec in PUBLIC_TOPICS}
    assert partitions_for(by_suffix["touchpoints.raw"], settings) == 6
    assert partitions_for(by_suffix["touchpoints.dlq"], settings) == 1
    assert by_suffix["engagement.scores"].topic_config()["cleanup.policy"] == "compact,delete"
