"""Realistic omnichannel customers, deterministic by seed, with the truth about them.

Each customer has a persona that decides what they do; the generator walks the days and emits
contract-format touchpoints (JSON dicts), sorted by time, plus some malformed events that must
land in the dead-letter table. The ground truth (personas, abandoned carts by the contract's
rule, churners and when) is computed from the generated events themselves.

| persona | behaviour |
|---|---|
| loyal | visits web and app most days, buys about every four days, opens and clicks emails |
| high_value | car or travel buyer: views, email opens, app use, support contacts; at most one |
|  | large purchase a month |
| bargain_hunter | many product views and cart adds, buys cheap, clicks campaign emails |
| email_only | only reacts to emails (opens, clicks), rarely buys on the web after a click |
| store_only | buys in stores (POS) with a loyalty card; loyalty points earned |
| cart_abandoner | fills carts on web or app and mostly leaves them |
| churner | engaged in the first half, then fading, ending with an unsubscribe or silence |
| detractor | support contacts, complaints, NPS 0-6 |
| (everyone) | answers an NPS survey now and then (2% of active days), in a persona's own range |
| credit_abandoner | starts credit applications and abandons them |

About a third of customers browse anonymously on a device before identifying (login), some
use a second device; email campaigns go out twice a week to everyone with an email address.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
ABANDONMENT_MS = 60 * MINUTE_MS  # the contract's default abandonment delay

PERSONAS = {  # persona -> share of customers
    "loyal": 0.15, "high_value": 0.08, "bargain_hunter": 0.12, "email_only": 0.12,
    "store_only": 0.10, "cart_abandoner": 0.15, "churner": 0.12, "detractor": 0.08,
    "credit_abandoner": 0.08,
}
# Visits by hour of day (evening peak) and weekday (busier weekends).
HOURS = [1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 6, 7, 6, 6, 6, 7, 8, 10, 11, 10, 8, 5, 2]
WEEKDAY = [1.0, 1.0, 1.0, 1.1, 1.2, 1.5, 1.4]
CART_TYPES = ("cart_add", "cart_view", "checkout_start")
NPS_RANGE = {"loyal": (8, 10), "high_value": (7, 10), "store_only": (7, 10),
             "bargain_hunter": (5, 9), "cart_abandoner": (4, 9), "churner": (3, 8),
             "credit_abandoner": (5, 9)}


@dataclass
class Customer:
    customer_id: str
    persona: str
    devices: list[str]
    identified_day: int  # before it, the first device browses anonymously
    churn_day: int | None = None
    counter: int = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.customer_id}-{self.counter}"


@dataclass
class Generated:
    events: list[dict]
    truth: dict
    malformed: int = 0
    customers: list[Customer] = field(default_factory=list)


def generate(customers: int, days: int, seed: int, start_ms: int,
             activity: float = 1.0) -> Generated:
    """`customers` over `days` from `start_ms`. `activity` scales how often each persona
    visits, buys in store, answers surveys and is in a campaign (1: a busy site, about 4
    touchpoints a customer a day; 0.02: about 25 a year, a retailer's long tail)."""
    rnd = random.Random(seed)
    names, weights = zip(*PERSONAS.items(), strict=True)
    people = []
    for n in range(customers):
        persona = rnd.choices(names, weights)[0]
        devices = [f"dev-{seed}-{n}-a"] + ([f"dev-{seed}-{n}-b"] if rnd.random() < 0.25 else [])
        identified = rnd.randint(0, days - 1) if rnd.random() < 0.35 else 0
        churn_day = rnd.randint(days // 3, 2 * days // 3) if persona == "churner" else None
        people.append(Customer(f"cust-{seed}-{n:05d}", persona, devices, identified, churn_day))
    events: list[dict] = []
    for person in people:
        events.extend(_life(person, days, start_ms, rnd, activity))
    for day in range(0, days, 3):  # campaigns: Mondays and Thursdays, roughly
        events.extend(_campaign(people, day, start_ms, rnd, activity))
    events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    malformed = _malformed(events, rnd)
    valid = [e for e in events if "_malformed" not in e]
    truth = {
        "personas": {p.customer_id: p.persona for p in people},
        "churners": {p.customer_id: start_ms + p.churn_day * DAY_MS
                     for p in people if p.churn_day is not None},
        "abandoned_carts": abandoned_carts(valid, start_ms + days * DAY_MS),
        "explicit_risk": explicit_risk(valid),
        "customers": customers, "days": days, "seed": seed,
    }
    for e in events:
        e.pop("_malformed", None)
    return Generated(events, truth, malformed, people)


def _at(rnd: random.Random, start_ms: int, day: int) -> int:
    hour = rnd.choices(range(24), HOURS)[0]
    return start_ms + day * DAY_MS + hour * HOUR_MS + rnd.randrange(HOUR_MS)


def _visits(rnd: random.Random, rate: float, day: int, start_ms: int) -> int:
    weekday = (start_ms // DAY_MS + day + 3) % 7  # 1970-01-01 was a Thursday
    expected = rate * WEEKDAY[weekday]
    return int(expected) + (rnd.random() < expected - int(expected))


def _life(p: Customer, days: int, start_ms: int, rnd: random.Random,
          activity: float = 1.0) -> Iterator[dict]:
    rates = {"loyal": 0.9, "high_value": 0.6, "bargain_hunter": 0.8, "email_only": 0.0,
             "store_only": 0.25, "cart_abandoner": 0.5, "churner": 0.8, "detractor": 0.4,
             "credit_abandoner": 0.4}
    for day in range(days):
        rate = rates[p.persona] * activity
        if p.churn_day is not None and day >= p.churn_day:
            rate *= max(0.0, 1 - (day - p.churn_day) / 5)  # fading, then silent
            if day == p.churn_day and rnd.random() < 0.6:
                yield _event(p, "email_unsubscribe", "email", _at(rnd, start_ms, day), day)
        for _ in range(_visits(rnd, rate, day, start_ms)):
            yield from _visit(p, day, _at(rnd, start_ms, day), rnd)
        if p.persona == "store_only" and rnd.random() < 0.12 * activity:
            t = _at(rnd, start_ms, day)
            yield _event(p, "purchase", "pos", t, day,
                         commerce={"order_id": p.next_id(), "value": _price(rnd, 20, 150),
                                   "currency": "EUR"},
                         context={"store_id": f"S{rnd.randint(1, 30)}"})
            yield _event(p, "loyalty_points_earned", "pos", t + 1000, day)
        # Satisfaction surveys: every persona answers now and then, each in its own range.
        low, high = NPS_RANGE.get(p.persona, (5, 10))
        if p.persona != "detractor" and rate > 0 and rnd.random() < 0.02 * activity:
            yield _event(p, "nps_response", "email", _at(rnd, start_ms, day), day,
                         properties={"score": rnd.randint(low, high)})
        if p.persona == "high_value" and day % 30 == rnd.randint(10, 29):
            t = _at(rnd, start_ms, day)
            yield _event(p, "purchase", rnd.choice(["web", "pos"]), t, day,
                         commerce={"order_id": p.next_id(), "value": _price(rnd, 5000, 40000),
                                   "currency": "EUR"})


def _visit(p: Customer, day: int, t: int, rnd: random.Random) -> Iterator[dict]:
    channel = rnd.choice(["web", "web", "app"])
    pages = rnd.randint(2, 8)
    for i in range(pages):
        t += rnd.randint(20, 240) * 1000
        yield _event(p, "product_view" if i % 2 else "page_view", channel, t, day,
                     properties={"page": f"/p/{rnd.randint(1, 500)}"})
    persona = p.persona
    if persona == "high_value" and rnd.random() < 0.2:
        yield _event(p, "support_contact", "support", t + 60_000, day)
    if persona == "detractor" and rnd.random() < 0.25:
        yield _event(p, rnd.choice(["complaint", "support_contact"]), "support", t + 60_000, day)
        if rnd.random() < 0.5:
            yield _event(p, "nps_response", "email", t + 120_000, day,
                         properties={"score": rnd.randint(0, 6)})
    if persona == "credit_abandoner" and rnd.random() < 0.3:
        yield _event(p, "credit_application_start", channel, t + 30_000, day)
        yield _event(p, "credit_application_abandoned", channel, t + 900_000, day)
    wants_cart = {"loyal": 0.35, "bargain_hunter": 0.6, "cart_abandoner": 0.8, "churner": 0.3,
                  "high_value": 0.05, "detractor": 0.2, "credit_abandoner": 0.2}.get(persona, 0)
    if rnd.random() >= wants_cart:
        return
    cart = p.next_id()
    price = _price(rnd, 5, 40) if persona == "bargain_hunter" else _price(rnd, 15, 200)
    for _ in range(rnd.randint(1, 3)):
        t += rnd.randint(30, 300) * 1000
        yield _event(p, "cart_add", channel, t, day, commerce={
            "cart_id": cart, "product_id": f"P{rnd.randint(1, 500)}", "quantity": 1,
            "unit_price": price, "currency": "EUR"})
    buys = {"loyal": 0.8, "bargain_hunter": 0.6, "cart_abandoner": 0.1, "churner": 0.5,
            "detractor": 0.4, "credit_abandoner": 0.5, "high_value": 0.5}[persona]
    if rnd.random() < buys:
        t += rnd.randint(60, 600) * 1000
        yield _event(p, "checkout_start", channel, t, day, commerce={"cart_id": cart})
        # Sometimes the order is completed in the store, later the same day.
        where = "pos" if rnd.random() < 0.1 else channel
        t += (rnd.randint(10, 50) * MINUTE_MS) if where == "pos" else rnd.randint(60, 300) * 1000
        yield _event(p, "purchase", where, t, day, commerce={
            "cart_id": cart, "order_id": p.next_id(), "value": round(price * 1.0, 2),
            "currency": "EUR"})


def _campaign(people: list[Customer], day: int, start_ms: int,
              rnd: random.Random, activity: float = 1.0) -> Iterator[dict]:
    send = start_ms + day * DAY_MS + 9 * HOUR_MS
    for p in people:
        if p.persona == "store_only" or (p.churn_day is not None and day > p.churn_day):
            continue
        if activity < 1 and rnd.random() >= activity:  # not in this campaign's audience
            continue
        yield _event(p, "email_send", "email", send, day, identified=True,
                     properties={"campaign": f"c{day}"})
        engaged = {"email_only": 0.6, "loyal": 0.5, "bargain_hunter": 0.5,
                   "churner": 0.4 if p.churn_day and day < p.churn_day else 0.05}.get(p.persona,
                                                                                     0.25)
        if rnd.random() < 0.01:
            yield _event(p, "email_bounce", "email", send + 60_000, day, identified=True)
            continue
        if rnd.random() < engaged:
            t = send + rnd.randint(5, 600) * MINUTE_MS
            yield _event(p, "email_open", "email", t, day, identified=True)
            if rnd.random() < engaged:
                yield _event(p, "email_click", "email", t + 30_000, day, identified=True)
                if p.persona == "email_only" and rnd.random() < 0.15:
                    yield _event(p, "purchase", "web", t + 20 * MINUTE_MS, day, identified=True,
                                 commerce={"order_id": p.next_id(), "value": _price(rnd, 20, 90),
                                           "currency": "EUR"})
        elif rnd.random() < 0.003:
            yield _event(p, "email_unsubscribe", "email", send + HOUR_MS, day, identified=True)


def _event(p: Customer, kind: str, channel: str, t: int, day: int, *, identified: bool = False,
           properties: dict | None = None, commerce: dict | None = None,
           context: dict | None = None) -> dict:
    e = {"event_id": p.next_id(), "event_type": kind, "channel": channel, "occurred_at": t}
    anonymous = not identified and channel in ("web", "app") and day < p.identified_day
    if anonymous:
        e["anonymous_id"] = p.devices[0]
    else:
        e["customer_id"] = p.customer_id
        if channel in ("web", "app"):
            e["anonymous_id"] = p.devices[(day // 2) % len(p.devices)]  # devices alternate
    if properties:
        e["properties"] = properties
    if commerce:
        e["commerce"] = commerce
    if context:
        e["context"] = context
    return e


def _price(rnd: random.Random, low: float, high: float) -> float:
    return round(rnd.uniform(low, high), 2)


def _malformed(events: list[dict], rnd: random.Random) -> int:
    """About 0.5% of events broken the ways real clients break them."""
    count = 0
    for e in events:
        if rnd.random() >= 0.005:
            continue
        count += 1
        e["_malformed"] = True
        damage = rnd.randrange(4)
        if damage == 0:
            e.pop("event_type")
        elif damage == 1:
            e["channel"] = "fax"
        elif damage == 2:
            e["occurred_at"] = "yesterday"
        else:
            e.pop("customer_id", None)
            e.pop("anonymous_id", None)
    return count


#: What a customer says or does to show they may leave (contract section 2, churn risk).
RISK_SIGNALS = ("email_unsubscribe", "email_spam_report", "complaint",
                "credit_application_abandoned", "subscription_cancel_request", "app_uninstall")


def explicit_risk(events: list[dict]) -> dict[str, int]:
    """Customer -> the time of their first explicit risk signal (an NPS of 0-6 included)."""
    owner = {}
    for e in events:
        if e.get("customer_id") and e.get("anonymous_id"):
            owner.setdefault(e["anonymous_id"], e["customer_id"])
    out: dict[str, int] = {}
    for e in events:
        detractor = (e["event_type"] == "nps_response"
                     and (e.get("properties") or {}).get("score", 10) <= 6)
        if e["event_type"] not in RISK_SIGNALS and not detractor:
            continue
        customer = e.get("customer_id") or owner.get(e.get("anonymous_id"))
        if customer is not None:
            out[customer] = min(out.get(customer, e["occurred_at"]), e["occurred_at"])
    return out


def abandoned_carts(events: list[dict], end_ms: int) -> list[dict]:
    """The contract's rule, on the whole log: per customer and cart, an episode of cart
    activity with no purchase by the same customer within the delay after its last cart
    activity (the implicit cart when no cart_id), counted only when something was added since
    the customer's last purchase (a purchase empties the cart: a receipt page is no
    abandonment). Anonymous carts of a device that identifies belong to its customer; those
    of devices that never identify are not counted."""
    owner = {}
    for e in events:
        if e.get("customer_id") and e.get("anonymous_id"):
            owner.setdefault(e["anonymous_id"], e["customer_id"])
    carts: dict[tuple[str, str], list[int]] = {}  # (customer, cart) -> cart_add and activity
    purchases: dict[str, list[int]] = {}
    for e in events:
        customer = e.get("customer_id") or owner.get(e.get("anonymous_id"))
        if customer is None:
            continue
        if e["event_type"] in CART_TYPES:
            cart = (e.get("commerce") or {}).get("cart_id") or f"implicit:{customer}"
            times = carts.setdefault((customer, cart), [0, 0])
            times[1] = max(times[1], e["occurred_at"])
            if e["event_type"] == "cart_add":
                times[0] = max(times[0], e["occurred_at"])
        elif e["event_type"] == "purchase":
            purchases.setdefault(customer, []).append(e["occurred_at"])
    out = []
    for (customer, cart), (added, last) in sorted(carts.items()):
        if last + ABANDONMENT_MS > end_ms or not added:
            continue  # not due by the end of the log, or never filled
        bought = purchases.get(customer, ())
        if any(last <= t <= last + ABANDONMENT_MS for t in bought):
            continue
        if any(added < t < last for t in bought):
            continue  # emptied by a purchase since the last thing added
        out.append({"customer_id": customer, "cart_id": cart, "last_activity_at": last})
    return out
