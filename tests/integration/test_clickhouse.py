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
    assert names == CONTRACT_TABLES | {"daily_touchpoints", "daily_funnel", "daily_alerts",
                                       "customer_touchpoints"}
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


def test_one_customers_touchpoints_are_the_contract_views_rows_for_that_customer(engine):
    """kizuna.customer_touchpoints(customer_id = ...) reads one customer by the table's key
    (migration 0009); it must give the contract view's rows for that customer exactly: the
    touches they carried, their devices' touches (a device seen with two customers goes to the
    least id), not another customer's touch made on their device, each in the surviving
    session that holds it, and none for a touch after its session's end."""
    settings, client = engine
    apply_migrations(client, settings)
    store = settings.store_database
    minute = dt.timedelta(minutes=1)
    cols = ["event_id", "event_type", "channel", "profile_id", "customer_id", "anonymous_id",
            "occurred_at", "received_at", "event_time", "source", "version"]

    def touch(event_id, customer, device, minutes):
        t = T0 + minutes * minute
        return [event_id, "page_view", "web", customer or device, customer, device, t, t, t,
                "test", 1]

    touches = [
        touch("a1", "A", "dev-a", 0), touch("a2", "A", None, 5),
        touch("d1", None, "dev-a", 2),  # A's device, anonymous
        touch("d2", None, "dev-a", 90),  # after A's session ended: no session
        touch("s1", None, "dev-shared", 3),  # seen with A and B: the least id, A, has it
        touch("b1", "B", "dev-a", 4),  # B's own touch on A's device stays B's
        touch("b2", "B", "dev-shared", 40),
        touch("x1", None, "dev-x", 1),  # a device never linked
    ]
    touches.append(touch("a3", "A", None, 60 * 24 * 40))  # the next month's partition
    client.insert(f"{store}.touchpoints", touches + touches[:3], column_names=cols)
    scols = ["session_id", "profile_id", "customer_id", "anonymous_ids", "started_at",
             "ended_at", "event_count", "purchase_count", "revenue", "status", "version"]
    client.insert(f"{store}.sessions_by_id", [
        ["sa0", "A", "A", ["dev-a"], T0, T0 + 2 * minute, 2, 0, 0.0, "merged", 20],
        ["sa1", "A", "A", ["dev-a", "dev-shared"], T0, T0 + 10 * minute, 5, 0, 0.0,
         "closed", 41],
        ["sb1", "B", "B", ["dev-a", "dev-shared"], T0 + 4 * minute, T0 + 40 * minute, 2, 0,
         0.0, "closed", 17],
        ["sa2", "A", "A", [], T0 + 60 * 24 * 40 * minute, T0 + 60 * 24 * 40 * minute, 1, 0,
         0.0, "open", 8],
    ], column_names=scols)

    def rows(sql):
        return sorted(client.query(sql).result_rows)

    whole = {c: rows(f"SELECT * FROM kizuna.touchpoints WHERE customer_id = '{c}'")
             for c in ("A", "B")}
    assert {(r[0], r[-1]) for r in whole["A"]} == {
        ("a1", "sa1"), ("a2", "sa1"), ("d1", "sa1"), ("d2", None), ("s1", "sa1"),
        ("a3", "sa2")}
    assert {(r[0], r[-1]) for r in whole["B"]} == {("b1", "sb1"), ("b2", "sb1")}
    for customer in ("A", "B", "nobody"):
        one = rows(f"SELECT * FROM kizuna.customer_touchpoints(customer_id = '{customer}')")
        assert one == whole.get(customer, []), customer
    described = client.query("DESCRIBE kizuna.customer_touchpoints(customer_id = 'A')")
    assert [(r[0], r[1]) for r in described.result_rows] == [
        (r[0], r[1]) for r in client.query("DESCRIBE kizuna.touchpoints").result_rows]


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


def ntile5(n: int) -> list[int]:
    """ntile(5) over n ordered rows: five buckets, the first n % 5 one row larger."""
    size, extra = divmod(n, 5)
    out = []
    for bucket in range(1, 6):
        out += [bucket] * (size + (1 if bucket <= extra else 0))
    return out


