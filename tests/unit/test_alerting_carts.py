"""Cart abandonment rules, pure (contract section 2): plain times, no Kafka."""

from __future__ import annotations

import random

from services.alerting.carts import CartRules, CartTouch, add, advance, new_state
from services.alerting.upgrade import cart_state

T0 = 1_710_000_000_000
MIN = 60_000
RULES = CartRules()


def touch(i: int, minute: float, kind: str = "cart_add", cart: str | None = "K1",
          channel: str = "web", product: str | None = "P1", qty: int = 1,
          price: float = 10.0) -> CartTouch:
    return CartTouch(T0 + int(minute * MIN), f"e{i}", kind, channel, cart, product, qty, price,
                     "EUR")


def run(touches: list[CartTouch], until_minute: float, step: float = 5) -> tuple[dict, list]:
    """Feed touches in the given order while event time moves on, as the stage would."""
    state, out, now = new_state(), [], T0 - MIN
    for x in touches:
        now = max(now, x.t)
        add(state, x, RULES)
        out += advance(state, "C1", now, RULES)
    while now < T0 + until_minute * MIN:
        now += int(step * MIN)
        out += advance(state, "C1", now, RULES)
    return state, out


def quiet(touches: list[CartTouch], saving: set[str], until_minute: float) -> None:
    """The touches raise nothing once judged past every deadline, and would have without
    the `saving` ones (so a processor that judges nothing fails this)."""
    state, out = run(touches, until_minute)
    assert out == [] and state["judged"] >= T0 + until_minute * MIN
    _, control = run([x for x in touches if x.event_id not in saving], until_minute)
    assert control, "without the touches that save it, the cart is abandoned"


def test_a_cart_then_a_store_purchase_within_the_delay_raises_nothing() -> None:
    quiet([touch(1, 0), touch(2, 50, "purchase", channel="pos", product=None)], {"e2"}, 300)


def test_a_cart_then_nothing_raises_exactly_one_alert_at_the_delay() -> None:
    state, out = run([touch(1, 0), touch(2, 10, "cart_add", product="P2", price=5.0)], 600)
    (alert,) = out
    assert alert["status"] == "open" and alert["detected_at"] == T0 + 70 * MIN
    assert alert["items"] == [["P1", 1, 10.0], ["P2", 1, 5.0]] and alert["value"] == 15.0
    assert alert["evidence"] == ["e1", "e2"]
    # the alert ended the episode; its touches stay to judge it again with late ones
    assert [(a["alert_id"], a["status"]) for a in state["alerts"]] == [(alert["alert_id"],
                                                                        "open")]


def test_a_purchase_after_the_alert_resolves_the_same_alert() -> None:
    _, out = run([touch(1, 0), touch(2, 200, "purchase", product=None)], 400)
    opened, resolved = out
    assert (opened["status"], resolved["status"]) == ("open", "resolved")
    assert resolved["alert_id"] == opened["alert_id"]


def test_a_late_purchase_within_the_lateness_still_saves_the_cart() -> None:
    # Event time reaches 65 min (past the 60 min deadline) before the purchase at 58 min,
    # which arrives 7 minutes late: within the 10 minutes allowed.
    quiet([touch(1, 0), touch(2, 65, "page_view", cart=None),
           touch(3, 58, "purchase", product=None)], {"e3"}, 300)


def test_an_emptied_cart_raises_nothing() -> None:
    quiet([touch(1, 0), touch(2, 5, "cart_remove")], {"e2"}, 300)


def test_one_alert_per_day_the_others_are_counted() -> None:
    state, out = run([touch(1, 0, cart="K1"), touch(2, 120, cart="K2"),
                      touch(3, 26 * 60, cart="K3")], 30 * 60)
    assert [a["cart_id"] for a in out] == ["K1", "K3"]
    assert state["capped"] == 1


def test_activity_after_an_alert_starts_a_new_episode() -> None:
    _, out = run([touch(1, 0), touch(2, 26 * 60, "cart_view")], 30 * 60)  # past the cap
    first, second = out
    assert first["cart_id"] == second["cart_id"] == "K1"
    assert first["alert_id"] != second["alert_id"]


