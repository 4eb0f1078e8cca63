"""Cart abandonment (contract section 2), pure: a customer's carts, purchases and alerts.

The rule. A cart is one `cart_id`, or the customer's implicit cart. Its content comes from
`cart_add` and `cart_remove`. A purchase by the customer, on any channel, converts every cart
and empties it. An *episode* opens with a `cart_add`, or with a `cart_view` /
`checkout_start` on a cart that still holds items (after an alert, say); a view or checkout
on an empty cart opens nothing. Each activity (`cart_add`, `cart_view`, `checkout_start`)
moves the episode's deadline to the abandonment delay after it. The episode ends:
- with a purchase up to its deadline: converted, nothing raised;
- with the cart emptied by removals: nothing raised;
- at its deadline otherwise: abandoned, an alert (after which the cart still holds its items).
At most one alert per customer per cap window (default 24 h): a capped episode is counted,
not sent. A purchase after an alert resolves it (same `alert_id`, status `resolved`).

Event time. The decisions are a function of the touches: each cart keeps its touches, and
`advance` judges, from what is kept, every episode whose deadline plus the allowed lateness
event time has passed, then reconciles those decisions with the ones recorded before. In
order, nothing changes a decision once made. A touch later than that (a store's receipts
uploaded at night, a backfill of history) makes `advance` judge again:
- a decision that is new is sent if it is at most the correction horizon (default 7 days)
  behind the partition's event time, and otherwise recorded as `historical`, never sent;
- a decision already sent is never sent again or moved: if the late touches now say it
  would not have been raised (a purchase in time that arrived late, a cart emptied), it is
  resolved with the reason `late_purchase` or `late_correction`;
- a historical decision follows the touches: re-recorded when it changes, `withdrawn` when
  it no longer stands.
A cart keeps its touches for `retain_ms` (8 days) behind its customer's newest cart touch or
purchase, and behind the last one that arrived (so a backfill, which arrives in event-time
order, keeps the stretch it is working through).

State is JSON-ready (the stage's changelog stores it).
"""

from __future__ import annotations

import hashlib
from bisect import insort
from dataclasses import dataclass
from typing import TypedDict

from services.domain.eventtime import DAY_MS, DEVICE_HISTORY_MS, HOUR_MS, MINUTE_MS
from services.domain.touch import (
    AT,
    CART_ACTIVITY,
    CART_ADD,
    CART_EVENTS,
    CART_REMOVE,
    EVENT_ID,
    EVENT_TYPE,
    MOVED_AT,
    PURCHASE,
)

IMPLICIT = "implicit"
#: A cart's touch as stored: [at, event_id, event_type, product_id, quantity, unit_price,
#: currency, moved_at]. `at`, `event_id`, `event_type` and `moved_at` (None unless a login
#: claimed it) sit where a touch has them (services.domain.touch); the cart's own fields take
#: the places of a touch's channel, value, anonymous_id and extra.
PRODUCT_ID, QUANTITY, UNIT_PRICE, CURRENCY = 3, 4, 5, 6
#: Statuses of a recorded decision. The first two are published on the alert topic.
OPEN, RESOLVED, HISTORICAL, WITHDRAWN = "open", "resolved", "historical", "withdrawn"
SENT = frozenset({OPEN, RESOLVED})


@dataclass(frozen=True)
class CartRules:
    delay_ms: int = 60 * MINUTE_MS
    cap_ms: int = 24 * HOUR_MS
    lateness_ms: int = 10 * MINUTE_MS
    resolve_within_ms: int = 7 * DAY_MS  # a purchase this long after an alert resolves it
    #: A decision further than this behind the partition's event time is recorded, not sent.
    horizon_ms: int = 7 * DAY_MS

    #: How long after a device's cart its login can claim it (the sessionizer's device history).
    claim_ms: int = DEVICE_HISTORY_MS

    @property
    def retain_ms(self) -> int:
        """How long a cart's judged touches are kept to judge again with late ones."""
        return self.resolve_within_ms + self.cap_ms + self.lateness_ms


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