def expected_segments(profiles: list[tuple]) -> dict[str, tuple[str, bool]]:
    """The RFM rule of migration 0003, in Python: (customer, purchases, last purchase,
    revenue) -> (segment, top 20% by revenue)."""
    out = {c: ("no_purchase", False) for c, n, _, _ in profiles if n == 0}
    buyers = [p for p in profiles if p[1] > 0]
    def ranks(key) -> dict[str, int]:
        ordered = sorted(buyers, key=key)
        return {p[0]: q for p, q in zip(ordered, ntile5(len(ordered)), strict=True)}
    r = ranks(lambda p: (p[2], p[0]))
    f = ranks(lambda p: (p[1], p[0]))
    m = ranks(lambda p: (p[3], p[0]))
    by_revenue = [p[0] for p in sorted(buyers, key=lambda p: (-p[3], p[0]))]
    top = set(by_revenue[:-(-len(buyers) * 2 // 10)])  # the first ceil(20%)
    for c, *_ in buyers:
        segment = ("champions" if r[c] >= 4 and f[c] >= 4 and m[c] >= 4 else
                   "loyal" if r[c] >= 3 and f[c] >= 4 else
                   "potential_loyalists" if r[c] >= 4 else
                   "at_risk" if r[c] <= 2 and f[c] >= 3 else
                   "lost" if r[c] == 1 and f[c] <= 2 else
                   "hibernating" if r[c] <= 2 else "needs_attention")
        out[c] = (segment, c in top)
    return out


def test_rfm_segments_are_the_quintile_rule_over_every_customer_and_one_lookup_agrees(engine):
    """customer_profiles' rfm_segment and top_revenue_20 are the rule of migration 0003 over
    all current profiles (a profile updated twice counts once, as its latest), whether the
    whole view is read or one customer; its columns keep their order."""
    import random

    settings, client = engine
    apply_migrations(client, settings)
    rnd = random.Random(7)
    cols = ["customer_id", "engagement_score", "tier", "last_event_at", "purchase_count",
            "total_revenue", "last_purchase_at", "as_of", "version"]
    profiles, rows = [], []
    for i in range(263):
        c = f"C{i:03d}"
        n = rnd.choice([0, 0, 1, 1, 2, 3, 5, 8])
        last = T0 - dt.timedelta(days=rnd.randrange(300)) if n else None
        revenue = float(rnd.randrange(1, 50) * 10) if n else 0.0  # ties, broken by id
        profiles.append((c, n, last, revenue))
        rows.append([c, 1.0, "warm", T0, n, revenue, last, T0, 2])
        rows.append([c, 1.0, "warm", T0, 99, 1e9, T0, T0, 1])  # superseded (version 1)
    client.insert(f"{settings.store_database}.customer_profiles", rows, column_names=cols)
    want = expected_segments(profiles)
    got = {c: (s, bool(t)) for c, s, t in client.query(
        "SELECT customer_id, rfm_segment, top_revenue_20 FROM kizuna.customer_profiles"
    ).result_rows}
    assert got == want
    assert len({s for s, _ in want.values()}) >= 6  # the data reaches most segments
    for c in ("C000", "C101", "C262"):
        one = client.query("SELECT rfm_segment, top_revenue_20 FROM kizuna.customer_profiles "
                           "WHERE customer_id = {c:String}", parameters={"c": c}).result_rows
        assert [(s, bool(t)) for s, t in one] == [want[c]]
    names = client.query("SELECT * FROM kizuna.customer_profiles LIMIT 0").column_names
    store = [n for n in client.query(f"SELECT * FROM {settings.store_database}."
                                     "customer_profiles LIMIT 0").column_names
             if n not in ("version", "rfm_segment", "top_revenue_20")]
    assert list(names) == [*store, "rfm_segment", "top_revenue_20", "updated_at"]


def test_churn_by_month_and_weekly_cohorts_follow_their_rules(engine):
    """queries/churn_rate_by_month.sql: of a month's active customers, those with no touch of
    their own the next month (a campaign send does not count; the latest month is left out);
    queries/report/cohort_retention_weeks.sql: customers by the week of their first touch of
    their own, and the share active again each week since. An anonymous touch counts for the
    customer its device was linked to."""
    from services.common import resources

    settings, client = engine
    apply_migrations(client, settings)
    store = settings.store_database
    cols = ["event_id", "event_type", "channel", "profile_id", "customer_id", "anonymous_id",
            "occurred_at", "received_at", "event_time", "source", "version"]
    touches = {  # customer -> (day, event type); 2024-01-01 and 2024-01-08 are Mondays
        "A": [("2024-01-02", "page_view"), ("2024-02-10", "page_view"),
              ("2024-03-05", "page_view")],
        "B": [("2024-01-09", "page_view"), ("2024-02-01", "email_send"),
              ("2024-03-20", "purchase")],
        "C": [("2024-02-14", "page_view")],
    }
    rows = []
    for customer, theirs in touches.items():
        for k, (day, kind) in enumerate(theirs):
            t = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
            rows.append([f"{customer}{k}", kind, "web", customer, customer, None, t, t, t,
                         "test", 1])
    d = dt.datetime(2024, 1, 3, tzinfo=dt.UTC)  # C's device, before C logged in
    rows.append(["D0", "page_view", "web", "dev-c", None, "dev-c", d, d, d, "test", 1])
    client.insert(f"{store}.touchpoints", rows, column_names=cols)
    client.insert(f"{store}.sessions_by_id", [["s1", "C", "C", ["dev-c"], d, d, 1, 0, 0.0,
                                               "closed", 1]],
                  column_names=["session_id", "profile_id", "customer_id", "anonymous_ids",
                                "started_at", "ended_at", "event_count", "purchase_count",
                                "revenue", "status", "version"])
    queries = resources.directory("services.queries")
    churn = client.query((queries / "churn_rate_by_month.sql").read_text()).result_rows
    # January: A, B, C (its device); February: A, C (B's email send is the brand's);
    # March, the latest, left out
    assert [(str(m), n, gone) for m, n, gone, _ in churn] == [
        ("2024-01-01", 3, 1), ("2024-02-01", 2, 1)]
    assert [rate for *_, rate in churn] == [round(1 / 3, 4), 0.5]
    cohorts = client.query((queries / "report" / "cohort_retention_weeks.sql").read_text()
                           ).result_rows
    weeks_since = {(cohort, since): (n, size) for cohort, since, n, size, _ in cohorts}
    # A and C start the week of 2024-01-01, B the next
    assert weeks_since[("2024-01-01", 0)] == (2, 2)
    assert weeks_since[("2024-01-08", 0)] == (1, 1)
    assert weeks_since[("2024-01-01", 5)] == (1, 2)  # A on Feb 10 (the week of Feb 5)
    assert weeks_since[("2024-01-01", 6)] == (1, 2)  # C on Feb 14 (the week of Feb 12)
    assert sum(n for n, _ in weeks_since.values()) == 7  # each customer's distinct weeks


def test_a_quiet_partition_is_merged_into_one_part_and_reads_the_same(engine):
    """services/warehouse/compaction.py: a partition in several parts with no new part for the
    quiet time is merged into one (`OPTIMIZE ... FINAL`), its duplicates collapsed; one still
    being written to, or already one part, is left alone."""
    from services.warehouse.compaction import compact

    settings, client = engine
    apply_migrations(client, settings)
    store = settings.store_database
    # ClickHouse's own merges would merge these parts some time; too big for them here, so
    # only `OPTIMIZE` merges them and the test sees what compaction did
    client.command(f"ALTER TABLE {store}.touchpoints MODIFY SETTING "
                   "max_bytes_to_merge_at_max_space_in_pool = 1, "
                   "max_bytes_to_merge_at_min_space_in_pool = 1")
    cols = ["event_id", "event_type", "channel", "profile_id", "anonymous_id", "occurred_at",
            "received_at", "event_time", "source", "version"]
    march = ["e1", "page_view", "web", "dev-1", "dev-1", T0, T0, T0, "test", 0]
    april = ["e2", "page_view", "web", "dev-1", "dev-1", T0 + dt.timedelta(days=30),
             T0, T0, "test", 0]
    redelivered = [*march[:2], "app", *march[3:]]  # the same event, stored again
    for row in (march, redelivered, april):
        client.insert(f"{store}.touchpoints", [row], column_names=cols)  # a part each

    def parts():
        return dict(client.query(
            "SELECT partition_id, count() FROM system.parts WHERE database = {s:String} AND "
            "table = 'touchpoints' AND active GROUP BY partition_id",
            parameters={"s": store}).result_rows)

    assert parts() == {"202403": 2, "202404": 1}
    view = client.query("SELECT * FROM kizuna.touchpoints ORDER BY event_id").result_rows
    assert compact(client, store, quiet_seconds=3600) == []  # written to a moment ago
    assert compact(client, store, quiet_seconds=0) == [("touchpoints", "202403")]
    assert parts() == {"202403": 1, "202404": 1}
    # merged: the table itself now holds each event once, and the view reads the same rows
    assert client.query(f"SELECT count() FROM {store}.touchpoints").result_rows == [(2,)]
    assert client.query("SELECT * FROM kizuna.touchpoints ORDER BY event_id").result_rows == view
    assert compact(client, store, quiet_seconds=0) == []