def test_the_implicit_cart_and_its_deterministic_id() -> None:
    _, a = run([touch(1, 0, cart=None)], 300)
    _, b = run([touch(1, 0, cart=None)], 300)
    assert a[0]["cart_id"] == "implicit" and a[0]["alert_id"] == b[0]["alert_id"]


def test_any_order_within_the_lateness_gives_the_same_alerts() -> None:
    rnd = random.Random(4)
    for _ in range(200):
        touches = []
        for i in range(rnd.randint(1, 8)):
            kind = rnd.choice(["cart_add", "cart_add", "cart_view", "purchase", "cart_remove"])
            touches.append(touch(i, rnd.randint(0, 600), kind, cart=rnd.choice(["K1", "K2"]),
                                 product=rnd.choice(["P1", "P2"])))
        ordered = sorted(touches, key=lambda x: (x.t, x.event_id))
        shuffled = sorted(touches, key=lambda x: x.t + rnd.uniform(0, RULES.lateness_ms * 0.9))
        assert run(shuffled, 2000)[1] == run(ordered, 2000)[1]


def test_a_moved_cart_history_is_judged_with_its_own_purchase() -> None:
    # A device's cart and purchase arrive together at login, hours after they happened,
    # when the partition's event time is far ahead: no alert.
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights

    proc = AlertProcessor(RULES, load_weights(), {})
    t = T0
    history = [[t, "d1", "cart_add", "web", 0.0, "dev", {"cart": "K1", "product": "P1",
                                                         "qty": 1, "price": 9.0}],
               [t + 5 * MIN, "d2", "purchase", "web", 9.0, "dev", None]]
    assert proc.process(0, [{"t": t + 3 * 24 * 60 * MIN, "c": {"C1": history}}]).alerts == []
    abandoned = [[t, "d3", "cart_add", "web", 0.0, "dev", {"cart": "K2", "product": "P1",
                                                           "qty": 1, "price": 9.0}]]
    (alert,) = proc.process(0, [{"t": t + 3 * 24 * 60 * MIN + 1, "c": {"C2": abandoned}}]).alerts
    assert alert[1] == "cart_abandonment"
    assert alert[2]["cart_id"] == "K2" and alert[2]["detected_at"] == t + 60 * MIN


def test_a_cart_claimed_at_login_days_later_is_judged_by_its_own_event_time() -> None:
    # A cart on Monday, then (its device not yet known) another on Thursday, alerted. At
    # login the Monday cart arrives: three days before Thursday's alert, so it is no repeat
    # within the 24 h cap, whatever the order of delivery.
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights

    day = 24 * 60 * MIN
    thursday = [[T0 + 3 * day, "t1", "cart_add", "web", 0.0, None,
                 {"cart": "K2", "product": "P1", "qty": 1, "price": 9.0}]]
    monday = [[T0, "m1", "cart_add", "web", 0.0, "dev",
               {"cart": "K1", "product": "P1", "qty": 1, "price": 9.0}]]

    def alerts(groups: list[list[dict]]) -> list[str]:
        proc = AlertProcessor(RULES, load_weights(), {})
        return sorted(a["cart_id"] for g in groups for _, _, a, _ in proc.process(0, g).alerts)

    first = {"t": T0 + 3 * day + 2 * 60 * MIN, "c": {"C1": thursday}}
    later = {"t": T0 + 4 * day, "c": {"C1": monday}}
    assert alerts([[first], [later]]) == alerts([[first, later]]) == ["K1", "K2"]


