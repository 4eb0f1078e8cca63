"""Cart abandonment (contract section 2), pure: a customer's carts, purchases and alerts.

A cart (its `cart_id`, or one implicit cart per customer) is abandoned when no purchase by
the customer, on any channel, follows within the abandonment delay of its last cart activity
(`cart_add`, `cart_view`, `checkout_start`). An *episode* of a cart is its touches in event
time until one comes after the deadline (last activity plus the delay): that one starts the
next episode. An episode raises an alert unless a purchase came between its last activity and
its deadline, or it ended with the cart emptied. At most one alert per customer per cap window
(default 24 h): a capped episode is counted, not sent. A purchase after the alert resolves it
(same `alert_id`, status `resolved`).

Event time: a cart keeps its touches, and its episodes are formed and judged only once its
partition's event time is past the deadline plus the allowed lateness. Nothing that could
change the judgement arrives after that (a later touch would be too late), so the alerts are
a function of the touches, whatever order and batches they came in, and however long a
device's touch took to reach its customer. `detected_at` is the deadline itself, so replays
give the same alerts.

State is JSON-ready (the stage's changelog stores it).
"""

from __future__ import annotations

import hashlib
from bisect import insort
from dataclasses import dataclass

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
CART_ACTIVITY = frozenset({"cart_add", "cart_view", "checkout_start"})
IMPLICIT = "implicit"
#: A cart's touch as stored: [t, event_id, event_type, product_id, quantity, unit_price,
#: currency, moved_at].
T, EVENT_ID, EVENT_TYPE, PRODUCT, QUANTITY, PRICE, CURRENCY, MOVED_AT = range(8)


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


def add(state: dict, touch: CartTouch) -> None:
    """Record one touch (a purchase, or a cart's); nothing is judged here (`advance`)."""
    if touch.event_type == "purchase":
        # with the time it counts for the customer from: a device's, claimed at a later
        # login, from the login (a resolution by it stands there, `decided_at`)
        purchase = [touch.t, max(touch.t, touch.moved_at or touch.t)]
        if purchase not in state["purchases"]:
            insort(state["purchases"], purchase)
        return
    if touch.event_type not in CART_ACTIVITY and touch.event_type != "cart_remove":
        return
    touches = state["carts"].setdefault(touch.cart_id or IMPLICIT, [])
    if any(x[EVENT_ID] == touch.event_id for x in touches):
        return  # redelivered
    insort(touches, [touch.t, touch.event_id, touch.event_type, touch.product_id,
                     touch.quantity, touch.unit_price, touch.currency, touch.moved_at],
           key=_order)


def _order(x: list) -> tuple[int, str]:
    return x[T], x[EVENT_ID]


def episodes(touches: list[list], delay_ms: int) -> list[tuple[int, list[list]]]:
    """A cart's sorted touches cut into episodes: (the time it ends, its touches). It ends at
    its deadline (last activity plus the delay), or, with no activity (only removals), the
    delay after its first touch; a touch after that starts the next one."""
    out: list[tuple[int, list[list]]] = []
    ends, current = 0, []
    for x in touches:
        if current and x[T] > ends:
            out.append((ends, current))
            current = []
        if not current:
            ends = x[T] + delay_ms
        current.append(x)
        if x[EVENT_TYPE] in CART_ACTIVITY:
            ends = max(ends, x[T] + delay_ms)
    if current:
        out.append((ends, current))
    return out


def _bought(state: dict, after: int, until: int) -> list | None:
    """The first purchase (its time, the time it counts from) between the two times."""
    return next((p for p in state["purchases"] if after <= p[0] <= until), None)


def advance(state: dict, customer: str, stream_time: int, rules: CartRules) -> list[dict]:
    """Judge the episodes whose time has come, in deadline order (the order event time
    judges them in, across carts); returns alert records (schemas/alert.avsc) to emit: new
    alerts, and resolutions of earlier ones."""
    due = []
    for key, touches in list(state["carts"].items()):
        judged = 0
        for ends, episode in episodes(touches, rules.delay_ms):
            if stream_time <= ends + rules.lateness_ms:
                break  # a purchase up to the deadline, or a touch of the episode, may come
            due.append((ends, key, episode))
            judged += len(episode)
        if judged == len(touches):
            del state["carts"][key]
        elif judged:
            state["carts"][key] = touches[judged:]
    out = []
    for deadline, key, episode in sorted(due, key=lambda x: (x[0], x[1])):
        record = _judge(state, customer, key, deadline, episode, rules)
        if record is not None:
            state["alerts"].append(record)
            out.append(record)
    for alert in state["alerts"]:
        if alert["resolved"]:
            continue
        bought = _bought(state, alert["detected_at"],
                         alert["detected_at"] + rules.resolve_within_ms)
        if bought is not None and bought[0] + rules.lateness_ms < stream_time:
            alert["resolved"] = True
            out.append({**alert, "status": "resolved", "resolved_at": bought[0],
                        "resolved_counts_at": bought[1]})
    _forget(state, stream_time, rules)
    return out