class CartState(TypedDict, total=False):
    """A customer's carts as alerting keeps them (JSON, in the stage's changelog). Settings
    are not stored: each call takes the rules. Older layouts are read by `upgrade.py`."""

    carts: dict[str, list[list]]  # cart -> its touches kept, in event-time order
    bases: dict[str, list]  # cart -> what it held before its first kept touch, and when
    purchases: list[list]  # [time, counts_at, event_id], in time order
    alerts: list[dict]  # the decisions recorded
    sent: list[int]  # deadlines of sent alerts pruned since (they still count for the cap)
    capped: int  # episodes the cap kept from being sent
    capped_ids: list[str]
    judged: int | None  # event time the episodes were judged up to
    arrived: int | None  # the time of the last touch that came
    rejudge: list[str]  # carts whose episodes may have changed ("*": every one)
    next: dict[str, int | None]  # per cart judged since: when its next episode can be judged
    stale: int  # a touch came before `judged`: judge again once event time passes this
    due: list[int | None]  # `due_at`, kept until a touch or a decision changes it


def new_state() -> CartState:
    return {"carts": {}, "bases": {}, "purchases": [], "alerts": [], "sent": [], "capped": 0,
            "capped_ids": [], "judged": None, "arrived": None}


def alert_id(customer: str, cart: str, first_event_id: str) -> str:
    digest = hashlib.sha256(f"cart\0{customer}\0{cart}\0{first_event_id}".encode()).hexdigest()
    return "a-" + digest[:24]


def add(state: CartState, touch: CartTouch, rules: CartRules) -> None:
    """Record one touch (a purchase, or a cart's); nothing is judged here (`advance`)."""
    if touch.event_type == PURCHASE:
        # with the time it counts for the customer from: a device's, claimed at a later
        # login, from the login (a resolution by it stands there, `decided_at`)
        if any(p[2] == touch.event_id for p in state["purchases"]):
            return  # redelivered
        insort(state["purchases"], [touch.t, max(touch.t, touch.moved_at or touch.t),
                                    touch.event_id])
        _changed(state, None)  # every cart's episodes
    elif touch.event_type in CART_EVENTS:
        touches = state["carts"].setdefault(touch.cart_id or IMPLICIT, [])
        if any(x[EVENT_ID] == touch.event_id for x in touches):
            return  # redelivered
        insort(touches, [touch.t, touch.event_id, touch.event_type, touch.product_id,
                         touch.quantity, touch.unit_price, touch.currency, touch.moved_at],
               key=_order)
        _changed(state, touch.cart_id or IMPLICIT)
    else:
        return
    state["arrived"] = touch.t
    state.pop("due", None)
    judged = state["judged"]
    # Episodes judged so far ended before `judged` minus the lateness; a touch after that
    # cannot belong to one of them (a touch after a deadline starts the next episode).
    if judged is not None and touch.t < judged - rules.lateness_ms:
        # it may change an episode judged already: judge again, as soon as event time allows
        # the touch (its own time plus the lateness), with everything judged so far
        due = touch.t + rules.lateness_ms
        state["stale"] = min(state.get("stale") or due, due)


def _changed(state: CartState, key: str | None) -> None:
    """A cart (None: every cart) to judge again at the next `judge`: its episodes may differ.
    `next` keeps, per cart judged since, the time its next episode can be judged."""
    rejudge = state.setdefault("rejudge", [])
    if key is None:
        state["rejudge"] = ["*"]
        state["next"] = {}
    elif "*" not in rejudge and key not in rejudge:
        rejudge.append(key)
    if key is not None:
        state.setdefault("next", {}).pop(key, None)


def _order(x: list) -> tuple[int, str]:
    return x[AT], x[EVENT_ID]


@dataclass
class Episode:
    """One episode of a cart, as the rule forms it."""

    cart: str
    touches: list[list]
    deadline: int
    outcome: str | None = None  # "abandoned", "converted", "emptied"; None: still open
    items: dict | None = None  # product -> [quantity, unit price], at its end
    currency: str | None = None


