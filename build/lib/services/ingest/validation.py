"""Touchpoint validation and enrichment: pure functions, no I/O (contract sections 1 and 2).

`validate` turns one parsed JSON value into a touchpoint record ready for Avro, or a
`Rejection` naming the field and the rule it broke. It never raises on any input.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

CHANNELS = frozenset({"web", "app", "email", "pos", "support", "social", "other"})
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# RFC 3339 with a mandatory offset ("Z" or +hh:mm); fractional seconds allowed.
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
TOP_LEVEL = frozenset({
    "event_id", "event_type", "channel", "occurred_at", "sent_at", "customer_id",
    "anonymous_id", "properties", "commerce", "context",
})
COMMERCE_STRINGS = ("cart_id", "order_id", "product_id", "currency")
COMMERCE_NUMBERS = ("unit_price", "value")
MAX_ID = 128
MAX_MAP_ENTRIES = 100
MAX_KEY = 128
MAX_STRING_VALUE = 4096
#: A numeric epoch below this is seconds, not milliseconds (10^11 ms is 1973-03-03; 10^11 s is
#: the year 5138). RFC 3339 times are taken from 1970 on, whatever their age.
MIN_EPOCH_MS = 10**11
MAX_MS = 32_503_680_000_000  # year 3000
MAX_FUTURE_MS = 24 * 3600 * 1000  # tolerated clock skew into the future
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Rejection:
    reason: str  # reason code: missing_field, invalid_type, invalid_value, ...
    field: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "field": self.field, "detail": self.detail}

    def describe(self) -> str:
        """One line for a dead letter's `detail`: the field, then the rule."""
        return f"{self.field}: {self.detail}" if self.field else self.detail


@dataclass(frozen=True)
class Enrichment:
    """What the collector adds: where and when the event arrived, how to treat PII."""

    source: str
    received_at_ms: int
    allowed_channels: frozenset[str] | None = None  # None: any channel
    pii_properties: frozenset[str] = frozenset()
    pii_salt: str = ""
    #: Correct the client's clock with `sent_at` (contract section 2). Off for imports: a file
    #: does not hold the time its events were first received, which the correction needs.
    skew_correction: bool = True


class _Invalid(Exception):
    def __init__(self, reason: str, field: str, detail: str) -> None:
        self.rejection = Rejection(reason, field, detail)


def validate(event: object, enrich: Enrichment) -> dict | Rejection:
    """A touchpoint record (Avro-ready, epoch-ms timestamps), or why not."""
    try:
        return _validate(event, enrich)
    except _Invalid as bad:
        return bad.rejection
    except RecursionError:
        return Rejection("invalid_type", "", "nesting too deep")