def test_a_cart_alerts_snapshot_is_the_profile_at_its_time_however_it_was_delivered() -> None:
    # The customer's morning: app opens, an email click, a cart left at 0:10, then a store
    # purchase at 2:00 (which resolves the alert). Delivered as it happens, the cart is judged
    # when event time passes its deadline; in one message (an import batch, a slow hop), it is
    # judged ahead of event time, at the purchase. Both must send the alert with the profile
    # at its deadline: before, the one message sent it with none of the morning applied.
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights

    def raw(i: int, minute: int, kind: str, channel: str, extra: dict | None = None) -> list:
        return [T0 + minute * MIN, f"e{i:03d}", kind, channel, 0.0, None, extra]

    cart = {"cart": "K1", "product": "P1", "qty": 1, "price": 30.0}
    day = [raw(1, 0, "app_open", "app"), raw(2, 5, "app_open", "app"),
           raw(3, 8, "email_click", "email"), raw(4, 10, "cart_add", "web", cart),
           raw(5, 120, "purchase", "pos")]

    def alerts(messages: list[dict]) -> list[tuple]:
        proc = AlertProcessor(RULES, load_weights(), {})
        out = [x for m in messages for x in proc.process(0, [m]).alerts]
        out += proc.process(0, [{"t": T0 + 600 * MIN, "c": {}}]).alerts
        return [(a["alert_id"], a["detected_at"], snap["preferred_channel"],
                 round(snap["engagement_score"], 6)) for _, _, a, snap in out]

    live = alerts([{"t": x[0], "c": {"C1": [x]}} for x in day]
                  + [{"t": T0 + m * MIN, "c": {}} for m in range(20, 140, 10)])
    at_once = alerts([{"t": day[-1][0], "c": {"C1": day}}])
    assert live == at_once
    (_, detected, channel, score), resolved = live
    assert detected == T0 + 70 * MIN and channel is not None and score > 0
    assert resolved[0] == live[0][0]  # the same alert, resolved by the purchase


def test_a_cart_from_a_device_claimed_at_login_gets_the_profile_at_the_login() -> None:
    # A device's cart on day 0 reaches the customer at their login on day 2 (marked with the
    # login's time). Whether alerting had applied the customer's own touches up to the login
    # or not yet when it came, the alert carries the profile at the login.
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights
    from services.domain.touch import moved_touch

    day = 24 * 60 * MIN
    login = T0 + 2 * day
    own = [[T0 + day + k * 60 * MIN, f"o{k}", "app_open", "app", 0.0, None, None]
           for k in range(20)] + [[login, "login", "identify", "app", 0.0, "dev", None]]
    cart = moved_touch([T0, "d1", "cart_add", "web", 0.0, "dev",
                        {"cart": "K1", "product": "P1", "qty": 1, "price": 9.0}], login)

    def alerts(first: list, then: list, now: int) -> list[tuple]:
        proc = AlertProcessor(RULES, load_weights(), {})
        out = proc.process(0, [{"t": now, "c": {"C1": first}}]).alerts
        out += proc.process(0, [{"t": login, "c": {"C1": then}}]).alerts
        out += proc.process(0, [{"t": login + day, "c": {}}]).alerts
        return [(a["detected_at"], snap["preferred_channel"], round(snap["engagement_score"], 6))
                for _, _, a, snap in out]

    slow = alerts(own[:-1], own[-1:] + [cart], login - MIN)  # own touches applied already
    fast = alerts(own[:5], own[5:] + [cart], own[4][0])  # most of them still held
    assert slow == fast and [detected for detected, _, _ in slow] == [T0 + 60 * MIN]


def alerting(messages: list[dict]) -> list[tuple]:
    """Alerts (id, status, detected_at, evidence) of attributed messages, fed one by one."""
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights

    proc = AlertProcessor(RULES, load_weights(), {})
    out = [x for m in messages for x in proc.process(0, [m]).alerts]
    return sorted((a["alert_id"], a["status"], a["detected_at"], tuple(a["evidence"]))
                  for _, _, a, _ in out)


def raw(event_id: str, minute: float, kind: str, cart: str | None = "K1",
        device: str | None = None) -> list:
    extra = {"cart": cart, "product": "P1", "qty": 1, "price": 9.0} if kind != "purchase" \
        else None
    return [T0 + int(minute * MIN), event_id, kind, "web", 9.0 if kind == "purchase" else 0.0,
            device, extra]


def test_a_purchase_forwarded_after_the_customers_later_cart_touch_still_saves_the_cart(
) -> None:
    # The customer's own partition runs ahead: their cart at 0:00 and another item added to
    # the cart at 2:00 reach alerting while the partition's event time is 0:05. A purchase at
    # 0:50 on their linked phone takes the hop through the handoff topic and comes next. In
    # event time the 0:00 episode was bought: no alert; the 2:00 one was not.
    own = [raw("c1", 0, "cart_add"), raw("c2", 120, "cart_add")]
    forwarded = [raw("p1", 50, "purchase", device="phone")]
    end = {"t": T0 + 24 * 60 * MIN, "c": {}}
    live = alerting([{"t": T0 + 5 * MIN, "c": {"C1": own}},
                     {"t": T0 + 60 * MIN, "c": {"C1": forwarded}}, end])
    at_once = alerting([{"t": T0 + 180 * MIN, "c": {"C1": own + forwarded}}, end])
    assert live == at_once
    assert [(status, detected) for _, status, detected, _ in live] == [
        ("open", T0 + 180 * MIN)]