class _Content:
    """What a cart holds as its touches and the customer's purchases come in event time."""

    def __init__(self, base: list | None) -> None:
        items, stocked, currency = base[:3] if base else ({}, False, None)
        self.items: dict[str, list] = {k: list(v) for k, v in items.items()}
        self.stocked = stocked  # a cart_add since the last purchase or emptying
        self.currency = currency

    def bought(self) -> None:
        self.items, self.stocked = {}, False

    def take(self, x: list) -> bool:
        """Apply a cart touch; True when it emptied the cart."""
        kind, product = x[EVENT_TYPE], x[PRODUCT_ID]
        self.currency = x[CURRENCY] or self.currency
        if kind not in (CART_ADD, CART_REMOVE):
            return False
        had = bool(self.items)
        if product:
            item = self.items.setdefault(product, [0, x[UNIT_PRICE]])
            item[0] += (1 if kind == "cart_add" else -1) * (x[QUANTITY] or 1)
            if x[UNIT_PRICE] is not None:
                item[1] = x[UNIT_PRICE]
            if item[0] <= 0:
                del self.items[product]
        if kind == "cart_add":
            self.stocked = True
            return False
        if had and not self.items:
            self.stocked = False
            return True
        return False

    def base(self) -> list:
        return [{k: list(v) for k, v in self.items.items()}, self.stocked, self.currency]


def _timeline(touches: list[list], purchases: list[list]):
    """The cart's touches and the customer's purchases merged in event time: (time, touch or
    None for a purchase). At equal times a touch comes first (bought at that instant:
    converted)."""
    i = j = 0
    while i < len(touches) or j < len(purchases):
        if j < len(purchases) and (i == len(touches) or purchases[j][0] < touches[i][AT]):
            yield purchases[j][0], None
            j += 1
        else:
            yield touches[i][AT], touches[i]
            i += 1


def episodes(key: str, touches: list[list], purchases: list[list], delay_ms: int,
             base: list | None = None) -> list[Episode]:
    """A cart's episodes in event time, from its sorted touches, the customer's sorted
    purchases and what the cart held before them (`base`)."""
    out: list[Episode] = []
    content = _Content(base)
    if base and len(base) > 3:  # purchases before the cut are in the base already
        purchases = [p for p in purchases if p[0] >= base[3]]
    current: Episode | None = None
    for t, x in _timeline(touches, purchases):
        if current is not None and t > current.deadline:
            current.outcome, current.items = "abandoned", content.base()[0]
            current = None
        if x is None:  # a purchase converts the cart and empties it
            if current is not None:
                current.outcome = "converted"
                current = None
            content.bought()
            continue
        emptied = content.take(x)
        if emptied and current is not None:
            current.touches.append(x)
            current.outcome = "emptied"
            current = None
            continue
        kind = x[EVENT_TYPE]
        if current is None:
            if kind not in CART_ACTIVITY or not content.stocked:
                continue  # a view of an empty cart, or a removal: nothing to abandon
            current = Episode(key, [], x[AT] + delay_ms)
            out.append(current)
        current.touches.append(x)
        current.currency = content.currency
        if kind in CART_ACTIVITY:
            current.deadline = max(current.deadline, x[AT] + delay_ms)
    if current is not None:
        current.items = content.base()[0]
    return out


def _cart_episodes(state: CartState, key: str, rules: CartRules) -> list[Episode]:
    return episodes(key, state["carts"][key], state["purchases"], rules.delay_ms,
                    state["bases"].get(key))


def _same(alert: dict, decision: dict) -> bool:
    """The same situation: the same id, or the same cart with evidence in common (its first
    touch changed: an earlier one came late)."""
    return alert["alert_id"] == decision["alert_id"] or (
        alert["cart_id"] == decision["cart_id"] and alert["status"] != WITHDRAWN
        and not set(alert["evidence"]).isdisjoint(decision["evidence"]))


def _stands_at(episode: Episode) -> int:
    moved = [x[MOVED_AT] for x in episode.touches if x[MOVED_AT] is not None]
    return max([episode.deadline, *moved])


