"""Cart alerts on the real stack: import -> sessionizer -> alerting -> Kafka and ClickHouse."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from services.common.queries import query_rows
from services.common.serde import ALERT
from services.common.settings import Settings, load
from services.common.topics import ALERTS_CART_ABANDONMENT
from tests.conftest import kizuna, stack_serde
from tests.integration.test_collector import read_topic
from tests.integration.test_sessionizer import Clock, event, run

pytestmark = pytest.mark.integration
MIN = dt.timedelta(minutes=1)


def cart_add(event_id: str, at: dt.datetime, customer: str | None = None,
             device: str | None = None, channel: str = "web", cart: str = "K1") -> dict:
    return event(event_id, at, customer, device, "cart_add", channel,
                 commerce={"cart_id": cart, "product_id": "P42", "quantity": 2,
                           "unit_price": 30.0, "currency": "EUR"})


def alerts(env: dict, where: str) -> list[dict]:
    return query_rows(load(Settings, env), "SELECT alert_id, status, customer_id, cart_id, "
                      "cart_value, recommended_channel, recommended_action, detected_at "
                      "FROM kizuna.alerts WHERE alert_type = 'cart_abandonment' AND "
                      f"{where} ORDER BY detected_at, alert_id")


def test_cart_alerts_follow_the_contract(stack, tmp_path) -> None:
    t0 = Clock.start()
    events = [
        # 1. cart, then a store purchase within the delay: no alert.
        cart_add("ca-1", t0, "cart-saved"),
        event("ca-2", t0 + 40 * MIN, "cart-saved", event_type="purchase", channel="pos",
              commerce={"order_id": "O1", "value": 60.0}),
        # 2. cart, then nothing: one alert, 60 minutes after the last activity.
        cart_add("cb-1", t0, "cart-left"),
        event("cb-0", t0 - 5 * MIN, "cart-left", event_type="email_click", channel="email"),
        # 3. cart, alert, then a purchase: the same alert, resolved.
        cart_add("cc-1", t0, "cart-late"),
        event("cc-2", t0 + 3 * 60 * MIN, "cart-late", event_type="purchase",
              commerce={"order_id": "O2", "value": 60.0}),
        # 4. an anonymous cart, then a login within the delay: the alert names the customer.
        cart_add("cd-1", t0, device="dev-cart", cart="K9"),
        event("cd-2", t0 + 10 * MIN, "cart-anon", device="dev-cart", event_type="identify",
              channel="app"),
        # 5. unsubscribed from email: the recommendation is not email.
        event("ce-0", t0 - 30 * MIN, "cart-unsub", event_type="email_click", channel="email"),
        event("ce-1", t0 - 20 * MIN, "cart-unsub", event_type="email_unsubscribe",
              channel="email"),
        cart_add("ce-2", t0, "cart-unsub", channel="app"),
    ]
    events.sort(key=lambda e: e["occurred_at"])
    until = t0 + dt.timedelta(days=1)
    run(stack, events, until, tmp_path)

    assert alerts(stack, "customer_id = 'cart-saved'") == []
    (left,) = alerts(stack, "customer_id = 'cart-left'")
    assert left["status"] == "open" and left["cart_value"] == 60.0
    assert left["recommended_action"] == "cart_reminder"
    assert left["detected_at"].startswith((t0 + 60 * MIN).strftime("%Y-%m-%d %H:%M"))
    (late,) = alerts(stack, "customer_id = 'cart-late'")
    assert late["status"] == "resolved"
    (anon,) = alerts(stack, "cart_id = 'K9'")
    assert anon["customer_id"] == "cart-anon"
    (unsub,) = alerts(stack, "customer_id = 'cart-unsub'")
    assert unsub["recommended_channel"] not in (None, "email")

    # On Kafka: the resolved alert went out twice (open, then resolved) under one id.
    serde = stack_serde(stack)
    topic = ALERTS_CART_ABANDONMENT.name("kizuna.")
    mine = read_topic(stack, topic, lambda m: m.key() == b"cart-late", 2)
    statuses = [serde.decode(ALERT, m.value()) for m in mine]
    assert [a["status"] for a in statuses] == ["open", "resolved"]
    assert len({a["alert_id"] for a in statuses}) == 1

    # Replayed: the same alert ids, and no duplicate in ClickHouse.
    before = alerts(stack, "startsWith(customer_id, 'cart-')")
    run(stack, events, until, tmp_path)
    after = alerts(stack, "startsWith(customer_id, 'cart-')")
    assert [(a["alert_id"], a["status"]) for a in after] == \
        [(a["alert_id"], a["status"]) for a in before]


def churn_alerts(env: dict, where: str) -> list[dict]:
    return query_rows(load(Settings, env), "SELECT alert_id, status, customer_id, reasons, "
                      "severity, recommended_channel, recommended_action, detected_at, "
                      "evidence_event_ids FROM kizuna.alerts "
                      f"WHERE alert_type = 'churn_risk' AND {where} ORDER BY detected_at, alert_id")


def test_churn_risk_alerts_follow_the_contract(stack, tmp_path) -> None:
    t0 = Clock.start(weeks=5)  # event time runs 30 days on here
    day = dt.timedelta(days=1)
    visits = [event(f"{who}-v{d}-{k}", t0 + d * day + k * MIN, who, event_type=kind,
                    channel=channel)
              for who in ("churn-unsub", "churn-nps", "churn-dormant", "churn-back")
              for d in range(3)
              for k, (kind, channel) in enumerate([("page_view", "web"), ("app_open", "app"),
                                                   ("email_open", "email")])]
    later = t0 + 3 * day
    events = visits + [
        # an explicit signal: an alert at its own time, and email is no longer recommended
        event("cu-1", later, "churn-unsub", event_type="email_unsubscribe", channel="email"),
        # a detractor: severity 3 (NPS 0-3), a service call
        event("cn-1", later, "churn-nps", event_type="nps_response", channel="email",
              properties={"score": 2}),
        # a complaint, then a purchase two days later: the alert is resolved
        event("cb-1", later, "churn-back", event_type="complaint", channel="support"),
        event("cb-2", later + 2 * day, "churn-back", event_type="purchase", channel="pos",
              commerce={"order_id": "O-back", "value": 45.0}),
    ]
    events.sort(key=lambda e: e["occurred_at"])
    until = t0 + 30 * day
    run(stack, events, until, tmp_path)

    (unsub, *_) = churn_alerts(stack, "customer_id = 'churn-unsub'")
    assert unsub["reasons"] == ["email_unsubscribe"] and unsub["evidence_event_ids"] == ["cu-1"]
    assert unsub["recommended_channel"] in ("web", "app")
    assert unsub["detected_at"].startswith(later.strftime("%Y-%m-%d %H:%M"))
    (nps, *_) = churn_alerts(stack, "customer_id = 'churn-nps'")
    assert (nps["reasons"], nps["severity"], nps["recommended_action"]) == \
        (["nps_detractor"], 3, "service_call")
    # no touch of their own for 21 days (the default): dormant, at that exact event time
    dormant = churn_alerts(stack, "customer_id = 'churn-dormant'")
    assert [a["reasons"] for a in dormant] == [["dormant"]]
    last = t0 + 2 * day + 2 * MIN
    assert dormant[0]["detected_at"].startswith((last + 21 * day).strftime("%Y-%m-%d %H:%M"))
    (back, *_) = churn_alerts(stack, "customer_id = 'churn-back'")
    assert back["reasons"][0] == "complaint" and back["status"] == "resolved"

    # kizuna alerts tail prints them, decoded, from the topic
    out = kizuna(stack, "alerts", "tail", "--type", "churn_risk", "--from-beginning", "--json",
                 "--idle-timeout", "3").stdout
    tailed = [json.loads(line) for line in out.splitlines()]
    mine = {(a["alert_id"], a["status"]) for a in tailed
            if a["customer_id"].startswith("churn-")}
    stored = churn_alerts(stack, "startsWith(customer_id, 'churn-')")
    assert {a["alert_id"] for a in stored} == {alert_id for alert_id, _ in mine}
    assert (back["alert_id"], "open") in mine and (back["alert_id"], "resolved") in mine
    text = kizuna(stack, "alerts", "tail", "--from-beginning", "--idle-timeout", "3").stdout
    assert any("churn-nps" in line and "nps_detractor" in line and "service_call" in line
               for line in text.splitlines())

    # Replayed: the same alert ids, and no duplicate in ClickHouse.
    run(stack, events, until, tmp_path)
    again = churn_alerts(stack, "startsWith(customer_id, 'churn-')")
    assert [(a["alert_id"], a["status"]) for a in again] == \
        [(a["alert_id"], a["status"]) for a in stored]
