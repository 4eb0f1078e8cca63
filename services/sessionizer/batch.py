"""One partition's batch, as the sessionizer works through it: the profile states it read
(each once), which changed, the partition's event times, and the outputs so far.

The batch is plain data with a few accessors; what is done with it lives in functions over
it: forming sessions (forming.py), closing and emitting them (closing.py), identity
(identity.py), and the batch's input and end (processor.py).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from services.common.schedule import Schedule
from services.domain.eventtime import NEVER
from services.domain.processing import CorruptState
from services.domain.touch import AT, counts_at
from services.sessionizer.archive import Archive
from services.sessionizer.dedup import TakenIds
from services.sessionizer.items import Outputs
from services.sessionizer.sessions import SessionRules
from services.sessionizer.state import ProfileState, held_key, new_profile, readable, upgrade

#: Per-partition state keys: its event time, the times announced to it, its logins waiting.
STREAM_TIME, ANNOUNCED, LOGINS = "t:", "w:", "l:"


class Batch:
    def __init__(self, rules: SessionRules, store: MutableMapping[str, Any], partition: int,
                 schedule: Schedule, announced: list[int], output_time: int) -> None:
        self.rules = rules
        self.store = store
        self.partition = partition
        self.schedule = schedule  # when each profile of the partition next needs attention
        self.start_time = store.get(f"{STREAM_TIME}{partition}", NEVER)
        self.stream_time = self.start_time
        self.start_announced = list(announced)
        self.announced = announced
        self.aligned = min(announced)  # kept up to date as announcements come
        #: Logins waiting for their device's history: `state.login_key` -> the login's time.
        self.start_logins: dict[str, int] = dict(store.get(f"{LOGINS}{partition}") or {})
        self.logins = dict(self.start_logins)
        self.start_output = output_time
        self.states: dict[str, ProfileState] = {}  # key -> its state, read once per batch
        self.changed: set[str] = set()
        self.reemit: set[str] = set()  # profiles to re-emit whole (after a redelivery)
        self.archive = Archive(store)
        self.ids = TakenIds(store, self.archive)
        self.out = Outputs()

    def state(self, key: str) -> ProfileState:
        """The profile's state, read once; one that cannot be read is reported (`corrupt`)
        and the profile starts again."""
        state = self.states.get(key)
        if state is None:
            state = self.store.get(key)
            if state is not None and not readable(state):
                self.out.corrupt.append(CorruptState(key, state, "not a profile's state"))
                self.changed.add(key)
                state = None
            if state is None:
                state = new_profile(self.partition)
            elif "recent" in state or "closed" in state:  # stored before the archive (0.5)
                self.archive.put(key, state, state.pop("recent", []) + state.pop("closed", []))
                self.changed.add(key)
            if upgrade(state):
                self.changed.add(key)
            self.states[key] = state
        return state

    def touched(self, key: str) -> ProfileState:
        """The profile's state, to be written back at the end of the batch."""
        self.changed.add(key)
        return self.state(key)

    def closing_time(self) -> int:
        """Runs whose close time is before this close (`closing.close_due`)."""
        return min(self.stream_time, self.aligned)

    def took(self, key: str, t: int, event_id: str) -> bool:
        """Whether the profile took this touch already (`TakenIds`)."""
        return self.ids.took(key, self.state(key), t, event_id)

    def attribute(self, customer: str, state: ProfileState, touch: list, late: bool) -> None:
        """Hand a customer's touch to the scorer and alerting. A late touch while a device's
        history is on its way (after a late login: one counting from that login on) waits
        for that history, as the next stages' event time waits for it in order (the output
        time's hold at logins): so they judge the customer's later touches after the
        device's claimed ones, in any order the late data came in. A touch held holds the
        output time too, at the time it counts from (`state.held_key`), so they never judge
        past it before it comes."""
        if late and state.get("awaiting") and touch[AT] >= state.get("claiming", NEVER):
            state.setdefault("held", []).append(touch)
            key, at = held_key(customer), counts_at(touch)
            self.logins[key] = min(self.logins.get(key, at), at)
        else:
            self.out.attributed.setdefault(customer, []).append(touch)
