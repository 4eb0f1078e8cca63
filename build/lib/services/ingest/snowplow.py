"""Snowplow's tracker protocol mapped to touchpoints (pure).

`POST /com.snowplowanalytics.snowplow/tp2` carries `{"schema": ".../payload_data/...",
"data": [event, ...]}`; `GET /i` one event as query parameters. An event is a map of short
names (values are strings):

- `eid` -> `event_id`; `uid` -> `customer_id`; `duid` (the domain user id), else `nuid` /
  `tnuid` (network user id) -> `anonymous_id`.
- `dtm` (created, device clock) -> `occurred_at` and `stm` (sent, device clock) -> `sent_at`:
  the collector corrects the clock skew as Snowplow's `derived_tstamp` does. A `ttm` (true
  timestamp) is taken as it is.
- `e`: `pv` page view -> `page_view`; `pp` page ping -> `page_ping`; `se` structured event ->
  its action (`se_ac`) through the Segment map, else snake_case; `tr` transaction ->
  `purchase`; `ti` transaction item -> `order_item`; `ue` self-describing event -> its schema's
  name (`add_to_cart` -> `cart_add`, `remove_from_cart` -> `cart_remove`, `screen_view` ->
  `screen_view`, others their own name), its data flattened into properties.
- The channel: the app's source's when it sends one channel; else the platform `p`: `web`
  -> `web`; `mob`, `app`, `tv`, `cnsl`, `iot` -> `app`; `pc`, `srv` -> `other`.

Snowplow has no write key. The collector knows each tracker by its app id (`aid`):
KIZUNA_SNOWPLOW_APPS maps app ids to a source and its channels; an event of an unknown app id
is refused (the request gets 401, nothing is produced), and each source has its rate limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from services.ingest.segment import flatten, snake_case

EVENT_TYPES = {"pv": "page_view", "pp": "page_ping", "tr": "purchase", "ti": "order_item"}
#: Self-describing events: the schema's name -> Kizuna's event_type (others: their name).
SELF_DESCRIBING = {
    "add_to_cart": "cart_add", "remove_from_cart": "cart_remove", "screen_view": "screen_view",
    "site_search": "search", "application_install": "app_install",
    "application_foreground": "app_open", "link_click": "link_click",
}
APP_PLATFORMS = ("mob", "app", "tv", "cnsl", "iot")
PAYLOAD_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/"


def events_of(payload: object) -> list[object]:
    """The events of a tp2 body; a body of another shape gives none (the caller says so)."""
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        return payload["data"]
    return []


def channel_of(event: Mapping) -> str:
    platform = event.get("p")
    if platform == "web":
        return "web"
    return "app" if platform in APP_PLATFORMS else "other"


def to_event(event: object, names: Mapping[str, str], pinned_channel: str | None) -> object:
    """A Kizuna event of a Snowplow event (or the event itself, when it is no object)."""
    if not isinstance(event, dict):
        return event
    kind = event.get("e")
    properties: dict = {}
    commerce: dict = {}
    event_type = EVENT_TYPES.get(kind)
    if kind == "pv" or kind == "pp":
        _copy(event, properties, {"url": "url", "page": "title", "refr": "referrer"})
    elif kind == "se":
        action = event.get("se_ac")
        event_type = (names.get(action) or snake_case(action)) \
            if isinstance(action, str) and action.strip() else None
        _copy(event, properties, {"se_ca": "category", "se_ac": "action", "se_la": "label",
                                  "se_pr": "property", "se_va": "value"})
    elif kind == "tr":
        commerce = {"order_id": event.get("tr_id"), "value": _number(event.get("tr_tt")),
                    "currency": event.get("tr_cu")}
        _copy(event, properties, {"tr_af": "affiliation", "tr_tx": "tax", "tr_sh": "shipping",
                                  "tr_ci": "city", "tr_co": "country"})
    elif kind == "ti":
        commerce = {"order_id": event.get("ti_id"), "product_id": event.get("ti_sk"),
                    "unit_price": _number(event.get("ti_pr")),
                    "quantity": _integer(event.get("ti_qu")), "currency": event.get("ti_cu")}
        _copy(event, properties, {"ti_nm": "name", "ti_ca": "category"})
    elif kind == "ue":
        name, data = _self_describing(event)
        if name is not None:
            event_type = SELF_DESCRIBING.get(name) or snake_case(name)
            properties["schema"] = name
            flatten(data, "", properties)
            if name in ("add_to_cart", "remove_from_cart"):
                quantity, price = _integer(data.get("quantity")), _number(data.get("unitPrice"))
                commerce = {"product_id": data.get("sku"), "quantity": quantity,
                            "unit_price": price, "currency": data.get("currency"),
                            "value": price * quantity if price is not None and quantity
                            else None}
    if event_type is None:
        event_type = f"unknown Snowplow event {str(kind)[:20]!r}"  # validation refuses it
    true_time = _integer(event.get("ttm"))
    out = {
        "event_id": event.get("eid"),
        "event_type": event_type,
        "channel": pinned_channel or channel_of(event),
        "occurred_at": true_time if true_time is not None else _integer(event.get("dtm")),
        "sent_at": None if true_time is not None else _integer(event.get("stm")),
        "customer_id": event.get("uid") or None,
        "anonymous_id": event.get("duid") or event.get("nuid") or event.get("tnuid") or None,
        "properties": properties,
        "context": {k: v for k, v in (("app_id", event.get("aid")),
                                      ("tracker", event.get("tv")),
                                      ("namespace", event.get("tna")),
                                      ("platform", event.get("p")))
                    if isinstance(v, str) and v},
    }
    commerce = {k: v for k, v in commerce.items() if v is not None}
    if commerce:
        out["commerce"] = commerce
    return {k: v for k, v in out.items() if v is not None}


def _copy(event: Mapping, properties: dict, names: Mapping[str, str]) -> None:
    for short, name in names.items():
        value = event.get(short)
        if isinstance(value, str) and value:
            properties[name] = value[:1024]


def _integer(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        return None


def _self_describing(event: Mapping) -> tuple[str | None, dict]:
    """The inner event's schema name (`iglu:vendor/NAME/jsonschema/1-0-0`) and data, from
    `ue_pr` (JSON) or `ue_px` (base64url JSON)."""
    text = event.get("ue_pr")
    if not isinstance(text, str) and isinstance(event.get("ue_px"), str):
        encoded = event["ue_px"]
        try:
            text = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None, {}
    try:
        envelope = json.loads(text) if isinstance(text, str) else None
    except (json.JSONDecodeError, RecursionError):
        return None, {}
    inner = envelope.get("data") if isinstance(envelope, dict) else None
    schema = inner.get("schema") if isinstance(inner, dict) else None
    data = inner.get("data") if isinstance(inner, dict) else None
    if not isinstance(schema, str) or not schema.startswith("iglu:") or schema.count("/") < 3:
        return None, {}
    return schema.split("/")[1], data if isinstance(data, dict) else {}