def _validate(event: object, enrich: Enrichment) -> dict:
    if not isinstance(event, dict):
        raise _Invalid("invalid_type", "", f"an event is a JSON object, got {_kind(event)}")
    unknown = sorted(k for k in event if k not in TOP_LEVEL)
    if unknown:
        raise _Invalid("unknown_field", str(unknown[0])[:64],
                       f"unknown top-level field {str(unknown[0])[:64]!r}")
    event_id = _string(event, "event_id", required=True, max_len=MAX_ID)
    event_type = _string(event, "event_type", required=True, max_len=64)
    if not EVENT_TYPE.match(event_type):
        raise _Invalid("invalid_format", "event_type",
                       f"{event_type[:64]!r} does not match ^[a-z][a-z0-9_]{{0,63}}$")
    channel = _string(event, "channel", required=True, max_len=16)
    if channel not in CHANNELS:
        raise _Invalid("invalid_value", "channel",
                       f"{channel[:16]!r} is not one of {', '.join(sorted(CHANNELS))}")
    if enrich.allowed_channels is not None and channel not in enrich.allowed_channels:
        raise _Invalid("channel_not_allowed", "channel",
                       f"source {enrich.source!r} may not send channel {channel!r}")
    customer_id = _string(event, "customer_id", max_len=MAX_ID)
    anonymous_id = _string(event, "anonymous_id", max_len=MAX_ID)
    if customer_id is None and anonymous_id is None:
        raise _Invalid("missing_identity", "customer_id",
                       "at least one of customer_id and anonymous_id is required")
    occurred_at = _timestamp(event, "occurred_at", required=True)
    sent_at = _timestamp(event, "sent_at")
    received_at = enrich.received_at_ms
    # Clock-skew correction (contract section 2), as Snowplow's derived_tstamp.
    event_time = occurred_at if sent_at is None or not enrich.skew_correction \
        else received_at - (sent_at - occurred_at)
    if event_time == occurred_at and occurred_at > received_at + MAX_FUTURE_MS:
        raise _Invalid("invalid_value", "occurred_at", "more than 24 h in the future")
    if not 0 <= event_time <= received_at + MAX_FUTURE_MS:  # sent_at before occurred_at...
        raise _Invalid("invalid_value", "sent_at",
                       f"occurred_at corrected by sent_at ({event_time} ms) is "
                       + ("before 1970" if event_time < 0 else "more than 24 h in the future"))
    properties = _flat_map(event, "properties")
    for key in enrich.pii_properties:
        if key in properties:
            properties[key] = pii_hash(str(properties[key]), enrich.pii_salt)
    return {
        "event_id": event_id,
        "event_type": event_type,
        "channel": channel,
        "occurred_at": occurred_at,
        "sent_at": sent_at,
        "received_at": received_at,
        "event_time": event_time,
        "customer_id": customer_id,
        "anonymous_id": anonymous_id,
        "source": enrich.source,
        "properties": properties,
        "commerce": _commerce(event.get("commerce")),
        "context": _flat_map(event, "context"),
    }


def parse_instant(value: str | int, name: str) -> int:
    """Epoch milliseconds of an RFC 3339 instant (with offset) or epoch ms; ValueError if not."""
    try:
        return _timestamp({name: value}, name, required=True)
    except _Invalid as bad:
        raise ValueError(bad.rejection.detail) from None


def pii_hash(value: str, salt: str) -> str:
    """Salted SHA-256 of a normalised PII value; the same person hashes the same everywhere."""
    return hashlib.sha256((salt + value.strip().lower()).encode()).hexdigest()


class PiiRedactor:
    """Hashes the PII properties inside raw bytes that are kept as evidence (a dead letter's
    payload), the way validation hashes them in a touchpoint: any `"email": "..."` (or number)
    in the text, whether or not the rest of it parses, so a rejected event never carries the
    raw value to Kafka or ClickHouse."""

    def __init__(self, names: frozenset[str], salt: str) -> None:
        self.salt = salt
        keys = b"|".join(re.escape(name.encode()) for name in sorted(names))
        self.pattern = re.compile(
            rb'("(?:' + keys + rb')"\s*:\s*)(?:"((?:[^"\\]|\\.)*)"|(-?\d[\d.eE+-]*))'
        ) if names else None

    def __call__(self, payload: bytes) -> bytes:
        if self.pattern is None or not payload:
            return payload
        return self.pattern.sub(self._hashed, payload)

    def _hashed(self, match: re.Match) -> bytes:
        text, number = match.group(2), match.group(3)
        if text is not None:
            try:
                value = json.loads(b'"' + text + b'"')
            except ValueError:
                value = text.decode(errors="replace")
        else:
            value = number.decode()
        return match.group(1) + b'"' + pii_hash(str(value), self.salt).encode() + b'"'


def profile_id(record: Mapping) -> str:
    """The Kafka key: the customer when known, else the device."""
    return record["customer_id"] or record["anonymous_id"]


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _string(obj: Mapping, field: str, *, required: bool = False, max_len: int,
            prefix: str = "") -> str | None:
    value = obj.get(field)
    name = prefix + field
    if value is None:
        if required:
            raise _Invalid("missing_field", name, f"{name} is required")
        return None
    if not isinstance(value, str):
        raise _Invalid("invalid_type", name, f"{name} must be a string, got {_kind(value)}")
    if not value or len(value) > max_len:
        raise _Invalid("invalid_value", name, f"{name} must be 1-{max_len} characters")
    return value


