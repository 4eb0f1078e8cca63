"""The touch: one touchpoint as the stages after the sessionizer see it.

Stored as a plain list, in this order:

    [at, event_id, event_type, channel, value, anonymous_id, extra(, moved_at)]

- `at`: event time (epoch ms);
- `value`: the order value of a purchase or a refund (`commerce.value`), else 0;
- `extra`: what the next stages need of the properties, or None: an NPS `score`, the
  `channel` of an opt-in or opt-out, or a cart touch's `cart_id`, `product_id`, `quantity`,
  `unit_price` and `currency`;
- `moved_at`: only on a device's touch handed to its customer at a later login: the login's
  event time (`counts_at`).

A list rather than a class because touches are what the stages' changelogs hold, by the
million: orjson writes a list as it is, a NamedTuple only through a per-object callback, and
reading a position costs no attribute lookup. `Touch` names the same layout for code (and
readers) that prefer names; `Touch.of(touch)` views a stored one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

AT, EVENT_ID, EVENT_TYPE, CHANNEL, VALUE, ANONYMOUS_ID, EXTRA, MOVED_AT = range(8)

PURCHASE, REFUND = "purchase", "refund"
CART_ADD, CART_REMOVE = "cart_add", "cart_remove"
#: What a cart's shopper does with it: the cart's activity, and taking items out.
CART_ACTIVITY = frozenset({CART_ADD, "cart_view", "checkout_start"})
CART_EVENTS = CART_ACTIVITY | {CART_REMOVE}


class Touch(NamedTuple):
    at: int
    event_id: str
    event_type: str
    channel: str
    value: float
    anonymous_id: str | None
    extra: dict[str, Any] | None
    moved_at: int | None = None

    @classmethod
    def of(cls, touch: list) -> Touch:
        return cls(*touch)


def touch_of(record: dict) -> list:
    """The touch of a Touchpoint record (schemas/touchpoint.avsc, `event_time` in epoch ms)."""
    kind = record["event_type"]
    commerce = record.get("commerce") or {}
    value = (commerce.get("value") or 0.0) if kind in (PURCHASE, REFUND) else 0.0
    extra = None
    properties = record.get("properties") or {}
    if kind == "nps_response" and isinstance(properties.get("score"), int | float):
        extra = {"score": properties["score"]}
    elif kind in ("opt_in", "opt_out") and properties.get("channel"):
        extra = {"channel": str(properties["channel"])}
    elif kind in CART_EVENTS and commerce:
        extra = {"cart_id": commerce.get("cart_id"), "product_id": commerce.get("product_id"),
                 "quantity": commerce.get("quantity"), "unit_price": commerce.get("unit_price"),
                 "currency": commerce.get("currency")}
    return [record["event_time"], record["event_id"], kind, record["channel"], value,
            record.get("anonymous_id"), extra]


def cart_fields(extra: dict) -> tuple:
    """(cart_id, product_id, quantity, unit_price, currency) of a cart touch's `extra`; reads
    the short keys (`cart`, `product`, `qty`, `price`) of touches written before 0.9 too."""
    if "cart_id" in extra or "product_id" in extra or "quantity" in extra:
        return (extra.get("cart_id"), extra.get("product_id"), extra.get("quantity"),
                extra.get("unit_price"), extra.get("currency"))
    return (extra.get("cart"), extra.get("product"), extra.get("qty"), extra.get("price"),
            extra.get("currency"))


def moved_touch(touch: list, login_time: int) -> list:
    """A device's touch attributed to its customer at a login at `login_time` (`MOVED_AT`)."""
    return [*touch, login_time]


def counts_at(touch: list) -> int:
    """When a touch counts for its customer's decisions (churn risk, carts): its event time,
    or, for a device's touch that became the customer's at a later login, the login's time.
    So where a device's history lands among the customer's own touches depends on the events
    only, not on how long the hand-over took."""
    return max(touch[AT], touch[MOVED_AT]) if len(touch) > MOVED_AT else touch[AT]
