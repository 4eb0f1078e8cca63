"""When each key of a partition next needs attention, in event time: a stage's timer index.

A heap with one live entry per key. A key asked to wake at a time no earlier than the one it
already has is left alone: it is looked at then, and asked again for its next time. An entry
made stale by an earlier one stays in the heap until its time and is skipped, so every touch
can ask for a wake-up without the heap filling with copies that are popped and pushed back
at every batch.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class Schedule:
    def __init__(self, due: Iterable[tuple[int, str]] = ()) -> None:
        self.at: dict[str, int] = {}
        for time, key in due:
            if self.at.get(key, time + 1) > time:
                self.at[key] = time
        self.heap = [(time, key) for key, time in self.at.items()]
        heapq.heapify(self.heap)

    def wake(self, time: int, key: str) -> None:
        """Look at `key` once event time passes `time` (or earlier, if asked so before)."""
        have = self.at.get(key)
        if have is not None and have <= time:
            return
        self.at[key] = time
        heapq.heappush(self.heap, (time, key))

    def pop_due(self, now: int) -> str | None:
        """A key whose time is before `now`, taken off the schedule; None when there is none."""
        heap = self.heap
        while heap and heap[0][0] < now:
            time, key = heapq.heappop(heap)
            if self.at.get(key) == time:
                del self.at[key]
                return key
        return None

    def __len__(self) -> int:
        """Keys waiting for a time."""
        return len(self.at)
