"""Late channels and backfills on the real stack (contract section 2, "Bounded input and late
data"): a store's receipts uploaded hours late, and a year of history imported into a
pipeline that already runs live, give the sessions and profiles of the same events in time.

Each scenario runs two sets of customers side by side on stacks sharing the session's broker:
one gets its events late, the other the same events in time; ids carry the set's prefix.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from pathlib import Path

import pytest

from services.common.queries import query_rows
from services.common.settings import Settings, load
from services.generator.cli import write
from services.ingest.validation import Enrichment, Rejection, validate
from tests.conftest import kizuna, services_stack
from tests.integration.test_collector import post

pytestmark = pytest.mark.integration
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def send(env: dict, events: list[dict], key: str = "key-shop") -> None:
    for i in range(0, len(events), 200):
        status, answer, _ = post(env, "/v1/events", {"events": events[i:i + 200]}, key=key)
        assert status == 202 and not answer["rejected"], answer


def advance(env: dict, tmp: Path, until_ms: int) -> None:
    """Move event time on every partition (what the live tick does), then wait."""
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    kizuna(env, "import", str(empty), "--until", iso(until_ms))
    kizuna(env, "wait", "--timeout", "300")


def sessions_of(settings: Settings, prefix: str) -> list[tuple]:
    rows = query_rows(settings, f"""
        SELECT substring(customer_id, {len(prefix) + 1}) AS c, toUnixTimestamp64Milli(started_at)
            AS s, toUnixTimestamp64Milli(ended_at) AS e, event_count, purchase_count, revenue,
            channels
        FROM kizuna.sessions WHERE startsWith(customer_id, '{prefix}')""")
    return sorted((r["c"], r["s"], r["e"], r["event_count"], r["purchase_count"],
                   round(r["revenue"], 2), tuple(r["channels"])) for r in rows)


def profiles_of(settings: Settings, prefix: str) -> list[tuple]:
    rows = query_rows(settings, f"""
        SELECT substring(customer_id, {len(prefix) + 1}) AS c, purchase_count, total_revenue,
            frequency, recency, T, monetary_value, median_interpurchase_days, rfm_segment,
            toUnixTimestamp64Milli(first_purchase_at) AS f, engagement_score
        FROM kizuna.customer_profiles WHERE startsWith(customer_id, '{prefix}')""")
    return sorted((r["c"], r["purchase_count"], round(r["total_revenue"], 2), r["frequency"],
                   r["recency"], r["T"], round(r["monetary_value"], 4),
                   r["median_interpurchase_days"], r["f"], round(r["engagement_score"], 4))
                  for r in rows)


# -- a store's receipts, uploaded at night --------------------------------------------------

def shopper(prefix: str, n: int, day0: int, rnd: random.Random) -> tuple[list, list]:
    """One customer's web and app touches over three days, and their store receipts. The
    receipt of day 1 falls between two web visits 50 minutes apart and within the hour after
    a cart was filled on the web: in time, it joins the visits and saves the cart."""
    c = f"{prefix}{n}"
    web, receipts = [], []

    def ev(i: str, t: int, kind: str, channel: str = "web", **commerce) -> dict:
        e = {"event_id": f"{c}-{i}", "event_type": kind, "channel": channel,
             "occurred_at": iso(t), "customer_id": c}
        if commerce:
            e["commerce"] = commerce
        return e

    d1 = day0 + DAY + (9 + n % 5) * HOUR + rnd.randrange(HOUR)
    web += [ev("v1", d1, "product_view"),
            ev("a1", d1 + 5 * MIN, "cart_add", cart_id=f"K{c}", product_id="P1", quantity=1,
               unit_price=20.0),
            ev("v2", d1 + 55 * MIN, "page_view")]
    receipts.append(ev("r1", d1 + 30 * MIN, "purchase", "pos", order_id=f"O{c}1",
                       value=20.0 + n, currency="EUR"))
    d0 = day0 + 2 * HOUR + rnd.randrange(HOUR)  # day 0: a web purchase
    web += [ev("v0", d0, "product_view"),
            ev("p0", d0 + 10 * MIN, "purchase", order_id=f"O{c}0", value=15.0)]
    for k in range(4):  # day 2: app use through the day
        web.append(ev(f"app{k}", day0 + 2 * DAY + k * 3 * HOUR, "app_open", "app"))
    if n % 2:
        receipts.append(ev("r2", day0 + 2 * DAY + 13 * HOUR, "purchase", "pos",
                           order_id=f"O{c}2", value=9.5))
    return web, receipts


def test_a_stores_receipts_uploaded_hours_late_give_the_results_of_receipts_in_time(
        stack, tmp_path) -> None:
    rnd = random.Random(8)
    day0 = (int(time.time() * 1000) // DAY - 4) * DAY
    late_web, late_receipts, in_time = [], [], []
    for n in range(12):
        web, receipts = shopper("LS-A", n, day0, random.Random(n))
        late_web += web
        late_receipts += receipts
        web, receipts = shopper("LS-B", n, day0, random.Random(n))
        in_time += web + receipts
    live = sorted(late_web + in_time, key=lambda e: e["occurred_at"])
    end = day0 + 3 * DAY
    with services_stack(stack, "ls") as env:
        settings = load(Settings, env)
        send(env, live)  # web and app traffic as it happens, B's receipts among it
        advance(env, tmp_path, end)  # event time passes the carts' deadlines: alerts go out
        sent = query_rows(settings, "SELECT alert_id, status FROM kizuna.alerts WHERE "
                                    "alert_type = 'cart_abandonment' AND "
                                    "startsWith(customer_id, 'LS-A')")
        assert len(sent) == 12 and {a["status"] for a in sent} == {"open"}
        rnd.shuffle(late_receipts)
        send(env, late_receipts, key="key-stores")  # the night's upload, in any order
        kizuna(env, "wait", "--timeout", "300")

        assert sessions_of(settings, "LS-A") == sessions_of(settings, "LS-B")
        assert profiles_of(settings, "LS-A") == profiles_of(settings, "LS-B")
        # day 0 a visit, day 1 one session (the receipt bridges the visits), day 2 app opens
        assert len(sessions_of(settings, "LS-A")) >= 12 * 3
        dead = query_rows(settings, "SELECT reason, count() AS n FROM kizuna.dead_letters "
                                    "GROUP BY reason")
        assert dead == [], dead  # no too_late, nothing else
        alerts = query_rows(settings, "SELECT customer_id, status, reasons FROM kizuna.alerts "
                                      "WHERE alert_type = 'cart_abandonment'")
        # Bought in the store within the hour: in time no reminder; late, the one sent is
        # resolved, saying the purchase came late.
        assert not [a for a in alerts if a["customer_id"].startswith("LS-B")]
        late = [a for a in alerts if a["customer_id"].startswith("LS-A")]
        assert len(late) == 12 and all(
            a["status"] == "resolved" and "late_purchase" in a["reasons"] for a in late), late
        metrics = kizuna(env, "status", "--sample", "0.5").stdout
        assert "late touchpoints corrected: " in metrics and "pos" in metrics


# -- a year of history, imported into a live pipeline ---------------------------------------

def test_history_imported_into_a_live_pipeline_gives_the_results_of_history_first(
        stack, tmp_path) -> None:
    now = int(time.time() * 1000)
    start = (now // DAY - 130) * DAY
    history_path = tmp_path / "history.jsonl"
    generated = write(30, 118, 23, history_path, iso(start), progress=None)
    assert history_path.exists()
    enrich = Enrichment("test", 2**62)  # the well-formed ones (the generator adds malformed)
    history = [e for e in generated.events if not isinstance(validate(e, enrich), Rejection)]
    # more than the correction horizon (7 days) after the history: its decisions are all
    # further behind the live pipeline's event time than that
    live_from = start + 127 * DAY
    rnd = random.Random(4)
    live = []
    for n, person in enumerate(generated.customers[:10]):  # the same customers, live
        t = live_from + rnd.randrange(HOUR)
        for k, kind in enumerate(["app_open", "product_view", "cart_add", "page_view"]):
            event = {"event_id": f"live-{n}-{k}", "event_type": kind, "channel": "app",
                     "occurred_at": iso(t + k * 4 * MIN), "customer_id": person.customer_id}
            if kind == "cart_add":
                event["commerce"] = {"cart_id": f"live-cart-{n}", "product_id": "P9",
                                     "quantity": 1, "unit_price": 12.0}
            live.append(event)
    live.sort(key=lambda e: e["occurred_at"])
    live_end = live_from + 3 * HOUR

    def prefixed(events: list[dict], prefix: str) -> list[dict]:
        out = []
        for e in events:
            e = json.loads(json.dumps(e))
            for field in ("event_id", "customer_id", "anonymous_id"):
                if isinstance(e.get(field), str):
                    e[field] = prefix + e[field]
            out.append(e)
        return out

    def history_file(prefix: str) -> Path:
        path = tmp_path / f"{prefix}history.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in prefixed(history, prefix)))
        return path

    with services_stack(stack, "bf", clock="wall") as env:  # as shipped
        settings = load(Settings, env)
        # B: the history first, then the live events after.
        kizuna(env, "import", str(history_file("HB-")), "--until", iso(live_from - MIN))
        kizuna(env, "wait", "--timeout", "600")
        # A: live first; B's live events go with them.
        send(env, prefixed(live, "HA-") + prefixed(live, "HB-"))
        advance(env, tmp_path, live_end)
        sent_before = {r["alert_id"] for r in query_rows(
            settings, "SELECT alert_id FROM kizuna.alerts WHERE startsWith(customer_id, 'HA-')")}
        # Then A's history, into the live pipeline.
        out = kizuna(env, "import", str(history_file("HA-"))).stdout
        assert "rejected: 0" in out, out
        kizuna(env, "wait", "--timeout", "600")

        assert sessions_of(settings, "HA-") == sessions_of(settings, "HB-")
        assert profiles_of(settings, "HA-") == profiles_of(settings, "HB-")
        dead = query_rows(settings, "SELECT count() AS n FROM kizuna.dead_letters WHERE "
                                    "reason = 'too_late'")
        assert dead[0]["n"] == 0
        alerts = query_rows(settings, """
            SELECT * EXCEPT (emitted_at, customer_id, evidence_event_ids),
                substring(customer_id, 1, 2) AS side, substring(customer_id, 4) AS c,
                arrayMap(x -> substring(x, 4), evidence_event_ids) AS evidence,
                toUnixTimestamp64Milli(detected_at) AS at
            FROM kizuna.alerts WHERE startsWith(customer_id, 'HA-') OR
                startsWith(customer_id, 'HB-')""")

        # An alert sent before the history came carries the profile of then (its score
        # snapshot, the channel recommended): sent, it is never moved.
        then = {(a["alert_type"], a["c"], a["at"]) for a in alerts if a["alert_id"] in sent_before}

        # One sent (before the history came, or while it came: within the horizon) that the
        # history no longer gives is resolved, saying why, where the history first would not
        # have raised it.
        taken_back = [a for a in alerts if {"late_purchase", "late_correction"} & set(a["reasons"])]
        assert all(a["side"] == "HA" and a["status"] == "resolved" for a in taken_back)

        def table(side: str) -> list[str]:
            hidden = {"side", "alert_id"}
            return sorted(json.dumps({k: str(v) for k, v in a.items() if k not in hidden and not (
                (a["alert_type"], a["c"], a["at"]) in then
                and k in ("score_snapshot", "recommended_channel"))}, sort_keys=True)
                for a in alerts if a["side"] == side and a not in taken_back)

        # Every decision, carts and churn, explicit and time-based, is the same whichever
        # came first; those further than the correction horizon behind the wall clock are
        # recorded only, and what was sent before the history came stays sent.
        old = [a for a in alerts if a["side"] == "HA" and a["at"] < now - 8 * DAY]
        assert old and {a["status"] for a in old} == {"historical"}
        assert sent_before and all(a["status"] != "historical" for a in alerts
                                   if a["alert_id"] in sent_before)
        assert table("HA") == table("HB")
