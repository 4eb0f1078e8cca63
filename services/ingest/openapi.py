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


def _responses(ok: str) -> dict:
    return {
        "202": {"description": ok, "content": {"application/json": {"schema": _ACCEPTED}}},
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
    "components": {"securitySchemes": {"writeKey": {"type": "http", "scheme": "bearer"}}},
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
            "summary": "Email provider events, signed: Kizuna-Signature: v1=HMAC-SHA256("
                       "secret, Kizuna-Timestamp + '.' + body)",
            "parameters": [{"name": "provider", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": _responses("Kafka holds every accepted event"),
        }},
        "/healthz": {"get": {"responses": {"200": {"description": "process alive"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "Kafka reachable"},
                                          "503": {"description": "Kafka unreachable"}}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus metrics"}}}},
    },
}
