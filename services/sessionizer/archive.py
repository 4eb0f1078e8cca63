"""A profile's closed sessions, kept so that a late touch still corrects them.

A run that closes leaves the profile's open state for the *archive*: its touches, under one
state key per profile and day of its first touch (`r:<profile key>:<day>`), so a batch reads
and writes only the days it touches. The profile's state indexes them: `archive` is a sorted
list of `[day, latest end of that day's runs]`.

What is kept, per profile (contract section 2, "Bounded input and late data"): every closed
session, by default, so that a touch however late (a second export of the same months, a
backfill behind a live pipeline), or a copy of one delivered again, finds the sessions it
belongs to, and the results are those of the events whatever their delivery. The cost is
the state: every touch once, on disk with the `rocksdb://` store (docs/sessions.md).

With a retention (`SessionRules.retention_ms`, KIZUNA_HISTORY_RETENTION_DAYS) a profile keeps:
- every closed session ending within the retention of its latest touch;
- the sessions within the inactivity gap of the last late touch that came, however old: a
  backfill arrives in event-time order, and goes on from there;
- nothing, once it has been idle for the retention of its partition's event time after both
  its latest touch and the last late touch it took.
A touch older than that is taken with the sessions still kept around it: exact no more.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from services.domain.eventtime import DAY_MS
from services.domain.touch import AT, EVENT_ID

ARCHIVE = "r:"


def day_key(key: str, day: int) -> str:
    """The state key of a profile's runs that start on `day` (days since 1970, UTC)."""
    return f"{ARCHIVE}{key}:{day}"


class Archive:
    """The archived runs of a batch's profiles: each day key read once, written at `flush`."""

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self.store = store
        self.days: dict[str, list[list[list]]] = {}
        self.changed: set[str] = set()

    def _day(self, key: str, day: int) -> list[list[list]]:
        name = day_key(key, day)
        runs = self.days.get(name)
        if runs is None:
            runs = self.days[name] = list(self.store.get(name) or [])
        return runs

    def runs(self, key: str, state: dict) -> list[list[list]]:
        """Every archived run of the profile, by start."""
        return [run for day, _ in state.get("archive", ()) for run in self._day(key, day)]

    def near(self, key: str, state: dict, lo: int, hi: int, gap: int) -> list[list[list]]:
        """The archived runs within `gap` of the span [lo, hi]."""
        out = []
        for day, end in state.get("archive", ()):
            if day * DAY_MS > hi + gap:
                break
            if end + gap < lo:
                continue
            out += [run for run in self._day(key, day)
                    if run[0][AT] - gap <= hi and run[-1][AT] + gap >= lo]
        return out

    def holds(self, key: str, state: dict, t: int, event_id: str) -> bool:
        return any(any(x[EVENT_ID] == event_id for x in run)
                   for run in self.near(key, state, t, t, 0))

    def put(self, key: str, state: dict, runs: list[list[list]]) -> None:
        for run in runs:
            day = run[0][AT] // DAY_MS
            kept = self._day(key, day)
            kept.append(run)
            kept.sort(key=lambda r: (r[0][AT], r[0][EVENT_ID]))
            self._index(key, state, day)

    def remove(self, key: str, state: dict, runs: list[list[list]]) -> None:
        for run in runs:
            day = run[0][AT] // DAY_MS
            kept = self._day(key, day)
            kept[:] = [r for r in kept if r is not run]
            self._index(key, state, day)

    def _index(self, key: str, state: dict, day: int) -> None:
        self.changed.add(day_key(key, day))
        runs = self._day(key, day)
        index = [entry for entry in state.get("archive", ()) if entry[0] != day]
        if runs:
            index.append([day, max(run[-1][AT] for run in runs)])
            index.sort()
        if index:
            state["archive"] = index
        else:
            state.pop("archive", None)

    def prune(self, key: str, state: dict, latest: int, gap: int, retention: int) -> None:
        """Forget the days of runs ending more than `retention` before `latest`, except those
        within the gap of the last late touch (`late`: a backfill goes on from there)."""
        late = state.get("late", [None])[0]
        for day, end in list(state.get("archive", ())):
            if end < latest - retention and (late is None or end < late - gap):
                self._drop(key, state, day)

    def drop(self, key: str, state: dict) -> None:
        for day, _ in list(state.get("archive", ())):
            self._drop(key, state, day)
        state.pop("late", None)

    def _drop(self, key: str, state: dict, day: int) -> None:
        self._day(key, day).clear()
        self._index(key, state, day)

    @staticmethod
    def expires_at(state: dict, retention: int | None) -> int | None:
        """When an idle profile drops its archive: `retention` of event time after both its
        latest archived touch and the event time its last late touch came at (None: never)."""
        index = state.get("archive")
        if not index or retention is None:
            return None
        arrived = state.get("late", [None, None])[1]
        latest = max(end for _, end in index)
        return max(latest, arrived if arrived is not None else latest) + retention

    def flush(self) -> None:
        for name in self.changed:
            runs = self.days[name]
            if runs:
                self.store[name] = runs
            elif name in self.store:
                del self.store[name]
        self.changed.clear()
