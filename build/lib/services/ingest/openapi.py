"""The collector's OpenAPI document, served at /openapi.json."""

_ERROR = {"type": "object", "properties": {"error": {"type": "string"},
                                           "detail": {"type": "string"}}}
_ACCEPTED = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "rejected": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "event_id": {"type": ["string", "null"]},
            "reason": {"type": "string"}, "field": {"type": "string"},
            "detail": {"type": "string"}}}},
    },
}
_EVENT = {
    "type": "object",
    "required": ["event_id", "event_type", "channel", "occurred_at"],
    "properties": {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 128},
        "event_type": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
        "channel": {"enum": ["web", "app", "email", "pos", "support", "social", "other"]},
        "occurred_at": {"oneOf": [{"type": "string", "format": "date-time"},
                                  {"type": "integer"}]},
        "sent_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]},
        "customer_id": {"type": "string", "maxLength": 128},
        "anonymous_id": {"type": "string", "maxLength": 128},
        "properties": {"type": "object", "additionalProperties": {
            "type": ["string", "number", "boolean"]}},
        "commerce": {"type": "object"},
        "context": {"type": "object", "additionalProperties": {
            "type": ["string", "number", "boolean"]}},
    },
    "additionalProperties": False,
}


_SEGMENT_MESSAGE = {
    "type": "object",
    "description": "A message of Segment's HTTP Tracking API (docs/sending-events.md)",
    "required": ["messageId"],
    "properties": {
        "type": {"enum": ["track", "identify", "page", "screen", "alias", "group"]},
        "messageId": {"type": "string"}, "userId": {"type": ["string", "number"]},
        "anonymousId": {"type": "string"}, "previousId": {"type": "string"},
        "event": {"type": "string"}, "properties": {"type": "object"},
        "traits": {"type": "object"}, "context": {"type": "object"},
        "timestamp": {"type": "string", "format": "date-time"},
        "originalTimestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
    },
}


def _segment(summary: str, schema: dict) -> dict:
    responses = _responses("Kafka holds every accepted event; rejections listed", "200")
    return {"post": {
        "summary": summary, "security": [{"segmentWriteKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": responses}}


def _responses(ok: str, status: str = "202") -> dict:
    return {
        status: {"description": ok, "content": {"application/json": {"schema": _ACCEPTED}}},
        "400": {"description": "body is not JSON, or not an event or batch",
                "content": {"application/json": {"schema": _ERROR}}},
        "401": {"description": "missing or unknown key / bad signature",
                "content": {"application/json": {"schema": _ERROR}}},
        "413": {"description": "event, batch or body too large",
                "content": {"application/json": {"schema": _ERROR}}},
        "429": {"description": "source over its rate; see Retry-After"},
        "503": {"description": "Kafka did not acknowledge; retry after Retry-After"},
    }


OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Kizuna collector", "version": "1"},
    "components": {"securitySchemes": {
        "writeKey": {"type": "http", "scheme": "bearer"},
        "segmentWriteKey": {"type": "http", "scheme": "basic",
                            "description": "the write key as user, empty password (or "
                                           "`writeKey` in the body)"}}},
    "paths": {
        "/v1/events": {"post": {
            "summary": "One touchpoint or a batch {\"events\": [...]}; JSON, optionally gzip",
            "security": [{"writeKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [_EVENT, {"type": "object", "required": ["events"], "properties": {
                    "events": {"type": "array", "maxItems": 1000, "items": _EVENT}}}]}}}},
            "responses": _responses("Kafka holds every accepted event; rejections listed"),
        }},
        "/v1/webhooks/email/{provider}": {"post": {
            "summary": "Email provider events: sendgrid (ECDSA-signed Event Webhook), mailgun "
                       "(HMAC in the body, tokens never reused), postmark (Basic auth), or "
                       "any other name: the generic format, Kizuna-Signature: "
                       "v1=HMAC-SHA256(secret, Kizuna-Timestamp + '.' + body)",
            "parameters": [{"name": "provider", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": _responses("Kafka holds every accepted event"),
        }},
        "/v1/batch": _segment(
            "Segment's batch: {\"batch\": [messages], \"sentAt\"}; gzip allowed",
            {"type": "object", "required": ["batch"], "properties": {
                "batch": {"type": "array", "maxItems": 1000, "items": _SEGMENT_MESSAGE},
                "sentAt": {"type": "string", "format": "date-time"},
                "writeKey": {"type": "string"}}}),
        **{f"/v1/{kind}": _segment(f"Segment's {kind} call: one message", _SEGMENT_MESSAGE)
           for kind in ("track", "identify", "page", "screen", "alias", "group")},
        "/healthz": {"get": {"responses": {"200": {"description": "process alive"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "Kafka reachable"},
                                          "503": {"description": "Kafka unreachable"}}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus metrics"}}}},
    },
}