def test_episodes_are_formed_in_event_time_whatever_order_the_touches_come_in() -> None:
    # 0:00 and 1:40 are one episode only through the touch at 0:50 (each within the hour of
    # the next); it comes last, as a device's touch forwarded slowly would.
    touches = [raw("a", 0, "cart_add"), raw("c", 100, "cart_view"),
               raw("b", 50, "cart_view", device="phone")]
    end = {"t": T0 + 24 * 60 * MIN, "c": {}}
    slow = alerting([{"t": T0 + 5 * MIN, "c": {"C1": touches[:2]}},
                     {"t": T0 + 60 * MIN, "c": {"C1": touches[2:]}}, end])
    ordered = alerting([{"t": T0 + 100 * MIN, "c": {"C1": touches}}, end])
    assert slow == ordered
    ((_, _, detected, evidence),) = ordered
    assert detected == T0 + 160 * MIN and evidence == ("a", "b", "c")


def test_random_histories_give_the_same_alerts_however_they_are_delivered() -> None:
    # A customer's touches out of order within the allowed lateness, in messages of random
    # sizes, each with a partition time anywhere from the last one to the newest touch so far
    # (the customer's own partition may run ahead of the aligned time), against one message.
    rnd = random.Random(11)
    for _ in range(300):
        touches = sorted((raw(f"e{i:02d}", rnd.randint(0, 8 * 60),
                              rnd.choice(["cart_add", "cart_add", "cart_view", "purchase",
                                          "cart_remove"]), cart=rnd.choice(["K1", "K2"]))
                          for i in range(rnd.randint(1, 10))), key=lambda x: (x[0], x[1]))
        arrival = sorted(touches, key=lambda x: x[0] + rnd.uniform(0, RULES.lateness_ms * 0.9))
        messages, clock, newest = [], T0 - MIN, T0 - MIN
        while arrival:
            n = rnd.randint(1, 3)
            take, arrival = arrival[:n], arrival[n:]
            newest = max(newest, *(x[0] for x in take))
            clock = rnd.randint(clock, newest)
            messages.append({"t": clock, "c": {"C1": take}})
        end = {"t": T0 + 6 * 24 * 60 * MIN, "c": {}}  # within the correction horizon
        assert alerting(messages + [end]) == alerting(
            [{"t": touches[-1][0], "c": {"C1": touches}}, end])


def test_a_cart_stored_by_the_earlier_version_is_judged_as_it_stood() -> None:
    old = {"carts": {"K1": {"items": {"P1": [2, 10.0]}, "had_items": True, "currency": "EUR",
                            "last_activity": T0 + 10 * MIN, "first": T0, "first_event_id": "e1",
                            "evidence": [[T0, "e1"], [T0 + 10 * MIN, "e2"]], "done": False},
                     "K0": {"items": {}, "had_items": True, "currency": None, "done": True,
                            "last_activity": T0, "first": T0, "first_event_id": "e0",
                            "evidence": [[T0, "e0"]]}},
           "purchases": [T0 - 600 * MIN], "alerts": [], "last_sent_at": None, "capped": 0}
    (alert,) = advance(cart_state(old), "C1", T0 + 90 * MIN, RULES)
    fresh = new_state()
    add(fresh, touch(1, 0, qty=2), RULES)
    add(fresh, touch(2, 10, "cart_view"), RULES)
    assert alert == advance(fresh, "C1", T0 + 90 * MIN, RULES)[0]
    assert alert["items"] == [["P1", 2, 10.0]] and alert["detected_at"] == T0 + 70 * MIN


