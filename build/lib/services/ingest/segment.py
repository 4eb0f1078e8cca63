"""Segment's HTTP Tracking API mapped to touchpoints (pure). RudderStack's SDKs speak it too.

A message (`track`, `identify`, `page`, `screen`, `alias`, `group`) becomes one Kizuna event:

- `messageId` -> `event_id`; `userId` -> `customer_id`; `anonymousId` -> `anonymous_id`.
  `alias` links `previousId` to `userId` (an `identify` touch carrying both).
- `originalTimestamp` (else `timestamp`) -> `occurred_at`, and `sentAt` (the message's, else
  the batch's) -> `sent_at`: the collector corrects the client's clock as Segment does.
- `track`: the event name through the shipped map (`segment_events.yaml`, extended with
  KIZUNA_SEGMENT_EVENTS_FILE), else its snake_case. `page` -> `page_view`, `screen` ->
  `screen_view`, `identify` and `alias` -> `identify`, `group` -> `group`.
- The channel: the write key's, when its source sends one channel only; else from the
  message: iOS/Android or a mobile library -> `app`, a browser (user agent, page context,
  browser library) -> `web`, otherwise `other`.
- Properties (and for `identify`, traits, top-level or in `context.traits` as RudderStack
  sends them) are flattened: nested objects with dotted keys (`address.city`), arrays as JSON
  text, nulls dropped. PII names (KIZUNA_PII_PROPERTIES) among them are hashed by validation.
- Commerce (spec v2): `cart_id`, `order_id`, `product_id` (else `sku`), `quantity`, `price` ->
  `unit_price`, `revenue`/`total`/`value` -> `value`, `currency`. An order's `products[]`
  give `product_ids` (comma-separated) and `product_count` properties, and the product when
  there is one.

A message that cannot be mapped is passed on as far as it goes, and validation names what is
wrong (a missing `messageId` is a missing `event_id`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import ConfigError

EVENTS_FILE = Path(__file__).with_name("segment_events.yaml")
TYPES = ("track", "identify", "page", "screen", "alias", "group")
FIXED_TYPES = {"page": "page_view", "screen": "screen_view", "identify": "identify",
               "alias": "identify", "group": "group"}
MOBILE_OS = ("ios", "ipados", "android", "tvos", "watchos")
MOBILE_LIBRARIES = ("ios", "android", "react-native", "flutter", "swift", "kotlin", "xamarin")
BROWSER_LIBRARIES = ("analytics.js", "analytics-next", "rudder-analytics", "rudderstack-js",
                     "rudder-js")
COMMERCE_KEYS = ("cart_id", "order_id", "product_id", "sku", "quantity", "price", "revenue",
                 "total", "value", "currency", "products")
NOT_AN_ID = re.compile(r"[^a-z0-9]+")
MAX_FLAT_KEYS = 200


@cache
def event_map(extra_file: str = "") -> dict[str, str]:
    """Track event names -> event_type: the shipped map, then `extra_file`'s entries."""
    names = dict(_read(EVENTS_FILE))
    if extra_file:
        try:
            names.update(_read(Path(extra_file)))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"KIZUNA_SEGMENT_EVENTS_FILE: {exc}") from None
    return names


def _read(path: Path) -> dict[str, str]:
    data = yaml.safe_load(path.read_text()) or {}
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in events.items()):
        raise ValueError(f"{path}: expected `events:` mapping track names to event types")
    return events


def snake_case(name: str) -> str:
    """`Coupon Applied` -> `coupon_applied`: an event_type the contract accepts."""
    text = NOT_AN_ID.sub("_", name.strip().lower()).strip("_")
    if not text or not text[0].isalpha():
        text = "e_" + text
    return text[:64].rstrip("_")


def messages_of(payload: object, kind: str | None) -> tuple[list[object], object]:
    """The messages of a body: `/v1/batch` (`kind` None) has `{"batch": [...]}`, the others
    one message of their type. Also the batch's `sentAt` (None if absent)."""
    if kind is None:
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            return [], None
        return payload["batch"], payload.get("sentAt")
    if isinstance(payload, dict):
        payload.setdefault("type", kind)
    return [payload], None


