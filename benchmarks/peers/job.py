"""The job every peer runs, as plain functions: the gap sessions of a profile and the
customer's purchases. The peers' apps import it in their own virtualenv, so this module needs
only the standard library and fastavro.

The definitions are Kizuna's (docs/contract.md, section 2): a session is a profile's run of
touchpoints with no gap longer than 30 minutes, cut greedily from its first touch at 24
hours; touches are ordered by (event time, event_id). A customer's purchase count and revenue
net of refunds are the engagement profile's `purchase_count` and `total_revenue`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro

GAP_MS = 30 * 60 * 1000
MAX_LENGTH_MS = 24 * 3600 * 1000
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "touchpoint.avsc"
MONEY = ("purchase", "refund")


def _without_logical_types(schema):
    """The schema with timestamps read as the epoch milliseconds they are on the wire."""
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    return schema


class TouchpointDecoder:
    """Kizuna's raw-topic values without a registry (Avro single-object encoding: 0xC3 0x01,
    the 8-byte schema fingerprint, the datum) to dicts."""

    header = b"\xc3\x01"

    def __init__(self) -> None:
        self.schema = fastavro.parse_schema(
            _without_logical_types(json.loads(SCHEMA.read_text())))

    def __call__(self, data: bytes) -> dict:
        if data[:2] != self.header:
            raise ValueError("not an Avro single-object encoded touchpoint")
        return fastavro.schemaless_reader(io.BytesIO(data[10:]), self.schema, None)


def touch(record: dict) -> tuple:
    """(event time, event_id, event type, value): what a session and the purchases need."""
    kind = record["event_type"]
    value = ((record.get("commerce") or {}).get("value") or 0.0) if kind in MONEY else 0.0
    return (record["event_time"], record["event_id"], kind, value)


def pieces(touches: list[tuple]) -> list[list[tuple]]:
    """One gap session's touches cut into sessions of at most 24 h, greedily from the first:
    the peers' own code for what Kizuna's `sessions.pieces` does (they cannot import Kizuna;
    tests/unit/test_peers.py checks the two agree)."""
    touches = sorted(touches)
    out: list[list[tuple]] = []
    current: list[tuple] = []
    for t in touches:
        if current and t[0] - current[0][0] >= MAX_LENGTH_MS:
            out.append(current)
            current = []
        current.append(t)
    if current:
        out.append(current)
    return out


def session(profile: str, touches: list[tuple]) -> dict:
    """A session's summary, as compared across the peers."""
    purchases = [t for t in touches if t[2] == "purchase"]
    return {"profile_id": profile, "started_at": touches[0][0], "ended_at": touches[-1][0],
            "event_count": len(touches), "purchase_count": len(purchases),
            "revenue": round(sum(t[3] for t in purchases), 6)}


def sessions(profile: str, touches: list[tuple]) -> list[dict]:
    return [session(profile, p) for p in pieces(touches)]


def purchases(state: dict | None, t: tuple) -> dict:
    """A customer's purchase count and revenue net of refunds, after touch `t`."""
    state = state or {"purchase_count": 0, "revenue": 0.0, "refunds": 0.0}
    if t[2] == "purchase":
        state["purchase_count"] += 1
        state["revenue"] += t[3]
    elif t[2] == "refund":
        state["refunds"] += t[3]
    return state
