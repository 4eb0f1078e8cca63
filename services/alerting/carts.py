"""Cart abandonment (contract section 2), pure: a customer's carts, purchases and alerts.

A cart (its `cart_id`, or one implicit cart per customer) is abandoned when no purchase by
the customer, on any channel, follows within the abandonment delay of its last cart activity
(`cart_add`, `cart_view`, `checkout_start`). An episode ends with a purchase, an emptied cart
or its alert; activity after an alert starts a new episode. At most one alert per customer per
cap window (default 24 h): a capped episode is counted, not sent. A purchase after the alert
resolves it (same `alert_id`, status `resolved`).

Event time: a cart is judged only once its partition's event time is past its deadline plus
the allowed lateness, so a purchase that arrives late, but within the lateness, still saves it.
`detected_at` is the deadline itself, so replays give the same alerts.

State is JSON-ready (the stage's changelog stores it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
CART_ACTIVITY = frozenset({"cart_add", "cart_view", "checkout_start"})
IMPLICIT = "implicit"


@dataclass(frozen=True)
class CartRules:
    delay_ms: int = 60 * MINUTE_MS
    cap_ms: int = 24 * HOUR_MS
    lateness_ms: int = 10 * MINUTE_MS
    resolve_within_ms: int = 7 * 24 * HOUR_MS  # a purchase this long after an alert resolves it


@dataclass(frozen=True)
class CartTouch:
    t: int
    event_id: str
    event_type: str
    channel: str
    cart_id: str | None = None
    product_id: str | None = None
    quantity: int | None = None
    unit_price: float | None = None
    currency: str | None = None
    #: A device's touch claimed at a later login: the login's event time (else None).
    moved_at: int | None = None


def new_state() -> dict:
    return {"carts": {}, "purchases": [], "alerts": [], "sent": [], "capped": 0}


def alert_id(customer: str, cart: str, first_event_id: str) -> str:
    digest = hashlib.sha256(f"cart\0{customer}\0{cart}\0{first_event_id}".encode()).hexdigest()
    return "a-" + digest[:24]


def add(state: dict, customer: str, touch: CartTouch, stream_time: int,
        rules: CartRules) -> list[dict]:
    """Record one touch, `stream_time` being the partition's event time with it. Carts due
    before it are judged first (activity after a deadline starts a new episode). Touches too
    late for decisions already taken never come here: the sessionizer keeps them apart; a
    device's cart moved to its customer at login does, and is judged at once if due.
    Returns the alerts to emit."""
    out = advance(state, customer, stream_time, rules)
    _add(state, touch)
    return out


def _add(state: dict, touch: CartTouch) -> None:
    if touch.event_type == "purchase":
        if touch.t not in state["purchases"]:
            state["purchases"].append(touch.t)
            state["purchases"].sort()
        return
    if touch.event_type not in CART_ACTIVITY and touch.event_type != "cart_remove":
        return
    cart_key = touch.cart_id or IMPLICIT
    cart = state["carts"].get(cart_key)
    if cart is None or cart.get("done"):
        cart = {"items": {}, "had_items": False, "currency": None, "last_activity": None,
                "first": touch.t, "first_event_id": touch.event_id, "evidence": [],
                "done": False}
        state["carts"][cart_key] = cart
    if any(event_id == touch.event_id for _, event_id in cart["evidence"]):
        return  # redelivered
    cart["evidence"].append([touch.t, touch.event_id])
    if touch.moved_at is not None:
        cart["moved_at"] = max(cart.get("moved_at") or touch.moved_at, touch.moved_at)
    if touch.t < cart["first"]:
        cart["first"], cart["first_event_id"] = touch.t, touch.event_id
    if touch.product_id and touch.event_type in ("cart_add", "cart_remove"):
        sign = 1 if touch.event_type == "cart_add" else -1
        item = cart["items"].setdefault(touch.product_id, [0, touch.unit_price])
        item[0] += sign * (touch.quantity or 1)
        if touch.unit_price is not None:
            item[1] = touch.unit_price
        cart["had_items"] = True
        if item[0] <= 0:
            del cart["items"][touch.product_id]
    cart["currency"] = touch.currency or cart["currency"]
    if touch.event_type in CART_ACTIVITY:
        last = cart["last_activity"]
        cart["last_activity"] = touch.t if last is None else max(last, touch.t)


def _bought(state: dict, after: int, until: int) -> int | None:
    return next((t for t in state["purchases"] if after <= t <= until), None)


def advance(state: dict, customer: str, stream_time: int, rules: CartRules) -> list[dict]:
    """Judge the carts whose time has come; returns alert records (schemas/alert.avsc) to
    emit: new alerts, and resolutions of earlier ones."""
    if "sent" not in state:  # stored before the list of sent deadlines existed
        last = state.pop("last_sent_at", None)
        state["sent"] = [] if last is None else [last]
    out = []
    # In deadline order: the order event time judges them in, however they were delivered.
    for key, cart in sorted(state["carts"].items(),
                            key=lambda kv: (kv[1]["last_activity"] or 0, kv[0])):
        last = cart["last_activity"]
        if cart["done"] or last is None:
            continue
        deadline = last + rules.delay_ms
        if stream_time <= deadline + rules.lateness_ms:
            continue  # a purchase up to the deadline may still arrive
        cart["done"] = True  # this episode ends here, whatever the outcome
        if cart["had_items"] and not cart["items"]:
            continue  # an emptied cart raises nothing
        if _bought(state, last, deadline) is not None:
            continue
        # Within the cap of an alert sent before or after it in event time: a device's cart
        # claimed at login can be older than an alert already sent.
        sent = state["sent"]
        if any(abs(deadline - other) < rules.cap_ms for other in sent):
            state["capped"] += 1  # counted, not sent
            continue
        sent.append(deadline)
        record = {
            "alert_id": alert_id(customer, key, cart["first_event_id"]), "status": "open",
            "cart_id": key, "detected_at": deadline,
            "evidence": [event_id for _, event_id in sorted(cart["evidence"])],
            "items": [[p, q, price] for p, (q, price) in sorted(cart["items"].items())],
            "value": round(sum(q * (price or 0.0) for q, price in cart["items"].values()), 2),
            "currency": cart["currency"], "resolved": False, "moved_at": cart.get("moved_at"),
        }
        state["alerts"].append(record)
        out.append(record)
    for alert in state["alerts"]:
        if alert["resolved"]:
            continue
        bought = _bought(state, alert["detected_at"],
                         alert["detected_at"] + rules.resolve_within_ms)
        if bought is not None and bought + rules.lateness_ms < stream_time:
            alert["resolved"] = True
            out.append({**alert, "status": "resolved", "resolved_at": bought})
    _forget(state, stream_time, rules)
    return out


def decided_at(alert: dict) -> int:
    """The event time an alert or resolution stands for, for its profile snapshot: its
    deadline (or the purchase that resolves it), or, for a cart from a device's history claimed
    at a later login, that login: the cart became the customer's only then."""
    at = alert["resolved_at"] if alert["status"] == "resolved" else alert["detected_at"]
    return max(at, alert.get("moved_at") or at)


def due_at(state: dict, rules: CartRules) -> int | None:
    """The event time after which `advance` has something to decide without new touches."""
    times = [c["last_activity"] + rules.delay_ms + rules.lateness_ms
             for c in state["carts"].values() if not c["done"] and c["last_activity"]]
    for alert in state["alerts"]:
        if not alert["resolved"]:
            bought = _bought(state, alert["detected_at"],
                             alert["detected_at"] + rules.resolve_within_ms)
            if bought is not None:
                times.append(bought + rules.lateness_ms)
    return min(times) if times else None


def _forget(state: dict, stream_time: int, rules: CartRules) -> None:
    """Drop what can no longer matter: judged carts, old purchases, settled alerts."""
    horizon = stream_time - rules.resolve_within_ms - rules.lateness_ms
    state["carts"] = {k: c for k, c in state["carts"].items() if not c["done"]}
    state["purchases"] = [t for t in state["purchases"] if t >= horizon]
    state["alerts"] = [a for a in state["alerts"]
                       if not a["resolved"] and a["detected_at"] >= horizon]
    state["sent"] = [t for t in state["sent"] if t >= horizon - rules.cap_ms]
