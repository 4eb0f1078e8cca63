"""Churn-risk rules through the pure alerting processor (contract section 2): no Kafka."""

from __future__ import annotations

import random

import pytest

from services.alerting.carts import CartRules
from services.alerting.churn import ChurnRules
from services.alerting.processor import CHURN, AlertProcessor, churn_record
from services.common.weights_file import load_weights
from services.domain.engagement import applied_already
from services.domain.touch import moved_touch

T0 = 1_710_000_000_000
MIN = 60_000
DAY = 24 * 60 * MIN
CART_RULES = CartRules()
WEIGHTS = load_weights()


def touch(i: int, at: int, kind: str = "page_view", channel: str = "web", value: float = 0.0,
          extra: dict | None = None) -> list:
    return [at, f"e{i:05d}", kind, channel, value, None, extra]


def run(touches: list[list], until: int, *, batch: int = 50, rules: ChurnRules | None = None,
        store: dict | None = None, customer: str = "C1") -> list[tuple]:
    """Deliver touches in the given order, `batch` per message, the partition's event time
    being the latest touch so far, then let event time run to `until` a day at a time."""
    proc = AlertProcessor(CART_RULES, WEIGHTS, {} if store is None else store, rules)
    out, now = [], T0 - DAY
    for i in range(0, len(touches), batch):
        chunk = touches[i:i + batch]
        now = max([now] + [x[0] for x in chunk])
        out += proc.process(0, [{"t": now, "c": {customer: chunk}}]).alerts
    while now < until:
        now = min(until, now + DAY)
        out += proc.process(0, [{"t": now, "c": {}}]).alerts
    return [(kind, alert, snapshot) for _, kind, alert, snapshot in out if kind == CHURN]


def daily_visits(days: int, start: int = T0, per_day: int = 6) -> list[list]:
    """An engaged customer: a few views and an app open every day, web and app."""
    out = []
    for d in range(days):
        for k in range(per_day):
            out.append(touch(d * 100 + k, start + d * DAY + k * 7 * MIN,
                             "product_view" if k % 2 else "app_open", "web" if k % 2 else "app"))
    return out


def test_an_unsubscribe_raises_one_alert_at_its_own_time_and_never_recommends_email() -> None:
    history = daily_visits(3) + [touch(900, T0 + 3 * DAY, "email_open", "email"),
                                 touch(901, T0 + 3 * DAY + 10 * MIN, "email_unsubscribe", "email")]
    (kind, alert, snapshot), = run(history, T0 + 4 * DAY)
    assert alert["status"] == "open" and alert["reasons"] == ["email_unsubscribe"]
    assert alert["detected_at"] == T0 + 3 * DAY + 10 * MIN and alert["evidence"] == ["e00901"]
    record = churn_record("C1", alert, snapshot, emitted_at=0)
    assert record["recommended_channel"] in ("web", "app")
    assert record["recommended_action"] == "win_back_offer" and record["alert_type"] == CHURN


def test_an_alert_waits_for_the_allowed_lateness() -> None:
    proc = AlertProcessor(CART_RULES, WEIGHTS, {})
    t = T0 + 5 * MIN
    complaint = touch(1, t, "complaint", "support")
    assert proc.process(0, [{"t": t, "c": {"C1": [complaint]}}]).alerts == []
    lateness = CART_RULES.lateness_ms
    assert proc.process(0, [{"t": t + lateness, "c": {}}]).alerts == []
    (_, kind, alert, _), = proc.process(0, [{"t": t + lateness + 1, "c": {}}]).alerts
    assert kind == CHURN and alert["reasons"] == ["complaint"] and alert["detected_at"] == t


@pytest.mark.parametrize(("score", "severity"), [(9, None), (7, None), (6, 2), (2, 3)])
def test_nps_detractors_only(score: int, severity: int | None) -> None:
    alerts = run([touch(1, T0, "nps_response", "email", extra={"score": score})], T0 + DAY)
    assert [a["severity"] for _, a, _ in alerts] == ([severity] if severity else [])


