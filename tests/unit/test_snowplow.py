"""Snowplow tracker-protocol events mapped to Kizuna events (pure)."""

import base64
import json

from services.ingest.segment import event_map
from services.ingest.snowplow import events_of, to_event
from services.ingest.validation import Enrichment, validate

NAMES = event_map()
RECEIVED = 1_710_000_010_000


def sp(**fields):
    return {"eid": "4f9a-1", "p": "web", "aid": "shop", "tv": "py-1.1.0", "duid": "d-1",
            "dtm": "1710000000000", "stm": "1710000005000", **fields}


def self_describing(name, data, encoded=True):
    envelope = json.dumps({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/"
                                     "jsonschema/1-0-0",
                           "data": {"schema": f"iglu:com.acme/{name}/jsonschema/1-0-0",
                                    "data": data}})
    if encoded:
        return {"ue_px": base64.urlsafe_b64encode(envelope.encode()).decode().rstrip("=")}
    return {"ue_pr": envelope}


def test_a_page_view_with_the_device_clock_corrected():
    event = to_event(sp(e="pv", url="https://shop.example/p/1", page="P1"), NAMES, None)
    record = validate(event, Enrichment("s", RECEIVED))
    assert (record["event_type"], record["channel"], record["anonymous_id"]) == \
        ("page_view", "web", "d-1")
    assert record["event_time"] == RECEIVED - 5_000  # sent 5 s after, by the device's clock
    assert record["properties"] == {"url": "https://shop.example/p/1", "title": "P1"}


def test_a_true_timestamp_is_taken_as_it_is():
    record = validate(to_event(sp(e="pv", url="u", ttm="1700000000000"), NAMES, None),
                      Enrichment("s", RECEIVED))
    assert record["event_time"] == 1_700_000_000_000 and record["sent_at"] is None


def test_transactions_items_and_carts_carry_commerce():
    order = to_event(sp(e="tr", tr_id="O1", tr_tt="59.8", tr_cu="EUR", uid="C1"), NAMES, None)
    assert order["event_type"] == "purchase" and order["customer_id"] == "C1"
    assert order["commerce"] == {"order_id": "O1", "value": 59.8, "currency": "EUR"}
    item = to_event(sp(e="ti", ti_id="O1", ti_sk="P1", ti_pr="19.9", ti_qu="2"), NAMES, None)
    assert item["event_type"] == "order_item"
    assert item["commerce"] == {"order_id": "O1", "product_id": "P1", "unit_price": 19.9,
                                "quantity": 2}
    for encoded in (True, False):
        cart = to_event(sp(e="ue", **self_describing(
            "add_to_cart", {"sku": "P1", "quantity": 2, "unitPrice": 19.9, "currency": "EUR"},
            encoded)), NAMES, None)
        assert cart["event_type"] == "cart_add"
        assert cart["commerce"] == {"product_id": "P1", "quantity": 2, "unit_price": 19.9,
                                    "currency": "EUR", "value": 39.8}


def test_structured_and_other_self_describing_events_are_named_from_the_event():
    assert to_event(sp(e="se", se_ca="shop", se_ac="Product Added"), NAMES, None)[
        "event_type"] == "cart_add"
    assert to_event(sp(e="se", se_ca="video", se_ac="play-start"), NAMES, None)[
        "event_type"] == "play_start"
    clicked = to_event(sp(e="ue", **self_describing("link_click", {"targetUrl": "x"})),
                       NAMES, None)
    assert clicked["event_type"] == "link_click"
    assert clicked["properties"] == {"schema": "link_click", "targetUrl": "x"}


def test_platform_gives_the_channel_unless_the_app_pins_it():
    assert to_event(sp(e="pv", url="u", p="mob"), NAMES, None)["channel"] == "app"
    assert to_event(sp(e="pv", url="u", p="srv"), NAMES, None)["channel"] == "other"
    assert to_event(sp(e="pv", url="u", p="mob"), NAMES, "pos")["channel"] == "pos"


def test_what_cannot_be_mapped_is_refused_with_a_reason():
    def reason(event):
        result = validate(to_event(event, NAMES, None), Enrichment("s", RECEIVED))
        return result.reason, result.field
    assert reason(sp(e="zz")) == ("invalid_format", "event_type")
    assert reason(sp(e="ue", ue_px="!!!")) == ("invalid_format", "event_type")
    assert reason({**sp(e="pv"), "eid": None}) == ("missing_field", "event_id")
    assert events_of({"schema": "x", "data": "nope"}) == []
