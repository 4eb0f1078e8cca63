"""The peer benchmark's job (benchmarks/peers): its sessions and totals, in Python and in
ClickHouse SQL (the real engine, embedded), are Kizuna's own, edge cases included. A peer
whose job differed would be compared on something else."""

from __future__ import annotations

import clickhouse_connect
import pytest

from benchmarks.peers import job, warehouse_sql
from benchmarks.peers.run import bench_records, compare, session_key, sessions_of, totals_of
from benchmarks.warehouse import pipeline_outputs
from services.domain.eventtime import HOUR_MS, MINUTE_MS

T0 = 1_767_571_200_000


def record(i: int, profile: str, at: int, kind: str = "page_view", value: float | None = None,
           customer: bool = True) -> dict:
    return {"event_id": f"e{i:05d}", "event_type": kind, "channel": "web", "occurred_at": at,
            "sent_at": None, "received_at": at, "event_time": at,
            "customer_id": profile if customer else None,
            "anonymous_id": None if customer else profile, "source": "test", "properties": {},
            "commerce": {"cart_id": None, "order_id": None, "product_id": None, "quantity": None,
                         "unit_price": None, "value": value, "currency": "EUR"}
            if value is not None else None, "context": {}}


def edge_cases() -> list[dict]:
    """A gap of exactly 30 minutes (joins), one of 30 minutes and 1 ms (splits), a run of 25
    hours (cut at 24 h from its first touch), purchases and a refund, a device."""
    out = [record(0, "c-gap", T0), record(1, "c-gap", T0 + 30 * MINUTE_MS),
           record(2, "c-gap", T0 + 60 * MINUTE_MS + 1)]
    out += [record(10 + k, "c-long", T0 + k * 20 * MINUTE_MS) for k in range(76)]
    out += [record(100, "c-buy", T0, "purchase", 30.0), record(101, "c-buy", T0 + 5 * MINUTE_MS,
                                                                  "purchase", 12.5),
            record(102, "c-buy", T0 + 3 * HOUR_MS, "refund", 12.5),
            record(103, "dev-1", T0, customer=False), record(104, "dev-1", T0 + HOUR_MS,
                                                             "purchase", 9.0, customer=False)]
    return sorted(out, key=lambda r: (r["event_time"], r["event_id"]))


def kizuna(records: list[dict]) -> tuple[list[tuple], dict[str, tuple]]:
    """What Kizuna's own (pure) sessionizer and scorer make of `records`."""
    out = pipeline_outputs(records)
    return sessions_of(out["sessions_by_id"][1]), totals_of(out["customer_profiles"][1])


def in_python(records: list[dict]) -> tuple[list[tuple], dict[str, tuple]]:
    """The job as the streaming peers run it: gap sessions per profile, then `job.sessions`."""
    by_profile: dict[str, list[tuple]] = {}
    totals: dict[str, dict] = {}
    for r in records:
        profile = r["customer_id"] or r["anonymous_id"]
        by_profile.setdefault(profile, []).append(job.touch(r))
        if r["customer_id"] and r["event_type"] in job.MONEY:
            totals[profile] = job.purchases(totals.get(profile), job.touch(r))
    sessions = []
    for profile, touches in by_profile.items():
        window: list[tuple] = []
        for t in sorted(touches):
            if window and t[0] - window[-1][0] > job.GAP_MS:
                sessions += job.sessions(profile, window)
                window = []
            window.append(t)
        sessions += job.sessions(profile, window)
    return ([session_key(s) for s in sessions],
            {c: (t["purchase_count"], round(t["revenue"] - t["refunds"], 2))
             for c, t in totals.items()})


def in_sql(records: list[dict], path: str) -> tuple[list[tuple], dict[str, tuple]]:
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    warehouse_sql.create(client)
    client.insert("raw_touchpoints", [warehouse_sql.row(r["customer_id"] or r["anonymous_id"], r)
                                      for r in records], column_names=warehouse_sql.COLUMNS)
    sessions = client.query(warehouse_sql.SESSIONS)
    rfm = client.query(warehouse_sql.RFM)
    return ([session_key(dict(zip(sessions.column_names, row, strict=True)))
             for row in sessions.result_rows],
            {row[0]: (row[1], round(row[2], 2)) for row in rfm.result_rows})


def test_the_edge_cases_are_kizunas_sessions(tmp_path) -> None:
    records = edge_cases()
    k_sessions, k_customers = kizuna(records)
    by_start = sorted(s[1:4] for s in k_sessions if s[0] == "c-long")
    assert [n for _, _, n in by_start] == [72, 4]  # cut at 24 h: 72 touches 20 min apart
    assert sorted(s[3] for s in k_sessions if s[0] == "c-gap") == [1, 2]
    assert k_customers["c-buy"] == (2, 30.0)
    for name, (sessions, customers) in (("python", in_python(records)),
                                        ("sql", in_sql(records, str(tmp_path / "ch")))):
        result = compare(name, sessions, customers, k_sessions, k_customers, 2**62)
        assert result["equal"], result


@pytest.mark.parametrize("how", ["python", "sql"])
def test_generated_customers_give_kizunas_sessions_and_totals(tmp_path, how: str) -> None:
    records, closing_at = bench_records(4000)
    assert len({r["event_id"] for r in records}) == len(records)
    assert all(not (r["customer_id"] and r["anonymous_id"]) for r in records)
    k_sessions, k_customers = kizuna(records)
    sessions, customers = (in_python(records) if how == "python"
                           else in_sql(records, str(tmp_path / "ch")))
    result = compare(how, sessions, customers, k_sessions, k_customers, closing_at)
    assert result["sessions"] > 500 and result["customers"] > 20
    assert result["equal"], result
