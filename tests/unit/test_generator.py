"""The generator: deterministic by seed, and its personas do what they document."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from services.generator.cli import truth_path, write
from services.generator.personas import (
    ABANDONMENT_MS,
    DAY_MS,
    abandoned_carts,
    explicit_risk,
    generate,
)
from services.ingest.validation import Enrichment, Rejection, validate

START = 1_767_571_200_000  # 2026-01-05


@pytest.fixture(scope="module")
def world():
    return generate(customers=400, days=20, seed=7, start_ms=START)


def by_persona(world) -> dict[str, list[dict]]:
    persona = world.truth["personas"]
    owner = {}
    for e in world.events:
        if e.get("customer_id") and e.get("anonymous_id"):
            owner.setdefault(e["anonymous_id"], e["customer_id"])
    out = defaultdict(list)
    for e in world.events:
        customer = e.get("customer_id") or owner.get(e.get("anonymous_id"))
        if customer:
            out[persona[customer]].append(e)
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write(30, 4, 1, a, "2026-01-05T00:00:00Z", progress=None)
    write(30, 4, 1, b, "2026-01-05T00:00:00Z", progress=None)
    write(30, 4, 2, c, "2026-01-05T00:00:00Z", progress=None)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert truth_path(a).read_bytes() == truth_path(b).read_bytes()


def test_events_are_in_time_order_in_the_contract_format(world) -> None:
    times = [e["occurred_at"] for e in world.events if isinstance(e.get("occurred_at"), int)]
    assert times == sorted(times)
    enrich = Enrichment("gen", START + 40 * DAY_MS)
    verdicts = [validate(e, enrich) for e in world.events]
    rejected = sum(isinstance(v, Rejection) for v in verdicts)
    assert rejected == world.malformed
    assert 0.002 < world.malformed / len(world.events) < 0.01
    assert len({e["event_id"] for e in world.events}) == len(world.events)


def test_personas_behave_as_documented(world) -> None:
    groups = by_persona(world)

    def count(persona: str, kind: str, channel: str | None = None) -> int:
        return sum(e.get("event_type") == kind and channel in (None, e.get("channel"))
                   for e in groups[persona])

    assert count("store_only", "purchase") == count("store_only", "purchase", "pos") > 0
    assert not [e for e in groups["email_only"] if e.get("channel") in ("app", "pos")]
    assert count("detractor", "complaint") > 0
    assert all(e["properties"]["score"] <= 6 for e in groups["detractor"]
               if e.get("event_type") == "nps_response")
    assert count("credit_abandoner", "credit_application_abandoned") > 0

    def purchases_per_cart(persona: str) -> float:
        return count(persona, "purchase") / max(1, count(persona, "checkout_start") +
                                                 count(persona, "cart_add"))

    assert purchases_per_cart("cart_abandoner") < purchases_per_cart("loyal") / 2
    high = [e["commerce"]["value"] for e in groups["high_value"]
            if e.get("event_type") == "purchase"]
    low = [e["commerce"]["value"] for e in groups["bargain_hunter"]
           if e.get("event_type") == "purchase"]
    assert max(high) >= 5000 and max(low) <= 40  # cars and trips; bargains


def test_churners_fall_silent_after_their_churn_day(world) -> None:
    last: dict[str, int] = {}
    for e in world.events:
        if e.get("customer_id") in world.truth["churners"] and isinstance(e["occurred_at"], int):
            last[e["customer_id"]] = max(last.get(e["customer_id"], 0), e["occurred_at"])
    assert last
    for customer, at in last.items():
        assert at < world.truth["churners"][customer] + 6 * DAY_MS


def test_some_devices_browse_anonymously_then_identify(world) -> None:
    anonymous: dict[str, int] = {}  # device -> its first anonymous touch's time
    identified: dict[str, int] = {}  # device -> its first touch with a customer
    for e in world.events:
        device, at = e.get("anonymous_id"), e.get("occurred_at")
        if not device or not isinstance(at, int):
            continue
        seen = identified if e.get("customer_id") else anonymous
        seen[device] = min(seen.get(device, at), at)
    browsed_first = [d for d in identified if d in anonymous and anonymous[d] < identified[d]]
    assert len(browsed_first) > 10
    # for days: what a login claims of a device's history is real history
    assert max(identified[d] - anonymous[d] for d in browsed_first) > 3 * DAY_MS


def test_the_abandoned_carts_truth_follows_the_contract_rule() -> None:
    t = START
    log = [
        {"event_type": "cart_add", "customer_id": "A", "occurred_at": t,
         "commerce": {"cart_id": "k1"}},
        {"event_type": "purchase", "customer_id": "A", "channel": "pos",
         "occurred_at": t + ABANDONMENT_MS - 1},  # bought in the store in time: not abandoned
        {"event_type": "cart_add", "customer_id": "B", "occurred_at": t,
         "commerce": {"cart_id": "k2"}},
        {"event_type": "purchase", "customer_id": "B", "occurred_at": t + ABANDONMENT_MS + 1},
        {"event_type": "cart_add", "anonymous_id": "d", "occurred_at": t},  # implicit cart
        {"event_type": "identify", "anonymous_id": "d", "customer_id": "C", "occurred_at": t + 1},
    ]
    got = abandoned_carts(log, end_ms=t + 10 * ABANDONMENT_MS)
    assert [(c["customer_id"], c["cart_id"]) for c in got] == [("B", "k2"), ("C", "implicit:C")]
    assert abandoned_carts(log, end_ms=t + ABANDONMENT_MS // 2) == []  # not due yet


def test_the_truth_file_names_every_persona(tmp_path) -> None:
    path = tmp_path / "e.jsonl"
    write(200, 3, 9, path, "2026-01-05T00:00:00Z", progress=None)
    truth = json.loads(truth_path(path).read_text())
    assert len(truth["personas"]) == 200
    assert set(truth["personas"].values()) >= {"loyal", "store_only", "cart_abandoner"}


def test_the_explicit_risk_truth_names_who_signalled_and_when() -> None:
    t = 1_700_000_000_000
    log = [
        {"event_id": "1", "event_type": "nps_response", "occurred_at": t, "customer_id": "A",
         "properties": {"score": 7}},  # passive: no risk
        {"event_id": "2", "event_type": "nps_response", "occurred_at": t + 1, "customer_id": "B",
         "properties": {"score": 6}},
        {"event_id": "3", "event_type": "identify", "occurred_at": t + 2, "customer_id": "C",
         "anonymous_id": "dev-c"},
        {"event_id": "4", "event_type": "credit_application_abandoned", "occurred_at": t + 3,
         "anonymous_id": "dev-c"},  # the device's customer
        {"event_id": "5", "event_type": "complaint", "occurred_at": t + 4, "customer_id": "B"},
    ]
    assert explicit_risk(log) == {"B": t + 1, "C": t + 3}


def test_detractors_and_credit_abandoners_signal_risk(world) -> None:
    risky = world.truth["explicit_risk"]
    personas = world.truth["personas"]
    for persona in ("detractor", "credit_abandoner"):
        theirs = [c for c, p in personas.items() if p == persona]
        assert sum(c in risky for c in theirs) >= 0.8 * len(theirs)
    loyal = [c for c, p in personas.items() if p == "loyal"]
    assert sum(c in risky for c in loyal) <= 0.2 * len(loyal)
