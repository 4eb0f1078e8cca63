"""The sessionizer's work on one partition's batch: identity and sessions, pure (no Kafka).

Profiles. A touch with a `customer_id` belongs to that customer; a touch with only an
`anonymous_id` to the device, until the device is linked to a customer. Raw touchpoints are
keyed by profile, so a device's state lives on the device's partition and a customer's on the
customer's. Identity therefore travels on a co-partitioned *handoff* topic:

- a touch carrying both ids sends `link` to the device's partition (once per customer state);
- the device, when not linked yet, links to that customer and sends its whole state (open
  runs, live sessions, recently closed sessions) to the customer as `transfer`, where it joins
  the customer's sessions that were open at the login's event time (`rejoin`); later
  device-only touches go on as `forward`;
- a device already linked to another customer refuses: two known customers are never merged,
  and the refused link becomes a dead letter (`identity_conflict`).

Event time is per partition: the highest event time seen there, raised further by watermark
records (`kizuna import --until`, the live tick). A touch more than the allowed lateness behind
it becomes a dead letter (`too_late`) instead of silently reopening a closed session. Handoffs
carry touches that were on time on their own partition, so they are never too late.

Sessions close by the *aligned* time instead: the lowest event time any partition has
announced on the handoff topic. Each batch that moves its partition's event time announces it
to every partition (`time`), after the batch's own handoffs. So when a partition hears
partition q announce T, every forward q sent before is in, and every later one holds a touch at
T minus the allowed lateness or after: a session closed by the aligned time cannot be joined by
a touch still in flight, however slow the hop is (the same watermark alignment as Flink's or
Kafka Streams' across input partitions).

The next stages get the *output time* as the partition's event time: the aligned time, held at
the earliest login whose device has not answered yet. A device's history reaches the customer
marked with its login's time (`moved_touch`), and the next stages can count it as of the login:
when it arrives, their event time has not passed the login, whatever the hop took. So a
forwarded touch is never late for them, and a moved one always lands at the same place in the
customer's history.

State lives in a mapping (the faust table in production, a dict in tests) under `c:<customer>`,
`a:<device>`, and per partition `t:` (its event time), `w:` (the times announced to it) and
`l:` (its logins waiting for a device). Each batch reads what it needs, and writes each changed
key once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from services.common.schedule import Schedule
from services.domain.eventtime import DAY_MS, DEDUP_MS, NEVER
from services.domain.touch import AT, EVENT_ID, MOVED_AT, touch_of
from services.sessionizer import handoff
from services.sessionizer import sessions as s
from services.sessionizer.archive import Archive
from services.sessionizer.closing import Closing
from services.sessionizer.dedup import TakenIds
from services.sessionizer.identity import Identity
from services.sessionizer.items import (
    DeadLetter,
    Erase,
    Handoff,
    Outputs,
    Touchpoint,
    Watermark,
    json_payload,
)
from services.sessionizer.sessions import SessionRules
from services.sessionizer.state import (
    CUSTOMER,
    DEVICE,
    ProfileState,
    awaiting,
    kept,
    new_profile,
    note_moved,
    readable,
    upgrade,
)

STREAM_TIME, ANNOUNCED, LOGINS = "t:", "w:", "l:"
__all__ = ["DeadLetter", "Erase", "Handoff", "Outputs", "PartitionProcessor", "Touchpoint",
           "Watermark", "handoffs_by_partition"]  # the inputs and outputs, from items.py


def handoffs_by_partition(out: Outputs, partition: int, partitions: int,
                          partition_of: Callable[[str], int]) -> dict[int, list[Handoff]]:
    """What a batch sends through the handoff topic, by target partition and in order: its
    handoffs (to the partition of their key), then its event time announced to every
    partition. For running the processor without Kafka (tests, benchmarks)."""
    routed: dict[int, list[Handoff]] = {}
    for key, message in out.handoffs:
        routed.setdefault(partition_of(key), []).append(Handoff(message))
    if out.stream_time is not None:
        for other in range(partitions):
            routed.setdefault(other, []).append(Handoff(handoff.time(partition, out.stream_time)))
    return routed


class PartitionProcessor:
    """Processes batches of one stage process's partitions over a shared state mapping."""

    def __init__(self, rules: SessionRules, store: MutableMapping[str, Any],
                 partitions: int = 1) -> None:
        self.rules = rules
        self.store = store
        self.partitions = partitions
        self._deadlines: dict[int, Schedule] = {}

    # -- the batch ---------------------------------------------------------------------------

    def process(self, partition: int, items: list) -> Outputs:
        batch = _Batch(self, partition)
        for item in items:
            if isinstance(item, Touchpoint):
                batch.touchpoint(item)
            elif isinstance(item, Watermark):
                batch.stream_time = max(batch.stream_time, item.time)
            elif isinstance(item, Erase):
                batch.erase(item.customer_id)
            else:
                batch.handoff(item.message)
        batch.close_due()
        batch.finish()
        return batch.out

    def stream_time(self, partition: int) -> int:
        return self.store.get(f"{STREAM_TIME}{partition}", NEVER)

    def announced(self, partition: int) -> list[int]:
        """The event time each partition has announced to `partition` (NEVER: not yet)."""
        stored = self.store.get(f"{ANNOUNCED}{partition}") or []
        return (stored + [NEVER] * self.partitions)[:self.partitions]

    def aligned_time(self, partition: int) -> int:
        """The lowest announced event time: sessions may close up to it."""
        return min(self.announced(partition))

    def output_time(self, partition: int) -> int:
        """The partition's event time for the next stages: the aligned time, held at the
        earliest login still waiting for its device's history."""
        logins = self.store.get(f"{LOGINS}{partition}") or {}
        return min([self.aligned_time(partition), *logins.values()])

    def forget_partition(self, partition: int) -> None:
        """After a rebalance took `partition` away; rebuilt from the store if it comes back."""
        self._deadlines.pop(partition, None)

    def deadlines(self, partition: int) -> Schedule:
        schedule = self._deadlines.get(partition)
        if schedule is None:  # first batch of this partition in this process: index the store
            due = ((self.due_at(key, state), key) for key, state in list(self.store.items())
                   if key[:2] in (CUSTOMER, DEVICE) and readable(state)
                   and state.get("p") == partition)
            schedule = Schedule((t, key) for t, key in due if t is not None)
            self._deadlines[partition] = schedule
        return schedule

    def due_at(self, key: str, state: ProfileState) -> int | None:
        """When this profile next needs attention without new input: a run to close, or
        an idle profile's archive to forget."""
        if awaiting(state):
            return None  # waiting for a device's answer; its transfer reschedules
        if state["runs"]:
            return min(self.rules.close_at(run) for run in state["runs"])
        expires = Archive.expires_at(state, self.rules.retention_ms)
        if expires is not None:
            return expires
        if state.get("seen"):  # ids an earlier version kept: forgotten the window after
            return (state["seen"][-1] + 1) * DAY_MS + DEDUP_MS
        return None


