"""Event-time sessions of one profile: pure logic over plain data, no Kafka.

A profile's open state is a list of *runs*: its touches connected by gaps no longer than the
inactivity gap, sorted by (event time, event_id). A run is cut into sessions greedily from its
first touch: each session spans at most the maximum length. So the sessions are a function of
the set of touches, whatever order they came in: a late touch that bridges two runs merges
them, one before a run's start moves it, and the result is what sorting everything first
would have given. A session's id is derived from its first touch, so it is deterministic.

State is JSON-ready (lists and dicts) because it is what the stage's changelog stores. A touch
is the domain's (`services.domain.touch`).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass

from services.domain.eventtime import HOUR_MS, MINUTE_MS
from services.domain.touch import (
    ANONYMOUS_ID,
    AT,
    CHANNEL,
    EVENT_ID,
    EVENT_TYPE,
    PURCHASE,
    VALUE,
    counts_at,
)

OPEN, CLOSED, MERGED = "open", "closed", "merged"
_RANK = {OPEN: 0, CLOSED: 1, MERGED: 3}
_ATTRIBUTED = 4


@dataclass(frozen=True)
class SessionRules:
    gap_ms: int = 30 * MINUTE_MS
    max_length_ms: int = 24 * HOUR_MS
    lateness_ms: int = 10 * MINUTE_MS
    #: How long a profile keeps its closed sessions for late touches to correct (archive.py);
    #: None: for ever, so that results do not depend on how late touches come.
    retention_ms: int | None = None

    def too_late(self, event_time: int, stream_time: int) -> bool:
        """A touch this far behind its partition's event time may belong to a closed session."""
        return event_time + self.lateness_ms < stream_time

    def close_at(self, run: list[list]) -> int:
        """Event time after which no acceptable touch can join `run` any more."""
        return run[-1][AT] + self.gap_ms + self.lateness_ms


def session_id(first: list) -> str:
    digest = hashlib.sha256(f"{first[AT]}\0{first[EVENT_ID]}".encode()).hexdigest()
    return "s-" + digest[:24]


def version(event_count: int, attributed: bool, status: str) -> int:
    """Monotonic per session id: a session only gains touches, gets attributed, then closes
    or merges; a higher version always describes a later state."""
    return event_count * 8 + (_ATTRIBUTED if attributed else 0) + _RANK[status]


def merged_version(last: int) -> int:
    return last | _RANK[MERGED]


def insert(runs: list[list[list]], touch: list, gap_ms: int) -> bool:
    """Add `touch` to the sorted runs, merging the runs it bridges; False if a duplicate."""
    t = touch[AT]
    # Runs it touches: those whose span, widened by the gap, contains t.
    hit = [i for i, run in enumerate(runs) if run[0][AT] - gap_ms <= t <= run[-1][AT] + gap_ms]
    for i in hit:
        if any(x[EVENT_ID] == touch[EVENT_ID] for x in runs[i]):
            return False
    if not hit:
        starts = [run[0][AT] for run in runs]
        runs.insert(bisect_left(starts, t), [touch])
        return True
    _join(runs, hit, touch)
    return True


def _join(runs: list[list[list]], hit: list[int], touch: list) -> None:
    """Merge the runs at the (ascending) indexes `hit` into the first of them, with `touch`."""
    merged = runs[hit[0]]
    for i in hit[1:]:
        merged.extend(runs[i])
    if len(hit) > 1:
        merged.sort(key=_order)
        for i in reversed(hit[1:]):
            del runs[i]
    insort(merged, touch, key=_order)