def _timestamp(obj: Mapping, field: str, *, required: bool = False) -> int | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise _Invalid("missing_field", field, f"{field} is required")
        return None
    if isinstance(value, bool):
        raise _Invalid("invalid_type", field, f"{field} must be RFC 3339 or epoch milliseconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value != int(value):
            raise _Invalid("invalid_value", field, f"{field}: epoch milliseconds are integers")
        ms = int(value)
        if 0 <= ms < MIN_EPOCH_MS:
            raise _Invalid("invalid_value", field,
                           f"{field}: {ms} looks like epoch seconds; give epoch milliseconds "
                           "or an RFC 3339 time")
    elif isinstance(value, str):
        if not RFC3339.match(value):
            raise _Invalid("invalid_format", field,
                           f"{field}: {value[:40]!r} is not RFC 3339 with an offset")
        try:
            parsed = dt.datetime.fromisoformat(_trim_fraction(value.replace("z", "Z")))
        except ValueError:
            raise _Invalid("invalid_value", field, f"{field}: {value[:40]!r} is not a date") \
                from None
        ms = (parsed - EPOCH) // dt.timedelta(milliseconds=1)
    else:
        raise _Invalid("invalid_type", field, f"{field} must be RFC 3339 or epoch milliseconds")
    if ms < 0:
        raise _Invalid("invalid_value", field, f"{field}: {ms} is before 1970-01-01")
    if ms > MAX_MS:
        raise _Invalid("invalid_value", field, f"{field}: {ms} is too far in the future")
    return ms


def _trim_fraction(value: str) -> str:
    """Python parses at most 6 fractional digits; RFC 3339 allows more."""
    match = re.search(r"\.(\d+)", value)
    if match and len(match[1]) > 6:
        value = value[: match.start(1) + 6] + value[match.end(1):]
    return value


def _flat_map(obj: Mapping, field: str) -> dict:
    value = obj.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid("invalid_type", field, f"{field} must be an object, got {_kind(value)}")
    if len(value) > MAX_MAP_ENTRIES:
        raise _Invalid("invalid_value", field, f"{field} has more than {MAX_MAP_ENTRIES} entries")
    out = {}
    for key, item in value.items():
        name = f"{field}.{key[:64]}"
        if len(key) > MAX_KEY:
            raise _Invalid("invalid_value", name, f"keys are at most {MAX_KEY} characters")
        if isinstance(item, str):
            if len(item) > MAX_STRING_VALUE:
                raise _Invalid("invalid_value", name, f"at most {MAX_STRING_VALUE} characters")
        elif isinstance(item, bool):
            pass
        elif isinstance(item, int):
            if not -(2**63) <= item < 2**63:
                raise _Invalid("invalid_value", name, "integer out of 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _Invalid("invalid_value", name, "numbers must be finite")
        else:
            raise _Invalid("invalid_type", name,
                           f"values are strings, numbers or booleans, got {_kind(item)}")
        out[key] = item
    return out


def _commerce(value: object) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid("invalid_type", "commerce",
                       f"commerce must be an object, got {_kind(value)}")
    unknown = sorted(k for k in value if k not in (*COMMERCE_STRINGS, *COMMERCE_NUMBERS,
                                                   "quantity"))
    if unknown:
        raise _Invalid("unknown_field", f"commerce.{str(unknown[0])[:64]}",
                       f"unknown commerce field {str(unknown[0])[:64]!r}")
    out: dict[str, object] = {
        name: _string(value, name, max_len=MAX_ID, prefix="commerce.") for name in COMMERCE_STRINGS
    }
    for name in COMMERCE_NUMBERS:
        number = value.get(name)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int | float)
                                   or not math.isfinite(number)):
            raise _Invalid("invalid_type", f"commerce.{name}", f"commerce.{name} must be a number")
        out[name] = None if number is None else float(number)
    quantity = value.get("quantity")
    if quantity is not None:
        if isinstance(quantity, bool) or not isinstance(quantity, int | float) \
                or not math.isfinite(quantity) or quantity != int(quantity) \
                or not -(2**63) <= quantity < 2**63:
            raise _Invalid("invalid_type", "commerce.quantity",
                           "commerce.quantity must be an integer")
        quantity = int(quantity)
    out["quantity"] = quantity
    return out