def test_a_cart_state_stored_before_0_10_is_read_and_keeps_no_setting() -> None:
    state = new_state()
    add(state, touch(1, 0, qty=2), RULES)
    assert advance(state, "C1", T0 + 30 * MIN, RULES) == []  # not due yet: K1 judged
    assert "lateness" not in state  # a setting, never stored
    state["fresh"] = state.pop("rejudge") + ["K1"]  # as 0.9 stored it
    state["lateness"] = RULES.lateness_ms
    cart_state(state)
    assert "fresh" not in state and state["rejudge"] == ["K1"] and "lateness" not in state
    (alert,) = advance(state, "C1", T0 + 90 * MIN, RULES)
    assert alert["cart_id"] == "K1" and alert["detected_at"] == T0 + 60 * MIN


def test_a_resolution_by_a_purchase_claimed_at_login_gets_the_profile_at_the_login() -> None:
    # The customer's own cart alerts at 1:00; they buy at 2:00 on a device that is theirs
    # only from its login on day 2. The resolution stands at the login, whether alerting had
    # applied the customer's touches up to it or not yet when the purchase came.
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights
    from services.domain.touch import moved_touch

    day = 24 * 60 * MIN
    login = T0 + 2 * day
    own = [[T0 + day + k * 60 * MIN, f"o{k:02d}", "app_open", "app", 0.0, None, None]
           for k in range(20)] + [[login, "login", "identify", "app", 0.0, "dev", None]]
    bought = moved_touch(raw("p1", 120, "purchase", device="dev"), login)

    def resolutions(first: list, then: list, now: int) -> list[tuple]:
        proc = AlertProcessor(RULES, load_weights(), {})
        out = proc.process(0, [{"t": T0 + 180 * MIN,
                                 "c": {"C1": [raw("c1", 0, "cart_add")]}}]).alerts
        out += proc.process(0, [{"t": now, "c": {"C1": first}}]).alerts
        out += proc.process(0, [{"t": login, "c": {"C1": then}}]).alerts
        out += proc.process(0, [{"t": login + day, "c": {}}]).alerts
        return [(a["status"], snap["preferred_channel"], round(snap["engagement_score"], 6))
                for _, kind, a, snap in out if kind == "cart_abandonment"]

    slow = resolutions(own[:-1], own[-1:] + [bought], login - MIN)  # applied up to the login
    fast = resolutions(own[:5], own[5:] + [bought], own[4][0])  # most of them still held
    assert slow == fast and [status for status, _, _ in slow] == ["open", "resolved"]


# -- the cart rule: a purchase empties the cart (contract section 2) ---------------------------

def test_a_view_or_checkout_after_a_purchase_with_nothing_added_raises_nothing() -> None:
    # An order confirmation or receipt page: the customer just bought.
    for kind in ("cart_view", "checkout_start"):
        quiet([touch(1, 0), touch(2, 5, "purchase", product=None),
               touch(3, 6, kind, product=None)], {"e2"}, 300)


def test_a_view_of_a_cart_never_filled_raises_nothing() -> None:
    state, out = run([touch(1, 0, "cart_view", product=None),
                      touch(2, 3, "checkout_start", product=None)], 300)
    assert out == [] and state["judged"] >= T0 + 300 * MIN
    # the same views of a cart with an item in it: abandoned
    (alert,) = run([touch(0, -1), touch(1, 0, "cart_view", product=None),
                    touch(2, 3, "checkout_start", product=None)], 300)[1]
    assert alert["evidence"] == ["e0", "e1", "e2"]


def test_a_cart_add_after_a_purchase_gives_the_cart_something_to_abandon() -> None:
    _, out = run([touch(1, 0), touch(2, 5, "purchase", product=None),
                  touch(3, 30, "cart_add", product="P2", price=4.0)], 300)
    (alert,) = out
    assert alert["evidence"] == ["e3"] and alert["items"] == [["P2", 1, 4.0]]
    assert alert["detected_at"] == T0 + 90 * MIN


def test_after_an_alert_the_cart_still_holds_its_items() -> None:
    # Abandoned at 1:00 (alert); a look at the cart the next day opens a new episode with
    # the items still in it: a second reminder, past the 24 h cap.
    _, out = run([touch(1, 0, qty=2), touch(2, 26 * 60, "cart_view", product=None)], 30 * 60)
    first, second = out
    assert second["evidence"] == ["e2"] and second["items"] == first["items"] == [
        ["P1", 2, 10.0]]