def _judge(state: dict, customer: str, key: str, deadline: int, episode: list[list],
           rules: CartRules) -> dict | None:
    """The alert an ended episode raises, or None: no activity, emptied, saved by a
    purchase, or capped (counted)."""
    items: dict[str, list] = {}
    had_items, currency, last = False, None, None
    for x in episode:
        kind, product = x[EVENT_TYPE], x[PRODUCT]
        if product and kind in ("cart_add", "cart_remove"):
            item = items.setdefault(product, [0, x[PRICE]])
            item[0] += (1 if kind == "cart_add" else -1) * (x[QUANTITY] or 1)
            if x[PRICE] is not None:
                item[1] = x[PRICE]
            had_items = True
            if item[0] <= 0:
                del items[product]
        currency = x[CURRENCY] or currency
        if kind in CART_ACTIVITY:
            last = x[T]
    if last is None or (had_items and not items):
        return None  # only removals, or an emptied cart: nothing to remind of
    if _bought(state, last, deadline) is not None:
        return None
    # Within the cap of an alert sent before or after it in event time: a device's cart
    # claimed at login can be older than an alert already sent.
    sent = state["sent"]
    if any(abs(deadline - other) < rules.cap_ms for other in sent):
        state["capped"] += 1  # counted, not sent
        return None
    sent.append(deadline)
    moved = [x[MOVED_AT] for x in episode if x[MOVED_AT] is not None]
    return {
        "alert_id": alert_id(customer, key, episode[0][EVENT_ID]), "status": "open",
        "cart_id": key, "detected_at": deadline,
        "evidence": list(dict.fromkeys(x[EVENT_ID] for x in episode)),
        "items": [[p, q, price] for p, (q, price) in sorted(items.items())],
        "value": round(sum(q * (price or 0.0) for q, price in items.values()), 2),
        "currency": currency, "resolved": False, "moved_at": max(moved) if moved else None,
    }


def upgraded(state: dict) -> dict:
    """The state as this version keeps it, whatever version stored it. Carts stored by an
    earlier one (one dict per open episode, judged eagerly) become touches: the episode's own
    for its evidence and times, its items as they stood; purchases were times only."""
    if "sent" not in state:  # stored before the list of sent deadlines existed
        last = state.pop("last_sent_at", None)
        state["sent"] = [] if last is None else [last]
    if state["purchases"] and isinstance(state["purchases"][0], int):  # times only, before
        state["purchases"] = [[t, t] for t in state["purchases"]]
    for key, cart in list(state["carts"].items()):
        if not isinstance(cart, dict):
            continue
        if cart.get("done") or cart.get("last_activity") is None:
            del state["carts"][key]
            continue
        moved, currency = cart.get("moved_at"), cart.get("currency")
        touches = [[t, event_id, "cart_view" if t <= cart["last_activity"] else "cart_remove",
                    None, None, None, currency, moved] for t, event_id in cart["evidence"]]
        first = [cart["first"], cart["first_event_id"]]
        touches += [[*first, "cart_add", p, q, price, currency, moved]
                    for p, (q, price) in cart["items"].items()]
        if cart["had_items"] and not cart["items"]:
            touches.append([*first, "cart_remove", "-", 0, None, currency, moved])
        state["carts"][key] = sorted(touches, key=_order)
    return state


def decided_at(alert: dict) -> int:
    """The event time an alert or resolution stands for, for its profile snapshot: its
    deadline (or the purchase that resolves it), or, for a cart or a purchase from a device's
    history claimed at a later login, that login: it became the customer's only then."""
    if alert["status"] == "resolved":
        at = max(alert["resolved_at"], alert.get("resolved_counts_at") or 0)
    else:
        at = alert["detected_at"]
    return max(at, alert.get("moved_at") or at)


def due_at(state: dict, rules: CartRules) -> int | None:
    """The event time after which `advance` has something to decide without new touches."""
    times = [episodes(touches, rules.delay_ms)[0][0] + rules.lateness_ms
             for touches in state["carts"].values()]
    for alert in state["alerts"]:
        if not alert["resolved"]:
            bought = _bought(state, alert["detected_at"],
                             alert["detected_at"] + rules.resolve_within_ms)
            if bought is not None:
                times.append(bought[0] + rules.lateness_ms)
    return min(times) if times else None


def _forget(state: dict, stream_time: int, rules: CartRules) -> None:
    """Drop what can no longer matter: old purchases, settled alerts."""
    horizon = stream_time - rules.resolve_within_ms - rules.lateness_ms
    state["purchases"] = [p for p in state["purchases"] if p[0] >= horizon]
    state["alerts"] = [a for a in state["alerts"]
                       if not a["resolved"] and a["detected_at"] >= horizon]
    state["sent"] = [t for t in state["sent"] if t >= horizon - rules.cap_ms]