def judge(state: CartState, customer: str, until: int, rules: CartRules
          ) -> tuple[list[dict], set[str]]:
    """Every alert the kept touches give for the episodes event time `until` has judged
    (their deadline plus the allowed lateness before it), in deadline order, with the cap
    applied; an alert decided before stands in the cap. Only the carts whose episodes may
    have changed are formed again (a touch came, or event time reached one): the others'
    decisions are recorded already. Returns the alerts and the carts judged."""
    rejudge = state.get("rejudge", ["*"])
    nexts = state.setdefault("next", {})
    keys = {key for key in state["carts"] if "*" in rejudge or key in rejudge
            or key not in nexts or (nexts[key] is not None and nexts[key] < until)}
    if keys:  # historical decisions are formed again with them: they share the cap
        keys |= {a["cart_id"] or IMPLICIT for a in state["alerts"]
                 if a["status"] == HISTORICAL and (a["cart_id"] or IMPLICIT) in state["carts"]}
    ended = []
    for key in keys:
        pending = None
        for episode in _cart_episodes(state, key, rules):
            at = _stands_at(episode) + rules.lateness_ms
            if at >= until:  # not yet: its deadline, or the login that made it the customer's
                pending = at if pending is None else min(pending, at)
                continue
            if episode.outcome in (None, "abandoned"):
                ended.append(episode)
        nexts[key] = pending
    state["rejudge"] = []
    # In the order the decisions stand in event time: a cart from a device's history, claimed
    # at a later login, stands at the login (it was not the customer's before), so a cart of
    # their own judged meanwhile comes first in the cap, however the two arrived.
    candidates = []
    for episode in sorted(ended, key=lambda e: (_stands_at(e), e.deadline, e.cart)):
        items = episode.items or {}
        moved = [x[MOVED_AT] for x in episode.touches if x[MOVED_AT] is not None]
        candidates.append((episode, {
            "alert_id": alert_id(customer, episode.cart, episode.touches[0][EVENT_ID]),
            "cart_id": episode.cart, "detected_at": episode.deadline,
            "evidence": list(dict.fromkeys(x[EVENT_ID] for x in episode.touches)),
            "items": [[p, q, price] for p, (q, price) in sorted(items.items())],
            "value": round(sum(q * (price or 0.0) for q, price in items.values()), 2),
            "currency": episode.currency, "moved_at": max(moved) if moved else None,
            "start": episode.touches[0][AT],
        }))
    # The alerts decided before stand in the cap: a sent one whatever the touches say now,
    # and a historical one as decided, unless its episode is judged again here: then it
    # takes its place in the order above, as if its touches had come in order (a claimed
    # cart decided before a cart of the customer's own that came later gives way to it).
    sent = [a for a in state["alerts"] if a["status"] != WITHDRAWN and not (
        a["status"] == HISTORICAL and any(_same(a, d) for _, d in candidates))]
    accepted: list[int] = list(state["sent"])  # alerts whose records are forgotten
    decisions = []
    capped = state.setdefault("capped_ids", [])
    for episode, decision in candidates:
        itself = next((a for a in sent if _same(a, decision)), None)
        others = accepted + [a["detected_at"] for a in sent if a is not itself]
        # Within the cap of an alert before or after it: a device's cart claimed at login can
        # be older than an alert already sent.
        if itself is None and any(abs(episode.deadline - t) < rules.cap_ms for t in others):
            first = episode.touches[0][EVENT_ID]
            if first not in capped:  # counted once, not sent
                capped.append(first)
                state["capped"] += 1
            continue
        accepted.append(episode.deadline)
        decisions.append(decision)
    return decisions, keys


def advance(state: CartState, customer: str, until: int, rules: CartRules) -> list[dict]:
    """Judge what event time `until` allows, against what was decided before; returns the
    records to emit (the alert's fields, `status` and `version`): new alerts, resolutions,
    and corrections."""
    state.pop("due", None)
    judged = state["judged"]
    out: list[dict] = []
    if judged is None or until > judged or state.get("stale"):
        until = until if judged is None else max(until, judged)  # never less than before
        decisions, judged_carts = judge(state, customer, until, rules)
        out += _reconcile(state, decisions, judged_carts, rules)
        state["judged"] = until
        state.pop("stale", None)
    out += _resolutions(state, until, rules)
    _prune(state, rules)
    return out