def test_a_cart_emptied_then_viewed_raises_nothing() -> None:
    quiet([touch(1, 0), touch(2, 5, "cart_remove"), touch(3, 8, "cart_view", product=None)],
          {"e2"}, 300)


# -- late touches: decisions follow the events, sending follows timeliness ---------------------

def at_once(touches: list[CartTouch], until: int) -> list[dict]:
    state = new_state()
    for x in touches:
        add(state, x, RULES)
    return advance(state, "C1", until, RULES)


def test_a_purchase_that_comes_late_resolves_the_alert_it_would_have_prevented() -> None:
    # The web cart at 0:00 is alerted at 1:00; the store's receipt of a purchase at 0:40
    # comes with the night's upload, hours later.
    state = new_state()
    add(state, touch(1, 0), RULES)
    (alert,) = advance(state, "C1", T0 + 3 * 60 * MIN, RULES)
    add(state, touch(2, 40, "purchase", channel="pos", product=None), RULES)
    (resolved,) = advance(state, "C1", T0 + 10 * 60 * MIN, RULES)
    assert (alert["status"], resolved["status"]) == ("open", "resolved")
    assert resolved["alert_id"] == alert["alert_id"] and resolved["reasons"] == ["late_purchase"]
    assert resolved["version"] == 2 and resolved["detected_at"] == alert["detected_at"]
    assert advance(state, "C1", T0 + 20 * 60 * MIN, RULES) == []  # never sent again


# -- through the stage's processor: late touches decided again, the horizon ------------------

def cart_raw(touch: CartTouch) -> list:
    """A CartTouch as the attributed topic carries it."""
    extra = None if touch.event_type == "purchase" else {
        "cart_id": touch.cart_id, "product_id": touch.product_id, "quantity": touch.quantity,
        "unit_price": touch.unit_price, "currency": touch.currency}
    out = [touch.t, touch.event_id, touch.event_type, touch.channel, 0.0, None, extra]
    return out if touch.moved_at is None else [*out, touch.moved_at]


def processed(messages: list[dict], now: int | None = None) -> dict[str, dict]:
    """Every cart decision as the warehouse keeps it (the latest record of each alert, the
    withdrawn ones hidden), of attributed messages fed one by one."""
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights

    proc = AlertProcessor(RULES, load_weights(), {})
    latest: dict[str, dict] = {}
    for message in messages:
        for _, kind, alert, _ in proc.process(0, [message], now=now).alerts:
            if kind == "cart_abandonment":
                latest[alert["alert_id"]] = alert
    return {k: v for k, v in latest.items() if v["status"] != "withdrawn"}


def test_a_decision_further_than_the_horizon_behind_event_time_is_historical() -> None:
    # Decided by a touch that came when event time was 30 days on: recorded, not sent. Six
    # days on, within the correction horizon (7 days): sent. Measured from the wall clock
    # (`now`) too: history imported into a quiet pipeline is history.
    day = 24 * 60 * MIN

    def status(event_time: int, now: int | None = None) -> str:
        (alert,) = processed([{"t": event_time, "c": {}},
                              {"t": event_time, "c": {"C1": [cart_raw(touch(1, 0))]}},
                              {"t": event_time + day, "c": {}}], now).values()
        return alert["status"]

    assert status(T0 + 30 * day) == "historical"
    assert status(T0 + 6 * day) == "open"
    assert status(T0 + 2 * 60 * MIN, now=T0 + 30 * day) == "historical"
    assert status(T0 + 2 * 60 * MIN, now=T0 + 3 * 60 * MIN) == "open"


