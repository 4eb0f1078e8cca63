"""The sessionizer on the real stack: collector validation -> Kafka -> faust -> ClickHouse.

Tests share one stack, and event time is per partition, so each test writes events later than
the previous test's (`Clock`). The replay test starts a second stack with one partition.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from services.common.queries import query_rows
from services.common.settings import Settings, load
from tests.conftest import kizuna, stack_env

pytestmark = pytest.mark.integration
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock:
    """Hands each test its own weeks of event time, after the previous test's."""

    week = 0

    @classmethod
    def start(cls, weeks: int = 1) -> dt.datetime:
        start = BASE + dt.timedelta(weeks=cls.week + 1)
        cls.week += weeks
        return start


def event(event_id: str, at: dt.datetime, customer: str | None = None,
          device: str | None = None, event_type: str = "page_view", channel: str = "web",
          **extra: object) -> dict:
    e = {"event_id": event_id, "event_type": event_type, "channel": channel,
         "occurred_at": at.isoformat().replace("+00:00", "Z")}
    if customer:
        e["customer_id"] = customer
    if device:
        e["anonymous_id"] = device
    e.update(extra)
    return e


def run(env: dict, events: list[dict], until: dt.datetime, tmp: Path, batch: int = 500) -> None:
    path = tmp / f"events-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    kizuna(env, "import", str(path), "--until", until.isoformat().replace("+00:00", "Z"),
           "--batch", str(batch))
    kizuna(env, "wait", "--timeout", "120")


def sessions(env: dict, where: str) -> list[dict]:
    return query_rows(load(Settings, env), f"SELECT session_id, profile_id, customer_id, "
                      f"event_count, status, channels, anonymous_ids, started_at, ended_at "
                      f"FROM kizuna.sessions WHERE {where} ORDER BY started_at, profile_id")


def test_a_29_minute_gap_keeps_one_session_and_31_minutes_make_two(stack, tmp_path) -> None:
    t0 = Clock.start()
    minute = dt.timedelta(minutes=1)
    run(stack, [event("g29-1", t0, "gap29"), event("g31-1", t0, "gap31"),
                event("g29-2", t0 + 29 * minute, "gap29"),
                event("g31-2", t0 + 31 * minute, "gap31")],
        t0 + dt.timedelta(days=1), tmp_path)
    assert [r["event_count"] for r in sessions(stack, "customer_id = 'gap29'")] == [2]
    assert [r["event_count"] for r in sessions(stack, "customer_id = 'gap31'")] == [1, 1]
    assert {r["status"] for r in sessions(stack, "customer_id LIKE 'gap3%'")} == {"closed"}


def test_a_late_event_within_lateness_merges_two_sessions(stack, tmp_path) -> None:
    t0 = Clock.start()
    minute = dt.timedelta(minutes=1)
    # 0 and 34 minutes: two sessions; then a late event at 17 (stream time 34: 17 min late,
    # but on its partition the stream has reached 34 only because of this customer) bridges.
    # The allowed lateness is 10 min, so the late event comes at 26: 8 min late.
    run(stack, [event("m-1", t0, "merger"), event("m-3", t0 + 34 * minute, "merger")],
        t0 + 34 * minute, tmp_path)
    before = sessions(stack, "customer_id = 'merger'")
    assert [r["event_count"] for r in before] == [1, 1]
    run(stack, [event("m-2", t0 + 26 * minute, "merger", event_type="cart_add")],
        t0 + dt.timedelta(days=1), tmp_path)
    after = sessions(stack, "customer_id = 'merger'")
    assert [(r["event_count"], r["status"]) for r in after] == [(3, "closed")]
    assert after[0]["session_id"] == before[0]["session_id"]
    store = query_rows(load(Settings, stack),
                       "SELECT status, merged_into FROM kizuna_store.sessions_by_id FINAL "
                       f"WHERE session_id = '{before[1]['session_id']}'")
    assert store == [{"status": "merged", "merged_into": before[0]["session_id"]}]
    touch = query_rows(load(Settings, stack), "SELECT DISTINCT session_id FROM "
                       "kizuna.touchpoints WHERE customer_id = 'merger'")
    assert touch == [{"session_id": before[0]["session_id"]}]


