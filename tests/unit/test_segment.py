"""Segment's Tracking API messages mapped to Kizuna events (pure)."""

from services.ingest.segment import channel_of, event_map, messages_of, snake_case, to_event
from services.ingest.validation import Enrichment, validate

NAMES = event_map()
RECEIVED = 1_710_000_010_000


def track(event, properties=None, **extra):
    return {"type": "track", "event": event, "messageId": "m-1", "userId": "C1",
            "anonymousId": "dev-1", "timestamp": "2024-03-09T16:00:00.000Z",
            "properties": properties or {}, **extra}


def test_an_order_completed_with_products_is_a_purchase_with_its_commerce():
    event = to_event(track("Order Completed", {
        "order_id": "O9", "total": 59.8, "revenue": 50.0, "currency": "EUR",
        "products": [{"product_id": "P1", "price": 19.9, "quantity": 1},
                     {"sku": "S-2", "price": 39.9, "quantity": 1}],
        "coupon": "SPRING", "shipping": {"method": "express", "cost": 4.9}}), NAMES, None)
    assert event["event_type"] == "purchase"
    assert event["commerce"] == {"cart_id": None, "order_id": "O9", "product_id": None,
                                 "quantity": None, "unit_price": None, "value": 50.0,
                                 "currency": "EUR"}
    assert event["properties"]["product_ids"] == "P1,S-2"
    assert event["properties"]["product_count"] == 2
    assert event["properties"]["shipping.method"] == "express"  # nested: dotted keys
    assert "products" not in event["properties"]
    record = validate(event, Enrichment("shop", RECEIVED))
    assert record["commerce"]["value"] == 50.0 and record["customer_id"] == "C1"


def test_a_product_added_is_a_cart_add_with_its_line():
    event = to_event(track("Product Added", {"cart_id": "K1", "product_id": 507, "sku": "x",
                                             "price": "19.5", "quantity": 2}), NAMES, None)
    assert event["event_type"] == "cart_add"
    assert event["commerce"] == {"cart_id": "K1", "order_id": None, "product_id": "507",
                                 "quantity": 2, "unit_price": 19.5, "value": 39.0,
                                 "currency": None}


def test_names_outside_the_map_become_snake_case_and_the_map_can_be_extended(tmp_path):
    assert to_event(track("Coupon Applied"), NAMES, None)["event_type"] == "coupon_applied"
    assert snake_case("  3D View!! ") == "e_3d_view"
    extra = tmp_path / "events.yaml"
    extra.write_text("events:\n  Coupon Applied: checkout_start\n")
    names = event_map(str(extra))
    assert to_event(track("Coupon Applied"), names, None)["event_type"] == "checkout_start"
    assert names["Product Added"] == "cart_add"  # the shipped map stays under it


def test_identify_takes_traits_from_either_place_and_alias_links_the_previous_id():
    top = to_event({"type": "identify", "messageId": "i1", "userId": 42,
                    "anonymousId": "d1", "timestamp": "2024-03-09T16:00:00Z",
                    "traits": {"email": "Ann@x.org", "plan": "gold"}}, NAMES, None)
    rudder = to_event({"type": "identify", "messageId": "i2", "userId": "42",
                       "anonymousId": "d1", "originalTimestamp": "2024-03-09T16:00:00Z",
                       "context": {"traits": {"email": "Ann@x.org"}}}, NAMES, None)
    for event in (top, rudder):
        assert event["event_type"] == "identify" and event["customer_id"] == "42"
        record = validate(event, Enrichment("s", RECEIVED, pii_properties=frozenset({"email"}),
                                            pii_salt="salt"))
        assert "Ann@x.org" not in str(record) and len(record["properties"]["email"]) == 64
    alias = to_event({"type": "alias", "messageId": "a1", "previousId": "d1", "userId": "42",
                      "timestamp": "2024-03-09T16:00:00Z"}, NAMES, None)
    assert (alias["event_type"], alias["customer_id"], alias["anonymous_id"]) == \
        ("identify", "42", "d1")


def test_times_feed_the_clock_skew_correction():
    # the client's clock is 60 s ahead: sent 10 s after the event, by its clock
    message = track("Product Viewed", originalTimestamp="2024-03-09T16:01:00Z",
                    timestamp="2024-03-09T16:00:59Z")
    messages, sent_at = messages_of({"batch": [message], "sentAt": "2024-03-09T16:01:10Z"},
                                    None)
    event = to_event(messages[0], NAMES, None, sent_at)
    assert event["occurred_at"] == "2024-03-09T16:01:00Z"
    record = validate(event, Enrichment("s", RECEIVED))
    assert record["event_time"] == RECEIVED - 10_000


def test_the_channel_comes_from_the_library_unless_the_key_pins_it():
    def channel(context, **message):
        return channel_of({"type": "track", **message}, context)
    assert channel({"os": {"name": "iOS"}}) == "app"
    assert channel({"library": {"name": "analytics-react-native"}}) == "app"
    assert channel({"userAgent": "Mozilla/5.0", "page": {"path": "/"}}) == "web"
    assert channel({"library": {"name": "analytics-python"}}) == "other"
    assert channel({}, channel="mobile") == "app"
    assert channel_of({"type": "page"}, {}) == "web"
    assert to_event(track("Product Viewed", context={"os": {"name": "Android"}}), NAMES,
                    "pos")["channel"] == "pos"


def test_what_cannot_be_mapped_is_refused_by_validation_with_a_reason():
    def reason(message):
        result = validate(to_event(message, NAMES, None), Enrichment("s", RECEIVED))
        return result.reason, result.field
    assert reason({"type": "track", "event": "X", "userId": "C",
                   "timestamp": "2024-03-09T16:00:00Z"}) == ("missing_field", "event_id")
    assert reason({"type": "track", "messageId": "m", "event": "X",
                   "timestamp": "2024-03-09T16:00:00Z"})[0] == "missing_identity"
    assert reason({"type": "nonsense", "messageId": "m"}) == ("invalid_format", "event_type")
    assert reason({"type": "track", "messageId": "m", "userId": "C",
                   "timestamp": "2024-03-09T16:00:00Z"}) == ("missing_field", "event_type")
