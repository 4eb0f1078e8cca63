"""Email service provider webhooks mapped to touchpoints (pure).

The generic format, one JSON array or {"events": [...]}, each item:
    {"event": "delivered|open|click|unsubscribe|bounce|spam_report",
     "message_id": "m-1", "timestamp": 1710325412 (unix seconds) or RFC 3339,
     "customer_id": "C1" (optional), "email": "a@b.example" (optional, hashed),
     "campaign": "spring" (optional), "url": "https://..." (clicks, optional)}
An item that cannot be mapped is passed on as-is, so validation rejects it with a reason.
"""

from __future__ import annotations

from services.ingest.validation import pii_hash

EVENT_TYPES = {
    "sent": "email_send", "delivered": "email_send", "open": "email_open",
    "click": "email_click", "unsubscribe": "email_unsubscribe", "bounce": "email_bounce",
    "spam_report": "email_spam_report",
}


def to_touchpoints(payload: object, provider: str, salt: str) -> list[object]:
    items = payload.get("events") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        items = [payload]
    return [_map(item, provider, salt) for item in items]


def _map(item: object, provider: str, salt: str) -> object:
    if not isinstance(item, dict) or item.get("event") not in EVENT_TYPES \
            or not isinstance(item.get("message_id"), str):
        return item  # validation names what is wrong
    event = item["event"]
    timestamp = item.get("timestamp")
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        timestamp = int(timestamp * 1000)
    email = item.get("email")
    properties = {"message_id": item["message_id"]}
    if isinstance(item.get("url"), str):
        properties["url"] = item["url"]
    touchpoint = {
        "event_id": f"{provider}:{item['message_id']}:{event}"
                    + (f":{item['url']}" if event == "click" and "url" in properties else ""),
        "event_type": EVENT_TYPES[event],
        "channel": "email",
        "occurred_at": timestamp,
        "customer_id": item.get("customer_id"),
        # The address itself never enters Kafka: a salted hash identifies the recipient.
        "anonymous_id": f"email:{pii_hash(email, salt)[:32]}" if isinstance(email, str) else None,
        "properties": properties,
    }
    if isinstance(item.get("campaign"), str):
        touchpoint["context"] = {"campaign": item["campaign"]}
    return touchpoint