def test_a_backfill_in_event_time_gives_the_decisions_of_the_touches_at_once() -> None:
    # History arrives in event-time order, a few touches per message, far behind event time:
    # each message decides again what it changes; the records end as the decisions of all
    # the touches at once, and nothing is sent.
    day = 24 * 60 * MIN
    rnd = random.Random(3)
    for _ in range(100):
        history = sorted((touch(i, rnd.randint(0, 3 * 24 * 60),
                                rnd.choice(["cart_add", "cart_add", "cart_view", "purchase",
                                            "cart_remove", "checkout_start"]),
                                cart=rnd.choice(["K1", "K2", None]),
                                product=rnd.choice(["P1", "P2"]))
                          for i in range(rnd.randint(1, 25))), key=lambda x: (x.t, x.event_id))
        now = T0 + 400 * day
        messages, i = [{"t": now, "c": {}}], 0
        while i < len(history):
            n = rnd.randint(1, 4)
            messages.append({"t": now, "c": {"C1": [cart_raw(x) for x in history[i:i + n]]}})
            i += n
        final = processed(messages)
        assert {a["status"] for a in final.values()} <= {"historical"}
        whole = {r["alert_id"]: r for r in at_once(history, now)}
        key = ("detected_at", "evidence", "items", "value", "resolved")
        assert {k: [v[f] for f in key] for k, v in final.items()} == \
            {k: [v[f] for f in key] for k, v in whole.items()}