def test_dormancy_counts_the_customers_own_touches_not_campaign_sends() -> None:
    history = [touch(1, T0, "product_view")] + [
        touch(10 + d, T0 + d * DAY, "email_send", "email") for d in range(1, 30, 3)]
    alerts = run(history, T0 + 40 * DAY)
    dormant = [a for _, a, _ in alerts if "dormant" in a["reasons"]]
    assert [a["detected_at"] for a in dormant] == [T0 + 21 * DAY]
    assert dormant[0]["evidence"] == ["e00001"] and dormant[0]["severity"] == 1


def test_silence_beyond_the_customers_own_purchase_rhythm() -> None:
    buys = [touch(d, T0 + d * DAY, "purchase", value=50.0) for d in (0, 6, 12)]
    browsing = [touch(100 + d, T0 + d * DAY + 3 * MIN) for d in range(13)]
    history = sorted(buys + browsing)
    rules = ChurnRules(dormancy_ms=100 * DAY)  # the silence alone
    alerts = run(history, T0 + 60 * DAY, rules=rules)
    silence = [a for _, a, _ in alerts if "purchase_silence" in a["reasons"]]
    # median interval 6 days x 3 = 18 days (more than the 14-day minimum) after day 12
    assert [a["detected_at"] for a in silence] == [T0 + 30 * DAY]
    assert silence[0]["evidence"] == ["e00012"]
    # one purchase day is no rhythm: nothing
    assert not [a for _, a, _ in run(sorted(buys[:1] + browsing), T0 + 60 * DAY, rules=rules)
                if "purchase_silence" in a["reasons"]]


def test_engagement_drop_below_a_fraction_of_the_90_day_peak() -> None:
    history = daily_visits(10)
    rules = ChurnRules(dormancy_ms=200 * DAY)
    alerts = run(history, T0 + 80 * DAY, rules=rules)
    (_, drop, _), = alerts
    assert drop["reasons"] == ["engagement_drop"] and drop["severity"] == 2
    # the score at detection is the fraction of the peak (the score after the last touch)
    proc = AlertProcessor(CART_RULES, WEIGHTS, {}, rules)
    proc.process(0, [{"t": history[-1][0], "c": {"C1": history}}])
    proc.process(0, [{"t": history[-1][0] + DAY, "c": {}}])
    peak = proc.store["c:C1"]["profile"]["score"][0]
    assert drop["score"] == pytest.approx(0.25 * peak, rel=1e-6)
    assert drop["detected_at"] == pytest.approx(history[-1][0] + 2 * WEIGHTS.half_life_ms, abs=1)


def test_a_cool_down_holds_back_repeats_unless_the_severity_rises() -> None:
    history = daily_visits(2) + [
        touch(901, T0 + 2 * DAY, "email_unsubscribe", "email"),        # severity 2: sent
        touch(902, T0 + 3 * DAY, "complaint", "support"),              # 2 again: held back
        touch(903, T0 + 4 * DAY, "subscription_cancel_request", "web"),  # 3: sent
        touch(904, T0 + 12 * DAY, "complaint", "support")]             # after the cool-down
    alerts = run(history, T0 + 13 * DAY, rules=ChurnRules(dormancy_ms=100 * DAY))
    assert [a["reasons"][0] for _, a, _ in alerts] == [
        "email_unsubscribe", "subscription_cancel_request", "complaint"]
    assert [a["severity"] for _, a, _ in alerts] == [2, 3, 2]
    assert alerts[1][1]["action"] == "retention_call" and alerts[2][1]["action"] == "service_call"


def test_a_purchase_after_the_alert_resolves_the_same_alert() -> None:
    history = daily_visits(2) + [touch(901, T0 + 2 * DAY, "complaint", "support"),
                                 touch(902, T0 + 5 * DAY, "purchase", "pos", 80.0)]
    opened, resolved = (a for _, a, _ in run(history, T0 + 6 * DAY))
    assert resolved["alert_id"] == opened["alert_id"] and resolved["status"] == "resolved"
    assert resolved["reasons"] == ["complaint", "purchased_after_alert"]
    assert churn_record("C1", resolved, {"preferred_channel": "web"}, 0)["version"] == 2