def to_event(message: object, names: Mapping[str, str], pinned_channel: str | None,
             batch_sent_at: object = None) -> object:
    """A Kizuna event of a Segment message (or the message itself, when it is no object)."""
    if not isinstance(message, dict):
        return message
    kind = message.get("type")
    if kind not in TYPES:
        # validation refuses it: the event_type names the type it does not know
        return {"event_id": message.get("messageId"),
                "event_type": f"unknown Segment type {str(kind)[:30]!r}"}
    context = message.get("context") if isinstance(message.get("context"), dict) else {}
    properties: dict[str, Any] = {}
    event_type = FIXED_TYPES.get(kind)
    customer_id, anonymous_id = _id(message.get("userId")), _id(message.get("anonymousId"))
    if kind == "track":
        name = message.get("event")
        event_type = names.get(name) or snake_case(name) if isinstance(name, str) and \
            name.strip() else None
        if isinstance(name, str):
            properties["event"] = name[:256]
    elif kind == "alias":
        anonymous_id = _id(message.get("previousId"))
    elif kind == "group":
        properties["group_id"] = _id(message.get("groupId"))
    elif kind in ("page", "screen"):
        for key in ("name", "category"):
            if isinstance(message.get(key), str):
                properties[key] = message[key][:256]
    source = message.get("properties")
    raw = dict(source) if isinstance(source, dict) else {}
    if kind in ("identify", "group"):
        traits = message.get("traits")
        if not isinstance(traits, dict):
            traits = context.get("traits") if isinstance(context.get("traits"), dict) else {}
        raw.update(traits)
    commerce = _commerce(raw, properties)
    flatten(raw, "", properties, COMMERCE_KEYS)
    event = {
        "event_id": message.get("messageId"),
        "event_type": event_type,
        "channel": pinned_channel or channel_of(message, context),
        "occurred_at": message.get("originalTimestamp") or message.get("timestamp"),
        "sent_at": message.get("sentAt") or batch_sent_at,
        "customer_id": customer_id,
        "anonymous_id": anonymous_id,
        "properties": {k: v for k, v in properties.items() if v is not None},
        "context": _context(context),
    }
    if commerce:
        event["commerce"] = commerce
    return {k: v for k, v in event.items() if v is not None}


def channel_of(message: Mapping, context: Mapping) -> str:
    """`app`, `web` or `other`, from what the library says of where it runs."""
    declared = str(message.get("channel") or context.get("channel") or "").lower()
    os_name = str(_get(context, "os", "name") or "").lower()
    device = str(_get(context, "device", "type") or "").lower()
    library = str(_get(context, "library", "name") or "").lower()
    if declared == "mobile" or os_name in MOBILE_OS or device in MOBILE_OS \
            or any(name in library for name in MOBILE_LIBRARIES):
        return "app"
    if declared in ("browser", "web") or context.get("userAgent") \
            or isinstance(context.get("page"), dict) \
            or any(name in library for name in BROWSER_LIBRARIES):
        return "web"
    if message.get("type") == "screen":
        return "app"
    return "web" if message.get("type") == "page" else "other"


def _get(obj: Mapping, *path: str) -> object:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _id(value: object) -> str | None:
    """Segment ids may be numbers; Kizuna's are strings."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _commerce(props: Mapping, properties: dict) -> dict | None:
    """Spec v2 commerce properties -> Kizuna's `commerce`, or None when there are none; an
    order's products also as `product_count` and `product_ids` in `properties`."""
    products = props.get("products") if isinstance(props.get("products"), list) else []
    products = [p for p in products if isinstance(p, dict)]
    one = products[0] if len(products) == 1 else props
    product_id = _id(one.get("product_id")) or _id(one.get("sku"))
    quantity = _number(one.get("quantity"))
    price = _number(one.get("price"))
    value = next((v for v in (_number(props.get(k)) for k in ("value", "revenue", "total"))
                  if v is not None), None)
    if value is None and price is not None and not products:
        value = price * (quantity if quantity is not None else 1)
    commerce = {
        "cart_id": _id(props.get("cart_id")), "order_id": _id(props.get("order_id")),
        "product_id": product_id,
        "quantity": int(quantity) if quantity is not None and quantity.is_integer() else None,
        "unit_price": price, "value": value,
        "currency": props.get("currency") if isinstance(props.get("currency"), str) else None,
    }
    if products:
        ids = [i for i in (_id(p.get("product_id")) or _id(p.get("sku")) for p in products) if i]
        properties["product_count"] = len(products)
        if ids:
            properties["product_ids"] = ",".join(ids)[:1024]
    if all(v is None for v in commerce.values()):
        return None
    return commerce


def flatten(obj: Mapping, prefix: str, out: dict, skip: tuple[str, ...] = ()) -> None:
    for key, value in obj.items():
        if not isinstance(key, str) or (not prefix and key in skip) or len(out) >= MAX_FLAT_KEYS:
            continue
        name = prefix + key
        if isinstance(value, dict):
            flatten(value, name + ".", out)
        elif isinstance(value, list):
            out[name] = json.dumps(value, separators=(",", ":"), default=str)[:1024]
        elif isinstance(value, str | int | float | bool):
            out[name] = value[:1024] if isinstance(value, str) else value


def _context(context: Mapping) -> dict:
    """What of Segment's context Kizuna keeps: where the touch came from, never the address
    or the traits."""
    kept = {
        "library": _get(context, "library", "name"),
        "library_version": _get(context, "library", "version"),
        "campaign": _get(context, "campaign", "name"),
        "campaign_source": _get(context, "campaign", "source"),
        "campaign_medium": _get(context, "campaign", "medium"),
        "device": _get(context, "device", "type"),
        "os": _get(context, "os", "name"),
        "app_version": _get(context, "app", "version"),
        "page_path": _get(context, "page", "path"),
        "referrer": _get(context, "page", "referrer"),
        "locale": context.get("locale"),
    }
    return {k: v[:256] for k, v in kept.items() if isinstance(v, str) and v}
