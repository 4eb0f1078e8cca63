"""Which touches a profile took already: a touch delivered again (a client's resend, a
producer's retry, a batch redone after a crash) is a duplicate, never a second touch.

A profile took a touch when its open runs or its archive (archive.py) hold it, or, for states
an earlier version wrote, when the ids it kept per day under `s:<profile key>:<day>` do (until
they expire, the dedup window after that day).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from services.domain.eventtime import DAY_MS
from services.sessionizer import sessions as s
from services.sessionizer.archive import Archive
from services.sessionizer.state import ProfileState

SEEN = "s:"


def seen_key(key: str, day: int) -> str:
    """The state key of the ids a profile kept for a day of event time."""
    return f"{SEEN}{key}:{day}"


class TakenIds:
    """A batch's view of what its profiles took: each `s:` key read once, written at `flush`."""

    def __init__(self, store: MutableMapping[str, Any], archive: Archive) -> None:
        self.store = store
        self.archive = archive
        self.seen: dict[str, list[str]] = {}  # `s:` key -> ids kept by an earlier version
        self.changed: set[str] = set()

    def took(self, key: str, state: ProfileState, t: int, event_id: str) -> bool:
        if s.contains(state["runs"], t, event_id) or self.archive.holds(key, state, t, event_id):
            return True
        day = t // DAY_MS
        return day in state.get("seen", ()) and event_id in self._ids(seen_key(key, day))

    def _ids(self, ids_key: str) -> list[str]:
        ids = self.seen.get(ids_key)
        if ids is None:
            ids = self.seen[ids_key] = list(self.store.get(ids_key) or [])
        return ids

    def expire_seen(self, key: str, state: ProfileState) -> None:
        """The ids an earlier version kept for the profile."""
        for day in state.pop("seen", []):
            ids_key = seen_key(key, day)
            self.seen[ids_key] = []
            self.changed.add(ids_key)

    def drop(self, key: str, state: ProfileState) -> None:
        """Everything the profile kept of its closed sessions."""
        self.archive.drop(key, state)
        self.expire_seen(key, state)

    def flush(self) -> None:
        self.archive.flush()
        for ids_key in self.changed:
            if self.seen[ids_key]:
                self.store[ids_key] = self.seen[ids_key]
            elif ids_key in self.store:
                del self.store[ids_key]