def life(seed: int) -> list[list]:
    """A customer who buys, engages, complains, then fades: every rule gets a chance."""
    rnd = random.Random(seed)
    out, i = [], 0
    for d in range(40):
        rate = 5 if d < 15 else max(0, 5 - (d - 15))
        for _ in range(rnd.randint(0, rate)):
            i += 1
            kind = rnd.choice(["page_view", "product_view", "app_open", "email_open", "purchase",
                               "complaint", "nps_response", "email_send"])
            extra = {"score": rnd.randint(0, 10)} if kind == "nps_response" else None
            out.append(touch(i, T0 + d * DAY + rnd.randrange(DAY), kind,
                             rnd.choice(["web", "app", "email", "pos"]),
                             rnd.uniform(10, 90) if kind == "purchase" else 0.0, extra))
    return sorted(out)


@pytest.mark.parametrize("seed", range(6))
def test_any_order_within_the_lateness_and_any_batching_give_the_same_alerts(seed: int) -> None:
    history = life(seed)

    def seen(alerts: list) -> list:  # the alert, and the profile it carries (snapshot)
        return [(a["alert_id"], a["status"], a["detected_at"], a["reasons"],
                 s["preferred_channel"], s["engagement_score"], s["purchase_count"])
                for _, a, s in alerts]

    expected = seen(run(history, T0 + 90 * DAY, batch=1))
    assert len(expected) >= 2
    rnd = random.Random(seed)
    lateness = CART_RULES.lateness_ms
    shuffled = sorted(history, key=lambda x: x[0] + rnd.uniform(0, lateness * 0.9))
    for batch in (3, 50, 10_000):
        assert seen(run(shuffled, T0 + 90 * DAY, batch=batch)) == expected


def test_a_restart_from_the_stored_state_gives_the_same_alerts() -> None:
    history = life(7)
    expected = [a["alert_id"] for _, a, _ in run(history, T0 + 90 * DAY)]
    store: dict = {}
    half = len(history) // 2
    first = run(history[:half], history[half - 1][0], store=store)
    # a new processor (its due-time index rebuilt from the store), the rest redelivered
    # from a little before where the first one stopped
    second = run(history[half - 5:], T0 + 90 * DAY, store=store)
    assert [a["alert_id"] for _, a, _ in first + second] == expected


def test_alerts_tail_prints_one_readable_line_per_alert() -> None:
    import datetime as dt

    from services.alerting.tail import line

    at = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)
    churn_alert = {"alert_id": "c-1", "alert_type": CHURN, "status": "open",
                   "customer_id": "C1", "anonymous_id": None, "detected_at": at,
                   "severity": 3, "reasons": ["nps_detractor", "dormant"], "cart": None,
                   "score_snapshot": 12.25, "recommended_channel": None,
                   "recommended_action": "service_call"}
    assert line(churn_alert) == (
        "2026-01-05T09:30:00.000Z  churn_risk       open     C1  severity 3  "
        "nps_detractor,dormant  score 12.2  -> service_call via no reachable channel  c-1")
    cart = {**churn_alert, "alert_type": "cart_abandonment", "score_snapshot": None,
            "cart": {"cart_id": "K1", "value": 60.0, "currency": "EUR", "items": []},
            "recommended_channel": "app", "recommended_action": "cart_reminder"}
    assert "cart K1 60.00 EUR  -> cart_reminder via app" in line(cart)