def test_a_claimed_cart_decided_first_gives_way_to_an_own_cart_that_stands_before_it() -> None:
    # History far behind event time: a device's cart (day 0) claimed at a login on day 2 came
    # first, the customer's own cart of 12:00 after it (the sessionizer held it for the
    # device's history). The claimed cart stands at the login, so the own cart is the one
    # within the cap that is decided, and the claimed one, recorded first, is withdrawn:
    # as when both come at once, or in event-time order.
    day = 24 * 60
    login = T0 + 2 * day * MIN
    claimed = [cart_raw(CartTouch(T0 + m * MIN, f"d{m}", "cart_add", "web", "KD", "P1", 1, 10.0,
                                  "EUR", login)) for m in (0, 3)]
    own = [cart_raw(touch(10, day // 2, cart="KC")), cart_raw(touch(11, day // 2 + 5, cart="KC"))]
    now = T0 + 400 * day * MIN
    for order in ([claimed, own], [own, claimed], [claimed + own]):
        final = processed([{"t": now, "c": {}}] + [{"t": now, "c": {"C1": x}} for x in order])
        assert [(a["cart_id"], a["status"]) for a in final.values()] == [("KC", "historical")]


def test_old_carts_are_forgotten_with_what_they_still_hold() -> None:
    # Two carts: K1 alerted on day 0 and still holding its item, K2 active on day 20. K1's
    # touches are forgotten (8 days), and it remembers what it holds: a view of it on day 21
    # reminds again of the same item.
    day = 24 * 60
    state, out = run([touch(1, 0, cart="K1"), touch(2, 20 * day, cart="K2"),
                      touch(3, 21 * day, "cart_view", cart="K1", product=None)], 22 * day,
                     step=60)
    assert "e1" not in {x[1] for x in state["carts"].get("K1", [])}
    assert state["bases"]["K1"][0] == {"P1": [1, 10.0]}
    assert [(a["cart_id"], a["items"]) for a in out] == [
        ("K1", [["P1", 1, 10.0]]), ("K2", [["P1", 1, 10.0]]), ("K1", [["P1", 1, 10.0]])]


def test_forgetting_a_cart_whatever_order_its_carts_came_in() -> None:
    # K2 (day 20) came first, K1's day-0 touch after it (late): K1's touches are forgotten,
    # K2's kept. (The state's first cart forgets nothing.)
    day = 24 * 60
    state, out = run([touch(2, 20 * day, cart="K2"), touch(1, 0, cart="K1"),
                      touch(3, 21 * day, "cart_view", cart="K2", product=None)], 22 * day,
                     step=60)
    assert [(a["cart_id"], a["status"]) for a in out] == [
        ("K1", "open"), ("K2", "open"), ("K2", "open")]  # 24 h apart: no cap
    assert state["bases"]["K1"][0] == {"P1": [1, 10.0]} and "K1" not in state["carts"]
    assert [x[1] for x in state["carts"]["K2"]] == ["e2", "e3"]


def test_weeks_of_history_behind_a_live_cart_give_the_decisions_of_history_first() -> None:
    # Long enough for the carts to forget their old touches while the backfill goes on (8
    # days), with carts close enough together for the 24 h cap: the history behind a live
    # cart gives the decisions of the history first, whichever came first.
    day = 24 * 60
    rnd = random.Random(9)
    for _ in range(30):
        history = sorted((touch(i, rnd.randint(0, 40 * day),
                                rnd.choice(["cart_add", "cart_add", "cart_view", "purchase"]),
                                cart=f"K{rnd.randint(0, 30)}", product="P1")
                          for i in range(60)), key=lambda x: (x.t, x.event_id))
        live = [touch(1000, 60 * day, cart="live")]

        def run_in(order: list[list[CartTouch]]) -> dict:
            messages, now = [], T0
            for batch in order:
                now = max(now, *(x.t for x in batch))
                messages.append({"t": now + 1, "c": {"C1": [cart_raw(x) for x in batch]}})
            messages.append({"t": T0 + 70 * day * MIN, "c": {}})
            return {k: (v["detected_at"], v["evidence"]) for k, v in processed(messages).items()
                    if v["detected_at"] < T0 + 50 * day * MIN}

        chunks = [history[i:i + 5] for i in range(0, len(history), 5)]
        assert run_in([live, *chunks]) == run_in([*chunks, live])


def test_a_claimed_cart_stands_at_its_login_in_the_cap_however_early_it_arrives() -> None:
    # A device's cart at 0:00, the customer's own at 15:00; the device logs in on day 2, so
    # its cart is the customer's only from then: at 16:00 the customer's cart is the one to
    # remind of, and the device's is within 24 h of it (capped). Whether the login's hand-over
    # reaches alerting before 16:00 (its partition ran ahead) or after, the same decision.
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights
    from services.domain.touch import moved_touch

    day = 24 * 60 * MIN
    login = T0 + 2 * day
    device_cart = [moved_touch(raw("d1", 0, "cart_add", cart="KD"), login),
                   moved_touch([login, "login", "identify", "web", 0.0, "dev", None], login)]
    own_cart = [raw("c1", 15 * 60, "cart_add", cart="KO")]

    def alerts(messages: list[dict]) -> list[str]:
        proc = AlertProcessor(RULES, load_weights(), {})
        out = [x for m in messages for x in proc.process(0, [m]).alerts]
        out += proc.process(0, [{"t": login + day, "c": {}}]).alerts
        return sorted(a["cart_id"] for _, kind, a, _ in out
                      if kind == "cart_abandonment" and a["status"] == "open")

    early = alerts([{"t": T0 + 20 * MIN, "c": {"C1": device_cart}},
                    {"t": T0 + 15 * 60 * MIN, "c": {"C1": own_cart}},
                    {"t": T0 + 17 * 60 * MIN, "c": {}}])
    late = alerts([{"t": T0 + 15 * 60 * MIN, "c": {"C1": own_cart}},
                   {"t": T0 + 17 * 60 * MIN, "c": {}},
                   {"t": login, "c": {"C1": device_cart}}])
    assert early == late == ["KO"]


def test_a_cart_claimed_weeks_later_is_judged_with_the_purchases_of_its_time() -> None:
    # A device's cart at 0:00; the customer buys at 0:20 on their own account; the device
    # logs in 18 days later, and the cart becomes theirs: bought within the hour, no reminder
    # (the purchase is kept for the 30 days a login may claim a device's history).
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights
    from services.domain.touch import moved_touch

    day = 24 * 60 * MIN
    login = T0 + 18 * day
    proc = AlertProcessor(RULES, load_weights(), {})
    out = proc.process(0, [{"t": T0 + 20 * MIN, "c": {"C1": [raw("p1", 20, "purchase")]}}]).alerts
    for d in range(1, 18):  # the customer's own days go by, with a purchase every 5
        kind = "purchase" if d % 5 == 0 else "page_view"
        out += proc.process(0, [{"t": T0 + d * day, "c": {"C1": [
            [T0 + d * day, f"v{d}", kind, "web", 9.0, None, None]]}}]).alerts
    cart = [moved_touch(raw("d1", 0, "cart_add", cart="KD"), login)]
    out += proc.process(0, [{"t": login, "c": {"C1": cart}}]).alerts
    out += proc.process(0, [{"t": login + day, "c": {}}]).alerts
    assert [a for _, kind, a, _ in out if kind == "cart_abandonment"] == []