def _reconcile(state: CartState, decisions: list[dict], judged_carts: set[str],
               rules: CartRules) -> list[dict]:
    kept = {x[EVENT_ID] for touches in state["carts"].values() for x in touches}
    out: list[dict] = []
    matched: list[dict] = []
    for decision in decisions:
        have = next((a for a in state["alerts"] if a["alert_id"] == decision["alert_id"]),
                    None) or next((a for a in state["alerts"]
                                   if all(a is not m for m in matched) and _same(a, decision)),
                                  None)
        if have is not None:
            matched.append(have)
            if have["status"] in (HISTORICAL, WITHDRAWN) and (
                    have["status"] == WITHDRAWN or _moved(have, decision)):
                out.append(_record(have, {**decision, "alert_id": have["alert_id"],
                                          "status": HISTORICAL, "resolved": False,
                                          "reasons": []}))
            continue
        record = {**decision, "status": OPEN, "resolved": False, "version": 1, "reasons": []}
        state["alerts"].append(record)
        matched.append(record)
        out.append(dict(record))
    for alert in state["alerts"]:
        if any(alert is m for m in matched) or kept.isdisjoint(alert["evidence"]) \
                or alert["cart_id"] not in judged_carts:
            continue  # standing, judged from touches no longer kept, or its cart unchanged
        if alert["status"] == OPEN and not alert["resolved"]:
            # Sent, and the touches no longer give it: a purchase in time that came late, or
            # a cart emptied. Never taken back: resolved, saying why.
            bought = _bought(state, alert["start"], alert["detected_at"])
            at = bought[0] if bought else alert["detected_at"]
            out.append(_record(alert, {
                "status": RESOLVED, "resolved": True, "resolved_at": at,
                "resolved_counts_at": bought[1] if bought else at,
                "reasons": ["late_purchase" if bought else "late_correction"]}))
        elif alert["status"] == HISTORICAL:
            out.append(_record(alert, {"status": WITHDRAWN}))
    return out


def _moved(have: dict, decision: dict) -> bool:
    return any(have.get(k) != decision[k] for k in ("detected_at", "evidence", "items", "value"))


def _record(alert: dict, changes: dict) -> dict:
    """`alert` with `changes` and the next version; a copy to emit."""
    alert.update(changes)
    alert["version"] += 1
    return dict(alert)


def _bought(state: CartState, after: int, until: int) -> list | None:
    """The first purchase (its time, the time it counts from) between the two times."""
    return next((p for p in state["purchases"] if after <= p[0] <= until), None)


def _resolutions(state: CartState, until: int, rules: CartRules) -> list[dict]:
    """Alerts resolved by a purchase after them, once event time is past the purchase. A
    historical decision records its resolution too (analysts' recovery rate), still
    historical."""
    out = []
    for alert in state["alerts"]:
        if alert["resolved"] or alert["status"] not in (OPEN, HISTORICAL):
            continue
        bought = _bought(state, alert["detected_at"],
                         alert["detected_at"] + rules.resolve_within_ms)
        if bought is not None and bought[0] + rules.lateness_ms < until:
            out.append(_record(alert, {
                "status": RESOLVED if alert["status"] == OPEN else HISTORICAL,
                "resolved": True, "resolved_at": bought[0], "resolved_counts_at": bought[1],
                "reasons": ["purchased_after_alert"]}))
    return out


def decided_at(alert: dict) -> int:
    """The event time an alert or resolution stands for, for its profile snapshot: its
    deadline (or the purchase that resolves it), or, for a cart or a purchase from a device's
    history claimed at a later login, that login: it became the customer's only then."""
    if alert.get("resolved_at") is not None and alert["resolved"]:
        at = max(alert["resolved_at"], alert.get("resolved_counts_at") or 0)
    else:
        at = alert["detected_at"]
    return max(at, alert.get("moved_at") or at)


def due_at(state: CartState, rules: CartRules) -> int | None:
    """The event time after which `advance` has something to decide without new touches.
    Kept in the state (`due`: [value]) until a touch or a decision changes it."""
    if "due" not in state:
        state["due"] = [_due_at(state, rules)]
    return state["due"][0]


def _due_at(state: CartState, rules: CartRules) -> int | None:
    judged = state["judged"]
    if state.get("stale"):
        return state["stale"]
    times = []
    nexts = state.get("next", {})
    rejudge = state.get("rejudge", ["*"])
    for key in state["carts"]:
        if key in nexts and "*" not in rejudge and key not in rejudge:
            if nexts[key] is not None:
                times.append(nexts[key])
            continue
        pending = [_stands_at(e) + rules.lateness_ms for e in _cart_episodes(state, key, rules)]
        pending = [at for at in pending if judged is None or at >= judged]
        if pending:
            times.append(min(pending))
    for alert in state["alerts"]:
        if not alert["resolved"] and alert["status"] in (OPEN, HISTORICAL):
            bought = _bought(state, alert["detected_at"],
                             alert["detected_at"] + rules.resolve_within_ms)
            if bought is not None:
                times.append(bought[0] + rules.lateness_ms)
    return min(times) if times else None