def test_a_device_history_moved_at_login_does_not_inflate_the_peak() -> None:
    # Browsing on a second device in the first two days arrives when it logs in, four weeks
    # later: valued at their own old times, the current score would read as a past peak four
    # times higher, and an engagement drop would fire at once.
    device = [touch(50_000 + i, x[0], x[2], x[3]) for i, x in enumerate(daily_visits(2))]
    own = daily_visits(26, start=T0 + 2 * DAY)
    login = [touch(99_999, T0 + 28 * DAY, "identify", "app")]
    rules = ChurnRules(dormancy_ms=200 * DAY)
    proc = AlertProcessor(CART_RULES, WEIGHTS, {}, rules)
    out = proc.process(0, [{"t": own[-1][0], "c": {"C1": own}}]).alerts
    out += proc.process(0, [{"t": login[0][0] + 11 * MIN, "c": {"C1": login + device}}]).alerts
    assert [a for _, k, a, _ in out if k == CHURN] == []
    peak = max(proc.store["c:C1"]["churn"]["peaks"].values())
    ordered = AlertProcessor(CART_RULES, WEIGHTS, {}, rules)
    ordered.process(0, [{"t": login[0][0] + 11 * MIN,
                         "c": {"C1": sorted(own + login + device)}}])
    true_peak = max(ordered.store["c:C1"]["churn"]["peaks"].values())
    assert true_peak * 0.9 <= peak <= true_peak * (1 + 1e-9)


def test_a_signal_in_a_device_history_counts_from_the_login_however_late_it_arrives() -> None:
    # The device abandoned a credit application on day 2, anonymously; the customer's own
    # unsubscribe on day 4; the device logs in on day 8. Whether the customer's own alert had
    # gone out when the history came (a slow hand-over) or not, the same alert must win the
    # 7-day cool-down: valued at its own time, the device's signal took it in one order and
    # was held back in the other.
    own = daily_visits(8) + [touch(901, T0 + 4 * DAY, "email_unsubscribe", "email")]
    own.sort()
    login = T0 + 8 * DAY
    device = [moved_touch(touch(50_001, T0 + 2 * DAY, "credit_application_abandoned", "web"),
                          login)]
    rules = ChurnRules(dormancy_ms=200 * DAY)

    def deliver(first: list, then: list, now: int) -> list:
        proc = AlertProcessor(CART_RULES, WEIGHTS, {}, rules)
        out = proc.process(0, [{"t": now, "c": {"C1": first}}]).alerts
        out += proc.process(0, [{"t": login, "c": {"C1": then}}]).alerts
        out += proc.process(0, [{"t": login + DAY, "c": {}}]).alerts
        return sorted((a["alert_id"], a["detected_at"], a["reasons"][0])
                      for _, kind, a, _ in out if kind == CHURN)

    slow = deliver(own, device, login - MIN)  # the customer's own alert is out already
    fast = deliver(own[:24], own[24:] + device, own[23][0])  # the unsubscribe not out yet
    assert slow == fast
    assert [reason for _, _, reason in slow] == ["email_unsubscribe"]  # the device's: held


def test_an_erased_customer_is_forgotten() -> None:
    proc = AlertProcessor(CART_RULES, WEIGHTS, {})
    history = [touch(1, T0, "complaint", "support")]
    proc.process(0, [{"t": T0, "c": {"C1": history, "C2": history}}])
    out = proc.process(0, [{"t": T0 + DAY, "c": {}, "e": ["C1"]}]).alerts
    assert "c:C1" not in proc.store and "c:C2" in proc.store
    assert [customer for customer, *_ in out] == ["C2"]  # C1's pending alert went with it


def test_a_state_stored_before_churn_risk_existed_is_upgraded_not_a_crash() -> None:
    store = {"C1": {"p": 0, "cart": {"carts": {}, "purchases": [], "alerts": [],
                                      "last_sent_at": None, "capped": 0},
                    "profile": {"score": None, "channels": {}, "last_event_at": None,
                                "days": {}, "purchase_count": 0, "revenue": 0.0,
                                "refunds": 0.0, "first_purchase_at": None,
                                "last_purchase_at": None, "consent": {}, "recent": {},
                                "applied": 0}}}
    proc = AlertProcessor(CART_RULES, WEIGHTS, store)
    proc.process(0, [{"t": T0, "c": {"C1": [touch(1, T0, "complaint", "support")]}}])
    (_, kind, alert, _), = proc.process(0, [{"t": T0 + DAY, "c": {}}]).alerts
    assert kind == CHURN and alert["reasons"] == ["complaint"]