def test_anonymous_browsing_then_app_login_is_one_customer(stack, tmp_path) -> None:
    t0 = Clock.start()
    minute = dt.timedelta(minutes=1)
    run(stack, [
        event("anon-1", t0, device="phone-77"),
        event("anon-2", t0 + 4 * minute, device="phone-77", event_type="product_view"),
        # Hours later, a new visit: the earlier session closed while anonymous.
        event("anon-3", t0 + 180 * minute, device="phone-77", event_type="cart_add"),
        event("login", t0 + 185 * minute, "cust-77", device="phone-77", event_type="identify",
              channel="app"),
        event("app-1", t0 + 190 * minute, "cust-77", channel="app"),
    ], t0 + dt.timedelta(days=1), tmp_path)
    rows = sessions(stack, "has(anonymous_ids, 'phone-77') OR customer_id = 'cust-77' "
                           "OR profile_id = 'phone-77'")
    assert [(r["profile_id"], r["customer_id"], r["event_count"]) for r in rows] == [
        ("cust-77", "cust-77", 2), ("cust-77", "cust-77", 3)]
    assert rows[1]["channels"] == ["app", "web"]
    touches = query_rows(load(Settings, stack),
                         "SELECT event_id, customer_id, session_id FROM kizuna.touchpoints "
                         "WHERE event_id IN ('anon-1', 'anon-2', 'anon-3', 'login', 'app-1') "
                         "ORDER BY event_id")
    assert {t["customer_id"] for t in touches} == {"cust-77"}
    assert {t["session_id"] for t in touches} == {r["session_id"] for r in rows}

    port = stack["KIZUNA_SESSIONIZER_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    links = re.search(r'^kizuna_sessionizer_events_total\{outcome="identity_links"\} (\S+)$',
                      metrics, re.M)
    assert links and float(links[1]) >= 1
    assert re.search(r"^kizuna_sessionizer_open_sessions \S+$", metrics, re.M)
    assert "kizuna_sessionizer_faust_" in metrics  # faust's own sensor


def generated(t0: dt.datetime, seed: int = 11) -> list[dict]:
    """Two days of 60 profiles: customers, devices that log in, devices that never do."""
    rnd = random.Random(seed)
    events = []
    for n in range(60):
        customer, device = f"rp-c{n}", f"rp-d{n}"
        at = t0 + dt.timedelta(minutes=rnd.randint(0, 600))
        for i in range(rnd.randint(3, 40)):
            at += dt.timedelta(minutes=rnd.choice([1, 2, 5, 12, 29, 31, 45, 180]))
            kind = n % 3
            if kind == 0:
                ids = {"customer": customer}
            elif kind == 1:  # browses anonymously, logs in on the 5th touch
                ids = {"device": device} if i < 4 else {"customer": customer, "device": device}
            else:
                ids = {"device": device}
            events.append(event(f"rp-{n}-{i}", at, **ids,
                                channel=rnd.choice(["web", "app", "email", "pos"])))
    events.sort(key=lambda e: e["occurred_at"])
    return events


def snapshot(env: dict) -> list[dict]:
    return query_rows(load(Settings, env),
                      "SELECT * FROM kizuna.sessions WHERE startsWith(profile_id, 'rp-') "
                      "ORDER BY session_id")


def test_replay_on_one_partition_unbatched_rocksdb_killed_worker_gives_identical_sessions(
        stack, tmp_path) -> None:
    t0 = Clock.start()
    events = generated(t0)
    until = t0 + dt.timedelta(days=4)
    run(stack, events, until, tmp_path)  # 4 partitions, no fault
    expected = snapshot(stack)
    assert len(expected) > 60 and all(r["status"] == "closed" for r in expected)

    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    # One partition, and state on local disk (RocksDB) instead of memory + changelog.
    env = {**stack_env(home), "KIZUNA_PARTITIONS": "1", "KIZUNA_SESSIONIZER_STORE": "rocksdb://"}
    try:
        kizuna(env, "up")
        half = len(events) // 2
        # One touchpoint per message here (as the HTTP collector writes), batches of 500 in
        # the 4-partition run above: how events were delivered must not matter.
        run(env, events[:half], t0, tmp_path, batch=1)
        worker = next(p for p in psutil.process_iter(["cmdline"])
                      if "services.sessionizer" in " ".join(p.info["cmdline"] or ())
                      and p.environ().get("KIZUNA_HOME") == str(home))
        worker.kill()  # SIGKILL; the process runner starts it again, state from changelog
        run(env, events[half - 50:], until, tmp_path, batch=1)  # 50 events delivered twice
        assert snapshot(env) == expected
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)