class _Batch(Identity, Closing):
    """One partition's batch: touches and handoffs in, sessions and handoffs out. Identity
    (identity.py) and closing (closing.py) are its other two halves; which touches a profile
    took already is `TakenIds` (dedup.py)."""

    def __init__(self, proc: PartitionProcessor, partition: int) -> None:
        self.proc = proc
        self.rules = proc.rules
        self.store = proc.store
        self.partition = partition
        self.schedule = proc.deadlines(partition)
        self.start_time = self.store.get(f"{STREAM_TIME}{partition}", NEVER)
        self.stream_time = self.start_time
        self.announced = proc.announced(partition)
        self.aligned = min(self.announced)  # kept up to date as announcements come
        #: Logins waiting for their device's history: (customer, NUL, device) -> the login's time.
        self.logins: dict[str, int] = dict(self.store.get(f"{LOGINS}{partition}") or {})
        self.start_output = proc.output_time(partition)
        self.states: dict[str, ProfileState] = {}  # key -> its state, read once per batch
        self.changed: set[str] = set()
        self.reemit: set[str] = set()  # profiles to re-emit whole (after a redelivery)
        self.archive = Archive(self.store)
        self.ids = TakenIds(self.store, self.archive)
        self.out = Outputs()

    # -- state -------------------------------------------------------------------------------

    def state(self, key: str) -> ProfileState:
        state = self.states.get(key)
        if state is None:
            state = self.store.get(key)
            if state is not None and not readable(state):
                # whatever it holds, the stage goes on: the state to the dead-letter topic,
                # the profile starts again
                self.out.dead_letters.append(DeadLetter(
                    "state_corrupt", f"state {key!r} is not a profile's state", json_payload(
                        {"key": key, "state": state}), None))
                self.changed.add(key)
                state = None
            if state is None:
                state = new_profile(self.partition)
            elif "recent" in state or "closed" in state:  # stored by an earlier version
                self.archive.put(key, state, state.pop("recent", []) + state.pop("closed", []))
                self.changed.add(key)
            if upgrade(state):
                self.changed.add(key)
            self.states[key] = state
        return state

    def touched(self, key: str) -> ProfileState:
        self.changed.add(key)
        return self.state(key)

    def closing_time(self) -> int:
        """Runs whose close time is before this close (`close_due`)."""
        return min(self.stream_time, self.aligned)

    def took(self, key: str, t: int, event_id: str) -> bool:
        """Whether the profile took this touch already (`TakenIds`)."""
        return self.ids.took(key, self.state(key), t, event_id)

    def forget(self, key: str, state: ProfileState) -> None:
        """Everything the profile kept of its closed sessions."""
        self.forget(key, state)

    # -- input -------------------------------------------------------------------------------

    def touchpoint(self, tp: Touchpoint) -> None:
        record = tp.record
        t = record["event_time"]
        self.out.counts["events"] += 1
        customer, device = record.get("customer_id"), record.get("anonymous_id")
        touch = touch_of(record)
        key = CUSTOMER + customer if customer else DEVICE + device
        late = self.rules.too_late(t, self.stream_time)
        if late:
            if self.took(key, t, record["event_id"]):
                # delivered again (a client's resend, a producer's retry): a duplicate, not late
                self.out.counts["duplicates"] += 1
                self.reemit.add(key)
                self.changed.add(key)
                if customer:
                    self.out.attributed.setdefault(customer, []).append(touch)
                return
            # Late: it still counts, and corrects the sessions it belongs to (`reform`).
            self.out.counts["corrections"] += 1
            self.out.late.append((record["channel"], self.stream_time - t))
        elif t < self.stream_time:
            self.out.counts["late"] += 1
        self.stream_time = max(self.stream_time, t)
        if customer:
            state = self.touched(key)
            self.attribute(customer, state, touch, late)
            if device and self.logs_in(state, device, t):
                # Its sessions wait for the device's answer before they may close.
                if device not in awaiting(state):
                    state.setdefault("awaiting", []).append(device)
                if not late:  # the next stages are past a late login already
                    login = f"{customer}\x00{device}"
                    self.logins[login] = min(self.logins.get(login, t), t)
                else:  # theirs go out after the device's history (`attribute`)
                    state["claiming"] = min(state.get("claiming", t), t)
                self.out.handoffs.append((device, handoff.link(
                    device, customer, record["event_id"], t)))
            self.add(key, state, touch)
            return
        state = self.state(key)
        if state.get("linked_to"):
            at = state.get("linked_at")
            if at is not None and t < at:
                self.before_login(key, state, touch, at)
                return
            self.out.handoffs.append((state["linked_to"],
                                      handoff.forward(state["linked_to"], touch)))
            return
        self.changed.add(key)
        self.add(key, state, touch)

    @staticmethod
    def logs_in(state: ProfileState, device: str, t: int) -> bool:
        """Whether a touch with both ids at `t` links `device` to the customer: the device's
        first login, or one earlier than the login that linked it (it came late: the
        device's history is claimed from there, as if it had come first)."""
        devices = state.setdefault("devices", [])
        login_at = state.setdefault("login_at", {})
        if device not in devices:
            devices.append(device)
        elif device not in login_at or t >= login_at[device]:
            return False  # linked already at this login or an earlier one
        login_at[device] = t
        return True

    def attribute(self, customer: str, state: ProfileState, touch: list, late: bool) -> None:
        """Hand a customer's touch to the scorer and alerting. A late touch after a late
        login whose device's history is still on its way waits for that history, as the
        next stages' event time waits for it in order (the output time's hold at logins): so
        they judge the customer's later touches after the device's claimed ones, in any
        order the late data came in."""
        if late and state.get("awaiting") and touch[AT] >= state.get("claiming", NEVER):
            state.setdefault("held", []).append(touch)
        else:
            self.out.attributed.setdefault(customer, []).append(touch)

    def add(self, key: str, state: ProfileState, touch: list) -> None:
        closed_before = self.closing_time() - self.rules.lateness_ms
        if len(touch) > MOVED_AT or touch[AT] < max(state.get("moved", NEVER), closed_before):
            # It may join a closed session, come before a login that claimed touches, or be
            # one of those (it joins only the sessions open at its login: `sessions.build`).
            added = self.reform(key, state, [touch])
        else:
            added = s.insert(state["runs"], touch, self.rules.gap_ms)
            if added:
                self.schedule.wake(self.rules.close_at(state["runs"][0]), key)
        if not added:
            self.out.counts["duplicates"] += 1
            self.reemit.add(key)

    def handoff(self, message: dict) -> None:
        kind = message["kind"]
        if kind == "forget":
            self.unlink(message)
        elif kind == "link":
            self.link(message)
        elif kind in ("transfer", "transfer_part"):
            self.receive(message)
        elif kind == "time":
            q = message["partition"]
            if message["t"] > self.announced[q]:
                self.announced[q] = message["t"]
                self.aligned = min(self.announced)
        elif kind == "forward":
            touch = message["touch"]
            key = CUSTOMER + message["customer_id"]
            if self.took(key, touch[AT], touch[EVENT_ID]):
                # sent again by a batch redone after a crash, or a copy delivered again
                self.out.counts["duplicates"] += 1
                return
            state = self.touched(key)
            self.add(key, state, touch)
            self.attribute(message["customer_id"], state, touch,
                           touch[AT] + self.rules.lateness_ms < self.stream_time)

    def reform(self, key: str, state: ProfileState, touches: list[list],
               replace: bool = False) -> bool:
        """Add touches that may join closed sessions, or come before a login that claimed a
        device's touches: the profile's open runs and the archived runs around the touches
        are formed again in event time (`sessions.build`), so the sessions are what the
        events give, whatever came when. A device's touches claimed at a login join the
        sessions that were open at the login's event time, and only those. Runs that event
        time has closed go back to the archive, re-emitted where they changed; sessions
        absorbed by another are re-emitted as merged. False if every touch was here.
        `replace`: a touch held already but claimed now at another login replaces it."""
        if not touches:
            return False
        if replace:  # touches held already with another login time are taken anew
            held_as = {x[EVENT_ID]: x for run in state["runs"] + self.archive.near(
                key, state, min(x[AT] for x in touches), max(x[AT] for x in touches), 0)
                for x in run}
            fresh = [x for x in touches if held_as.get(x[EVENT_ID]) != x and (
                x[EVENT_ID] in held_as or not self.took(key, x[AT], x[EVENT_ID]))]
        else:
            fresh = [x for x in touches if not self.took(key, x[AT], x[EVENT_ID])]
        if not fresh:
            return False
        gap = self.rules.gap_ms
        lo, hi = min(x[AT] for x in fresh), max(x[AT] for x in fresh)
        old: list[list[list]] = []
        while True:  # the archived runs around them, and around those
            more = [run for run in self.archive.near(key, state, lo, hi, gap)
                    if all(run is not o for o in old)]
            if not more:
                break
            old += more
            lo = min(lo, *(run[0][AT] for run in more))
            hi = max(hi, *(run[-1][AT] for run in more))
        replaced = {x[EVENT_ID] for x in fresh}
        held = [x for run in state["runs"] + old for x in run if x[EVENT_ID] not in replaced]
        runs = s.build(held + fresh, gap, self.rules.close_at)
        now = NEVER if state.get("awaiting") else self.closing_time()
        closed = [run for run in runs if self.rules.close_at(run) < now]
        state["runs"] = [run for run in runs if self.rules.close_at(run) >= now]
        self.archive.remove(key, state, old)
        self.archive.put(key, state, closed)
        if fresh[-1][AT] + self.rules.lateness_ms < self.stream_time:
            state["late"] = [max(x[AT] for x in fresh), self.stream_time]
        self.settle(key, state, old, closed, state["runs"] + closed)
        if state["runs"]:
            self.schedule.wake(min(self.rules.close_at(run) for run in state["runs"]), key)
        due = self.proc.due_at(key, state)
        if due is not None:
            self.schedule.wake(due, key)
        note_moved(state)
        return True

    # -- the end of the batch ----------------------------------------------------------------

    def finish(self) -> None:
        for key in self.changed:
            state = self.states.get(key)
            if state is None:
                continue
            if state["runs"] or state["emitted"]:
                self.emit(key, state)
            if kept(state):
                self.store[key] = state
            elif key in self.store:
                del self.store[key]
        self.ids.flush()
        if self.stream_time != self.start_time:
            self.store[f"{STREAM_TIME}{self.partition}"] = self.stream_time
            self.out.stream_time = self.stream_time
        if self.announced != self.proc.announced(self.partition):
            self.store[f"{ANNOUNCED}{self.partition}"] = self.announced
        if self.logins != (self.store.get(f"{LOGINS}{self.partition}") or {}):
            self.store[f"{LOGINS}{self.partition}"] = self.logins
        output_time = self.proc.output_time(self.partition)
        if output_time != self.start_output:
            self.out.output_time = output_time