def test_a_purchase_reported_late_resolves_the_silence_alert_it_would_have_prevented() -> None:
    # Purchases on days 0, 6, 12: the silence alert fires on day 30. A store purchase of day
    # 25 is reported on day 32: the alert would not have been raised; it is resolved so.
    buys = [touch(d, T0 + d * DAY, "purchase", value=50.0) for d in (0, 6, 12)]
    rules = ChurnRules(dormancy_ms=100 * DAY)
    proc = AlertProcessor(CART_RULES, WEIGHTS, {}, rules)
    out = proc.process(0, [{"t": T0 + 12 * DAY, "c": {"C1": buys}}]).alerts
    out += proc.process(0, [{"t": T0 + 32 * DAY, "c": {}}]).alerts
    (opened,) = [a for _, kind, a, _ in out if kind == CHURN]
    assert opened["reasons"] == ["purchase_silence"] and opened["status"] == "open"
    late = touch(25, T0 + 25 * DAY, "purchase", "pos", 20.0)
    out = proc.process(0, [{"t": T0 + 32 * DAY, "c": {"C1": [late]}}]).alerts
    out += proc.process(0, [{"t": T0 + 33 * DAY, "c": {}}]).alerts
    (resolved,) = [a for _, kind, a, _ in out if kind == CHURN]
    assert resolved["alert_id"] == opened["alert_id"] and resolved["status"] == "resolved"
    assert resolved["reasons"] == ["purchase_silence", "late_purchase"]


def test_a_signal_further_than_the_horizon_behind_event_time_is_historical() -> None:
    # A complaint from a backfill of last year's history, into a pipeline that is live now.
    proc = AlertProcessor(CART_RULES, WEIGHTS, {})
    proc.process(0, [{"t": T0 + 400 * DAY, "c": {"C1": [touch(1, T0 + 400 * DAY)]}}])
    out = proc.process(0, [{"t": T0 + 400 * DAY, "c": {"C1": [
        touch(2, T0 + 30 * DAY, "complaint", "support")]}}]).alerts
    out += proc.process(0, [{"t": T0 + 401 * DAY, "c": {}}]).alerts
    # The complaint is recorded, not sent, and so are the 21 days without a touch of the
    # customer's own after it: decided as if the complaint had come in time.
    alert, dormant = sorted((a for _, kind, a, _ in out if kind == CHURN),
                            key=lambda a: a["detected_at"])
    assert (alert["status"], alert["detected_at"]) == ("historical", T0 + 30 * DAY)
    assert (dormant["status"], dormant["reasons"]) == ("historical", ["dormant"])
    assert dormant["detected_at"] == T0 + 51 * DAY
    assert churn_record("C1", alert, {"preferred_channel": None}, 0)["status"] == "historical"


def test_a_state_stored_before_the_renames_is_upgraded() -> None:
    # Before 0.9 the touches not yet final were `pending` and the profile's ids `recent`.
    complaint = touch(2, T0, "complaint", "support")
    store = {"c:C1": {"p": 0, "profile": {
        "score": None, "channels": {}, "last_event_at": None, "days": {}, "purchase_count": 0,
        "revenue": 0.0, "refunds": 0.0, "first_purchase_at": None, "last_purchase_at": None,
        "consent": {}, "recent": {"e00001": T0 - DAY}, "applied": 1}, "pending": [complaint]}}
    proc = AlertProcessor(CART_RULES, WEIGHTS, store)
    again = touch(1, T0 - DAY)  # applied before the upgrade: a duplicate now too
    out = proc.process(0, [{"t": T0 + DAY, "c": {"C1": [again]}}]).alerts
    (_, kind, alert, _), = out
    assert kind == CHURN and alert["reasons"] == ["complaint"]
    state = proc.store["c:C1"]
    assert "pending" not in state and state["unsettled"] == []
    assert state["profile"]["applied"] == 2 and "recent" not in state["profile"]
    assert all(applied_already(state["profile"], e) for e in ("e00001", "e00002"))
    assert not applied_already(state["profile"], "e00003")