def _prune(state: CartState, rules: CartRules) -> None:
    """Drop what can no longer change a decision: everything before a cut `retain_ms` behind
    both the customer's newest cart touch or purchase and the last one that arrived, moved
    back so that no episode still open or not yet judged spans it. Each cart keeps what it
    held at the cut (`bases`). Recorded alerts stay while a purchase may still resolve them."""
    newest = max([p[0] for p in state["purchases"]]
                 + [touches[-1][AT] for touches in state["carts"].values() if touches],
                 default=None)
    judged = state["judged"]
    if newest is None or judged is None:
        return
    # Behind the newest touch, the last one that came (a backfill's stretch) and the event
    # time judged so far (touches can come ahead of it: a customer's own, while a device's
    # history claimed at a login is still on its way)
    cut = min(newest, judged, state["arrived"] if state["arrived"] is not None else newest) \
        - rules.retain_ms
    if not any(touches[0][AT] < cut for touches in state["carts"].values() if touches) \
            and not (state["purchases"] and state["purchases"][0][0] < cut - rules.claim_ms):
        _prune_alerts(state, cut, rules)  # nothing that old
        return
    for key in state["carts"]:
        for episode in _cart_episodes(state, key, rules):
            final = _stands_at(episode) + rules.lateness_ms < judged  # judged: ended
            if episode.deadline >= cut or not final:
                cut = min(cut, episode.touches[0][AT])
                break
    if not any(x[AT] < cut for touches in state["carts"].values() for x in touches) \
            and not any(p[0] < cut - rules.claim_ms for p in state["purchases"]):
        _prune_alerts(state, cut, rules)
        return
    for key, touches in list(state["carts"].items()):
        gone = [x for x in touches if x[AT] < cut]
        base = state["bases"].get(key)
        since = base[3] if base and len(base) > 3 else None
        content = _Content(base)
        for _, x in _timeline(gone, [p for p in state["purchases"] if p[0] < cut and (
                since is None or p[0] >= since)]):
            if x is None:
                content.bought()
            else:
                content.take(x)
        if content.stocked:  # what it still holds at the cut, for a later look at it
            state["bases"][key] = [*content.base(), cut]
        else:
            state["bases"].pop(key, None)
        state["carts"][key] = touches[len(gone):]
        if not state["carts"][key]:
            del state["carts"][key]
    # Purchases stay longer: a device's cart claimed at a later login (up to 30 days after)
    # is judged with the customer's purchases of its time.
    state["purchases"] = [p for p in state["purchases"] if p[0] >= cut - rules.claim_ms]
    kept = {x[EVENT_ID] for touches in state["carts"].values() for x in touches}
    state["capped_ids"] = [i for i in state["capped_ids"] if i in kept]
    if "next" in state:
        state["next"] = {k: v for k, v in state["next"].items() if k in state["carts"]}
    _prune_alerts(state, cut, rules, kept)


def _prune_alerts(state: CartState, cut: int, rules: CartRules,
                   kept: set[str] | None = None) -> None:
    """Drop recorded decisions whose touches are forgotten (before the cut) and that no
    purchase can resolve any more; their times stay for the cap as long as it reaches."""
    if kept is None:
        kept = {x[EVENT_ID] for touches in state["carts"].values() for x in touches}
    gone = [a for a in state["alerts"] if kept.isdisjoint(a["evidence"])
            and (a["resolved"] or a["status"] == WITHDRAWN or a["detected_at"] < cut)]
    if not gone:
        return
    state["sent"] = sorted(state["sent"] + [a["detected_at"] for a in gone
                                            if a["status"] != WITHDRAWN])
    state["sent"] = [t for t in state["sent"] if t >= cut - rules.claim_ms - rules.cap_ms]
    state["alerts"] = [a for a in state["alerts"] if all(a is not g for g in gone)]
