"""The scorer on the real stack: import -> sessionizer -> scorer -> ClickHouse profiles."""

from __future__ import annotations

import datetime as dt
import json
import math
import random

import psutil
import pytest

from services.common.queries import query_rows
from services.common.settings import Settings, load
from services.common.weights_file import load_weights
from tests.conftest import kizuna
from tests.integration.test_sessionizer import Clock, event, run
from tests.unit.test_engagement_scorer import lifetimes_reference

pytestmark = pytest.mark.integration


def transaction_log(t0: dt.datetime, customers: int = 40, seed: int = 5) -> list[dict]:
    rnd = random.Random(seed)
    events = []
    for n in range(customers):
        for i in range(rnd.randint(1, 12)):
            at = t0 + dt.timedelta(days=rnd.randint(0, 5), minutes=rnd.randint(0, 1400))
            kind = rnd.choice(["purchase", "purchase", "email_open", "page_view", "cart_add"])
            extra = {"commerce": {"value": round(rnd.uniform(5, 400), 2)}} \
                if kind == "purchase" else {}
            events.append(event(f"bt-{n}-{i}", at, f"bt-c{n}", event_type=kind,
                                channel=rnd.choice(["web", "app", "email", "pos"]), **extra))
    events.sort(key=lambda e: e["occurred_at"])
    return events


def test_profiles_match_the_reference_after_a_restart_and_a_replay(stack, tmp_path) -> None:
    t0 = Clock.start()
    events = transaction_log(t0)
    until = t0 + dt.timedelta(days=8)
    half = len(events) // 2
    run(stack, events[:half], t0, tmp_path)
    scorer = next(p for p in psutil.process_iter(["cmdline"])
                  if "services.engagement_scorer" in " ".join(p.info["cmdline"] or ())
                  and p.environ().get("KIZUNA_HOME") == stack["KIZUNA_HOME"])
    scorer.kill()  # restarted by the process runner; state from the changelog
    run(stack, events[half:], until, tmp_path)
    run(stack, events, until, tmp_path)  # the whole log again: nothing may change

    weights = load_weights()
    rows = {r["customer_id"]: r for r in query_rows(
        load(Settings, stack), "SELECT * FROM kizuna.customer_profiles "
                               "WHERE startsWith(customer_id, 'bt-c')")}
    by_customer: dict[str, list[dict]] = {}
    for e in events:
        by_customer.setdefault(e["customer_id"], []).append(e)
    assert set(rows) == set(by_customer)
    for customer, mine in by_customer.items():
        times = [int(dt.datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000)
                 for e in mine]
        as_of = max(times)
        purchases = [(t, e["commerce"]["value"]) for t, e in zip(times, mine, strict=True)
                     if e["event_type"] == "purchase"]
        got = rows[customer]
        assert got["purchase_count"] == len(purchases), customer
        if purchases:
            ref = lifetimes_reference(purchases, as_of)
            assert (got["frequency"], got["recency"], got["T"]) == (
                ref["frequency"], ref["recency"], ref["T"]), customer
            assert math.isclose(got["monetary_value"], ref["monetary_value"], abs_tol=1e-6)
            assert math.isclose(got["total_revenue"], sum(v for _, v in purchases),
                                abs_tol=1e-6)
        score = sum(weights.weight(e["event_type"], e["channel"])
                    * 2 ** (-(as_of - t) / weights.half_life_ms)
                    for t, e in zip(times, mine, strict=True))
        assert math.isclose(got["engagement_score"], score, abs_tol=1e-4), customer
    segments = {r["rfm_segment"] for r in rows.values()}
    assert segments <= {"champions", "loyal", "potential_loyalists", "at_risk", "lost",
                        "hibernating", "needs_attention", "no_purchase"}
    # The top 20% is ranked over the whole customer base (other tests' customers too).
    (base,) = query_rows(load(Settings, stack),
                         "SELECT countIf(purchase_count > 0) AS buyers, "
                         "countIf(top_revenue_20) AS top, "
                         "min(if(top_revenue_20, total_revenue, NULL)) AS top_min, "
                         "max(if(NOT top_revenue_20 AND purchase_count > 0, total_revenue, NULL))"
                         " AS rest_max FROM kizuna.customer_profiles")
    assert base["top"] == math.ceil(0.2 * base["buyers"])
    assert base["top_min"] >= base["rest_max"]


def test_kizuna_profile_prints_the_breakdown(stack, tmp_path) -> None:
    t0 = Clock.start()
    run(stack, [event("pf-1", t0, "pf-c1", event_type="email_click", channel="email"),
                event("pf-2", t0 + dt.timedelta(hours=1), "pf-c1", event_type="email_unsubscribe",
                      channel="email"),
                event("pf-3", t0 + dt.timedelta(hours=2), "pf-c1", event_type="app_open",
                      channel="app")], t0 + dt.timedelta(days=1), tmp_path)
    out = kizuna(stack, "profile", "pf-c1").stdout
    assert "tier" in out and "email" in out and "preferred app" in out
    as_json = json.loads(kizuna(stack, "profile", "pf-c1", "--json").stdout)
    assert "email" not in as_json["reachable_channels"]
    missing = kizuna(stack, "profile", "nobody-here", check=False)
    assert missing.returncode == 1 and "no profile" in missing.stderr
