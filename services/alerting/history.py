"""A customer's touches as alerting took them, kept so that a late one can be placed among
them: its decisions are then made again from all of them in event time (`processor.replay`),
and the results do not depend on how late anything came.

Kept under `h:<customer>:<bucket>`, one key per 28 days of the touches' own event time, each
a list of touches sorted by (event time, event_id), so a batch reads and writes only the
buckets its touches fall in; the customer's state lists its buckets (`history`). A touch is
identified by its event_id: the same id again is a duplicate, unless it is the same touch
claimed at another login (its `moved_at` differs): then it replaces the copy kept.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import MutableMapping
from typing import Any

from services.domain.eventtime import DAY_MS
from services.domain.touch import AT, EVENT_ID, counts_at

HISTORY = "h:"
BUCKET_MS = DAY_MS


def bucket_key(customer: str, bucket: int) -> str:
    return f"{HISTORY}{customer}:{bucket}"


def _order(touch: list) -> tuple[int, str]:
    return touch[AT], touch[EVENT_ID]


class History:
    """A batch's view of its customers' kept touches: each bucket read once, written at
    `flush`."""

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self.store = store
        self.buckets: dict[str, list[list]] = {}
        self.ids: dict[str, dict[str, list]] = {}  # bucket key -> event_id -> touch
        self.changed: set[str] = set()

    def _bucket(self, customer: str, state: dict, bucket: int) -> tuple[list, dict]:
        name = bucket_key(customer, bucket)
        touches = self.buckets.get(name)
        if touches is None:
            stored = self.store.get(name) if bucket in state.get("history", ()) else None
            touches = self.buckets[name] = list(stored or [])
            self.ids[name] = {x[EVENT_ID]: x for x in touches}
        return touches, self.ids[name]

    def take(self, customer: str, state: dict, touches: list[list]
             ) -> tuple[list[list], list[list]]:
        """Keep the touches not kept yet; returns (the new ones, the ones that replace a copy
        kept with another login time). Duplicates are in neither."""
        new, replacing = [], []
        bucket = None
        for touch in touches:
            if touch[AT] // BUCKET_MS != bucket:  # a message's touches: mostly one day
                bucket = touch[AT] // BUCKET_MS
                kept, ids = self._bucket(customer, state, bucket)
                name = bucket_key(customer, bucket)
            have = ids.get(touch[EVENT_ID])
            if have is not None:
                if have == touch:
                    continue
                kept.remove(have)
                replacing.append(touch)
            else:
                new.append(touch)
            if kept and _order(touch) < _order(kept[-1]):
                insort(kept, touch, key=_order)
            else:
                kept.append(touch)
            ids[touch[EVENT_ID]] = touch
            if name not in self.changed:
                self.changed.add(name)
                index = state.setdefault("history", [])
                if bucket not in index:
                    insort(index, bucket)
        return new, replacing

    def all(self, customer: str, state: dict) -> list[list]:
        """Every touch kept, in the order they count for the customer (`counts_at`)."""
        touches = [x for bucket in state.get("history", ())
                   for x in self._bucket(customer, state, bucket)[0]]
        return sorted(touches, key=lambda x: (counts_at(x), x[EVENT_ID]))

    def erase(self, customer: str, state: dict) -> None:
        for bucket in state.pop("history", []):
            name = bucket_key(customer, bucket)
            self.buckets[name], self.ids[name] = [], {}
            self.changed.add(name)

    def flush(self) -> None:
        for name in self.changed:
            if self.buckets[name]:
                self.store[name] = self.buckets[name]
            elif name in self.store:
                del self.store[name]
        self.changed.clear()