def build(touches: list[list], gap_ms: int, close_at: Callable[[list[list]], int]
          ) -> list[list[list]]:
    """The runs of `touches` as event time forms them: each touch is taken when it counts
    (`counts_at`: its own time, or for a device's touch claimed at a later login, the
    login's) and joins the runs within the gap of it that are still open then. Without
    claimed touches this is the plain gap rule of `insert`, in any order; with them, a claimed
    touch never joins a session that had closed before its login, whatever arrived since."""
    # The runs so far in order of their first touch, with their starts for bisection: a touch
    # can only join a run that starts at most the gap after it, and not before it less the
    # gap and the longest run's span; so each touch looks at the few runs near it, not at all
    # of them (a year of history formed again is then n log n, not n squared).
    runs: list[list[list]] = []
    starts: list[int] = []
    latest: list[int] = []  # per run, the latest time one of its touches counts at
    span = 0  # the longest run's span so far
    for touch in sorted(touches, key=lambda x: (counts_at(x), x[AT], x[EVENT_ID])):
        at, t = counts_at(touch), touch[AT]
        # Open then: not closed before it, or holding touches that count at that same instant
        # (a device's history comes in whole at its login: its runs form among themselves).
        hit = [i for i in range(bisect_left(starts, t - gap_ms - span),
                                bisect_right(starts, t + gap_ms))
               if runs[i][0][AT] - gap_ms <= t <= runs[i][-1][AT] + gap_ms
               and (close_at(runs[i]) >= at or latest[i] == at)]
        if not hit:
            i = bisect_right(starts, t)
            runs.insert(i, [touch])
            starts.insert(i, t)
            latest.insert(i, at)
            continue
        for i in reversed(hit[1:]):
            del latest[i]
            del starts[i]
        _join(runs, hit, touch)
        latest[hit[0]] = at
        joined = runs[hit[0]]
        starts[hit[0]] = joined[0][AT]
        span = max(span, joined[-1][AT] - joined[0][AT])
        if hit[0] and starts[hit[0] - 1] > starts[hit[0]]:  # moved before a run it skipped
            order = sorted(range(len(runs)), key=starts.__getitem__)
            runs[:] = [runs[k] for k in order]
            latest[:] = [latest[k] for k in order]
            starts[:] = [starts[k] for k in order]
    runs.sort(key=lambda run: _order(run[0]))
    return runs


def contains(runs: list[list[list]], t: int, event_id: str) -> bool:
    return any(run[0][AT] <= t <= run[-1][AT] and any(x[EVENT_ID] == event_id for x in run)
               for run in runs)


def merge_runs(runs: list[list[list]], other: list[list[list]], gap_ms: int) -> int:
    """Insert every touch of `other` (another profile's runs); returns how many were new."""
    return sum(insert(runs, touch, gap_ms) for run in other for touch in run)


def _order(touch: list) -> tuple[int, str]:
    return touch[AT], touch[EVENT_ID]


def pieces(run: list[list], max_length_ms: int) -> list[list[list]]:
    """Cut a run into sessions of at most `max_length_ms`, greedily from its first touch."""
    out: list[list[list]] = []
    current: list[list] = []
    for touch in run:
        if current and touch[AT] - current[0][AT] >= max_length_ms:
            out.append(current)
            current = []
        current.append(touch)
    if current:
        out.append(current)
    return out


def summary(touches: list[list], profile_id: str, customer_id: str | None, status: str) -> dict:
    """A Session record (schemas/session.avsc) of a session's touches."""
    counts: dict[str, int] = {}
    channels = set()
    devices = set()
    purchases = 0
    revenue = 0.0
    for touch in touches:
        kind = touch[EVENT_TYPE]
        counts[kind] = counts.get(kind, 0) + 1
        channels.add(touch[CHANNEL])
        if touch[ANONYMOUS_ID]:
            devices.add(touch[ANONYMOUS_ID])
        if kind == PURCHASE:
            purchases += 1
            revenue += touch[VALUE]
    return {
        "session_id": session_id(touches[0]),
        "profile_id": profile_id,
        "customer_id": customer_id,
        "anonymous_ids": sorted(devices),
        "started_at": touches[0][AT],
        "ended_at": touches[-1][AT],
        "event_count": len(touches),
        "channels": sorted(channels),
        "event_type_counts": counts,
        "purchase_count": purchases,
        "revenue": round(revenue, 6),
        "entry_event_type": touches[0][EVENT_TYPE],
        "exit_event_type": touches[-1][EVENT_TYPE],
        "status": status,
        "merged_into": None,
        "version": version(len(touches), customer_id is not None, status),
    }


def merged(sid: str, profile_id: str, customer_id: str | None, started_at: int,
           merged_into: str | None, version: int) -> dict:
    """The record that retires a session absorbed by another: only its id, status,
    `merged_into` and version matter (readers drop merged sessions)."""
    return {
        "session_id": sid, "profile_id": profile_id, "customer_id": customer_id,
        "anonymous_ids": [], "started_at": started_at, "ended_at": started_at,
        "event_count": 0, "channels": [], "event_type_counts": {}, "purchase_count": 0,
        "revenue": 0.0, "entry_event_type": None, "exit_event_type": None,
        "status": MERGED, "merged_into": merged_into, "version": version,
    }


def locate(runs: list[list[list]], touch_key: tuple[int, str], max_length_ms: int) -> str | None:
    """Id of the session that now holds the touch with this (time, event_id)."""
    for run in runs:
        if run[0][AT] <= touch_key[0] <= run[-1][AT]:
            for piece in pieces(run, max_length_ms):
                if piece[0][AT] <= touch_key[0] <= piece[-1][AT] and any(
                        _order(x) == touch_key for x in piece):
                    return session_id(piece[0])
    return None
