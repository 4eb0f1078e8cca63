"""The shared domain: the touch and the attributed message, as the stages exchange them."""

from __future__ import annotations

import orjson

from services.domain import attributed
from services.domain.touch import (
    AT,
    EVENT_ID,
    MOVED_AT,
    Touch,
    cart_fields,
    counts_at,
    moved_touch,
    touch_of,
)

T0 = 1_710_000_000_000


def record(kind: str, **fields: object) -> dict:
    return {"event_time": T0, "event_id": "e1", "event_type": kind, "channel": "web",
            "anonymous_id": "dev", **fields}


def test_a_touch_keeps_what_the_next_stages_need() -> None:
    purchase = touch_of(record("purchase", commerce={"value": 59.5, "currency": "EUR"}))
    assert Touch.of(purchase) == Touch(T0, "e1", "purchase", "web", 59.5, "dev", None)
    cart = touch_of(record("cart_add", commerce={"cart_id": "K1", "product_id": "P1",
                                                 "quantity": 2, "unit_price": 9.5,
                                                 "currency": "EUR", "value": 19.0}))
    assert cart[4] == 0.0  # only purchases and refunds carry a value
    assert cart_fields(cart[6]) == ("K1", "P1", 2, 9.5, "EUR")
    nps = touch_of(record("nps_response", properties={"score": 3}))
    assert nps[6] == {"score": 3}
    assert touch_of(record("opt_out", properties={"channel": "email"}))[6] == {"channel": "email"}
    assert touch_of(record("page_view", properties={"score": 3}))[6] is None


def test_cart_touches_written_before_the_rename_still_read() -> None:
    old = {"cart": "K1", "product": "P1", "qty": 2, "price": 9.5, "currency": "EUR"}
    assert cart_fields(old) == ("K1", "P1", 2, 9.5, "EUR")


def test_a_moved_touch_counts_from_its_login() -> None:
    touch = touch_of(record("page_view"))
    moved = moved_touch(touch, T0 + 5000)
    assert moved[:MOVED_AT] == touch and moved[MOVED_AT] == T0 + 5000
    assert counts_at(touch) == T0 and counts_at(moved) == T0 + 5000
    assert Touch.of(moved).moved_at == T0 + 5000 and Touch.of(touch).moved_at is None
    assert moved[AT] == T0 and moved[EVENT_ID] == "e1"


def decode(messages: list[bytes]) -> list[dict]:
    return [orjson.loads(m) for m in messages]


def test_a_batch_goes_out_in_bounded_messages_that_keep_a_customer_whole() -> None:
    touches = {f"C{i}": [[i, f"e{i}-{j}"] for j in range(i % 7 + 1)] for i in range(3000)}
    out = decode(list(attributed.encode(T0, touches, limit=500)))
    assert all(m["t"] == T0 and "e" not in m for m in out)
    assert all(sum(map(len, m["c"].values())) <= 500 for m in out)
    assert {k: v for m in out for k, v in m["c"].items()} == touches  # nothing lost, none split
    assert len(out) > 1


def test_only_a_batch_s_last_message_moves_event_time_on() -> None:
    touches = {f"C{i}": [[i, f"e{i}"]] for i in range(5)}
    out = decode(list(attributed.encode(T0 + 9, touches, ["X"], limit=2, held=T0)))
    assert [m["t"] for m in out] == [T0] * (len(out) - 1) + [T0 + 9]
    assert out[0]["e"] == ["X"] and len(out) == 4


def test_erasures_go_first_and_an_empty_batch_still_moves_time() -> None:
    assert decode(list(attributed.encode(T0, {}))) == [{"t": T0, "c": {}}]
    out = decode(list(attributed.encode(T0, {"C2": [[T0, "e1"]]}, ["C1"])))
    assert out == [{"t": T0, "c": {}, "e": ["C1"]}, {"t": T0, "c": {"C2": [[T0, "e1"]]}}]


def test_units_split_a_message_per_customer_and_keep_the_old_part() -> None:
    message = {"t": T0, "c": {"C1": [[T0, "a"]], "C2": [[T0, "b"]]}, "e": ["C3"],
               "l": {"C4": [[T0, "c"]]}}
    units = attributed.units(orjson.dumps(message))
    assert units == [{"t": T0, "c": {}, "e": ["C3"]}, {"t": T0, "c": {"C1": [[T0, "a"]]}},
                     {"t": T0, "c": {"C2": [[T0, "b"]]}},
                     {"t": T0, "c": {}, "l": {"C4": [[T0, "c"]]}}]
    seen = [(c, [x[1] for x in t]) for u in units for c, t in attributed.customer_touches(u)]
    assert seen == [("C1", ["a"]), ("C2", ["b"]), ("C4", ["c"])]
    assert list(attributed.event_ids(units)) == ["a", "b", "c"]
    assert attributed.units(orjson.dumps({"t": T0})) == [{"t": T0, "c": {}}]
    assert orjson.loads(attributed.unit_payload(units[1], b"whole")) == units[1]


def test_what_is_not_an_attributed_message_stays_whole() -> None:
    for value in (b"not json", b"[1, 2]", b'{"c": {}}', None):
        assert attributed.units(value) == [value]
        assert attributed.unit_payload(value, value) == (value or b"")
