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

import json
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from services.common.schedule import Schedule
from services.domain.eventtime import DAY_MS, DEDUP_MS, HOUR_MS, NEVER
from services.domain.touch import AT, EVENT_ID, MOVED_AT, moved_touch, touch_of
from services.sessionizer import sessions as s
from services.sessionizer.archive import Archive
from services.sessionizer.sessions import SessionRules

CUSTOMER, DEVICE, STREAM_TIME, ANNOUNCED, LOGINS, SEEN = "c:", "a:", "t:", "w:", "l:", "s:"
#: A login claims the device's sessions that ended within this window before it.
DEVICE_HISTORY_MS = 30 * 24 * HOUR_MS
#: Most touches in one message of a device's history on its way to the customer.
DEVICE_HISTORY_TOUCHES = 2000


@dataclass(frozen=True)
class Touchpoint:
    record: dict  # schemas/touchpoint.avsc, event_time as epoch ms
    payload: bytes | None = None  # its own raw Kafka value (None inside a batch message)
    origin: tuple[str, int, int] | None = None  # topic, partition, offset


@dataclass(frozen=True)
class Watermark:
    time: int


@dataclass(frozen=True)
class Erase:
    customer_id: str


@dataclass(frozen=True)
class Handoff:
    message: dict


@dataclass
class DeadLetter:
    reason: str
    detail: str
    payload: bytes | None  # None: the touchpoint came in a batch; `record` is what to keep
    origin: tuple[str, int, int] | None
    record: dict | None = None


@dataclass
class Outputs:
    sessions: list[dict] = field(default_factory=list)
    handoffs: list[tuple[str, dict]] = field(default_factory=list)  # (profile key, message)
    #: Touches that belong to a customer, on time or moved by an identity link, for the
    #: scorer and alerting (at-least-once: they deduplicate).
    attributed: dict[str, list[list]] = field(default_factory=dict)
    #: Touches that came behind the allowed lateness and corrected their sessions:
    #: (channel, how far behind the partition's event time in ms), for the metrics.
    late: list[tuple[str, int]] = field(default_factory=list)
    #: The partition's event time after the batch, when the batch moved it (else None): to
    #: be announced to every partition (`time_message`) after the batch's handoffs.
    stream_time: int | None = None
    #: The output time after the batch, when the batch changed it (else None).
    output_time: int | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    #: Customers erased (`kizuna erase`): the next stages forget them too.
    erased: list[str] = field(default_factory=list)


def time_message(partition: int, stream_time: int) -> dict:
    """The handoff that announces `partition`'s event time to another partition."""
    return {"kind": "time", "partition": partition, "t": stream_time}


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
            routed.setdefault(other, []).append(Handoff(time_message(partition, out.stream_time)))
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
                   if key[:2] in (CUSTOMER, DEVICE) and _readable(state)
                   and state.get("p") == partition)
            schedule = Schedule((t, key) for t, key in due if t is not None)
            self._deadlines[partition] = schedule
        return schedule

    def due_at(self, key: str, state: dict) -> int | None:
        """When this profile next needs attention without new input: a run to close, or
        an idle profile's archive to forget."""
        if state.get("pending"):
            return None  # waiting for a device's answer; its transfer reschedules
        if state["runs"]:
            return min(self.rules.close_at(run) for run in state["runs"])
        expires = Archive.expires_at(state)
        if expires is not None:
            return expires
        if state.get("seen"):  # ids an earlier version kept: forgotten the window after
            return (state["seen"][-1] + 1) * DAY_MS + DEDUP_MS
        return None


class _Batch:
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
        self.states: dict[str, dict] = {}  # key -> its state, read once per batch
        self.changed: set[str] = set()
        self.reemit: set[str] = set()  # profiles to re-emit whole (after a redelivery)
        self.archive = Archive(self.store)
        self.seen: dict[str, list[str]] = {}  # `s:` key -> ids kept by an earlier version
        self.seen_changed: set[str] = set()
        self.out = Outputs()

    # -- state -------------------------------------------------------------------------------

    def state(self, key: str) -> dict:
        state = self.states.get(key)
        if state is None:
            state = self.store.get(key)
            if state is not None and not _readable(state):
                # whatever it holds, the stage goes on: the state to the dead-letter topic,
                # the profile starts again
                self.out.dead_letters.append(DeadLetter(
                    "state_corrupt", f"state {key!r} is not a profile's state", _json(
                        {"key": key, "state": state}), None))
                self.changed.add(key)
                state = None
            if state is None:
                state = {"p": self.partition, "runs": [], "emitted": {}}
            elif "recent" in state or "closed" in state:  # stored by an earlier version
                self.archive.put(key, state, state.pop("recent", []) + state.pop("closed", []))
                self.changed.add(key)
            self.states[key] = state
        return state

    def touched(self, key: str) -> dict:
        self.changed.add(key)
        return self.state(key)

    def closing_time(self) -> int:
        """Runs whose close time is before this close (`close_due`)."""
        return min(self.stream_time, self.aligned)

    def took(self, key: str, t: int, event_id: str) -> bool:
        """Whether the profile took this touch already: in its open runs, its archive, or
        the ids an earlier version kept (`s:<key>:<day>`, until they expire)."""
        state = self.state(key)
        if s.contains(state["runs"], t, event_id) or self.archive.holds(key, state, t, event_id):
            return True
        day = t // DAY_MS
        return day in state.get("seen", ()) and event_id in self.seen_ids(_seen_key(key, day))

    def seen_ids(self, ids_key: str) -> list[str]:
        ids = self.seen.get(ids_key)
        if ids is None:
            ids = self.seen[ids_key] = list(self.store.get(ids_key) or [])
        return ids

    def forget_seen(self, key: str, state: dict) -> None:
        for day in state.pop("seen", []):
            ids_key = _seen_key(key, day)
            self.seen[ids_key] = []
            self.seen_changed.add(ids_key)

    def forget(self, key: str, state: dict) -> None:
        """Everything the profile kept of its closed sessions."""
        self.archive.forget(key, state)
        self.forget_seen(key, state)

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
            if device and device not in state.setdefault("devices", []):
                state["devices"].append(device)
                # Its sessions wait for the device's answer before they may close.
                state.setdefault("pending", []).append(device)
                if not late:  # the next stages are past a late login already
                    self.logins[f"{customer}\x00{device}"] = t
                else:  # theirs go out after the device's history (`attribute`)
                    state["claiming"] = min(state.get("claiming", t), t)
                self.out.handoffs.append((device, {
                    "kind": "link", "anonymous_id": device, "customer_id": customer,
                    "event_id": record["event_id"], "event_time": t}))
            self.add(key, state, touch)
            return
        state = self.state(key)
        if state.get("linked_to"):
            at = state.get("linked_at")
            if at is not None and t < at:
                self.before_login(key, state, touch, at)
                return
            self.out.handoffs.append((state["linked_to"], {
                "kind": "forward", "customer_id": state["linked_to"], "touch": touch}))
            return
        self.changed.add(key)
        self.add(key, state, touch)

    def attribute(self, customer: str, state: dict, touch: list, late: bool) -> None:
        """Hand a customer's touch to the scorer and alerting. A late touch after a late
        login whose device's history is still on its way waits for that history, as the
        next stages' event time waits for it in order (the output time's hold at logins): so
        they judge the customer's later touches after the device's claimed ones, in any
        order the late data came in."""
        if late and state.get("pending") and touch[AT] >= state.get("claiming", NEVER):
            state.setdefault("held", []).append(touch)
        else:
            self.out.attributed.setdefault(customer, []).append(touch)

    def before_login(self, key: str, state: dict, touch: list, at: int) -> None:
        """A linked device's touch from before its login, come after the link (the device's
        partition was behind the customer's, or the touch is late). It goes where it would
        have gone had it come first: with the device's history the login claims (ending
        within 30 days before it, `_claimable`) to the customer, counted from the login
        (`moved_touch`); else it stays the device's, in an anonymous session."""
        if self.took(key, touch[AT], touch[EVENT_ID]):
            self.out.counts["duplicates"] += 1
            return
        self.changed.add(key)
        held = [x for run in state["runs"] + self.archive.runs(key, state) for x in run]
        runs = s.build(held + [touch], self.rules.gap_ms, self.rules.close_at)
        claimed = _claimable(runs, at)
        if any(s.contains([run], touch[AT], touch[EVENT_ID]) for run in claimed):
            # the customer's: kept in the device's history only (what the login claims, and
            # its duplicates), never a session of the device's own
            old = self.archive.near(key, state, touch[AT], touch[AT], self.rules.gap_ms)
            joined = s.build([x for run in old for x in run] + [touch], self.rules.gap_ms,
                             self.rules.close_at)
            self.archive.remove(key, state, old)
            self.archive.put(key, state, joined)
            self.out.handoffs.append((state["linked_to"], {
                "kind": "forward", "customer_id": state["linked_to"],
                "touch": moved_touch(touch, at)}))
        else:
            self.reform(key, state, [touch])

    def add(self, key: str, state: dict, touch: list) -> None:
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

    def erase(self, customer: str) -> None:
        """Forget the customer, and tell each device linked to them to forget the link."""
        key = CUSTOMER + customer
        state = self.state(key)
        for device in state.get("devices", []):
            self.out.handoffs.append((device, {"kind": "forget", "anonymous_id": device,
                                               "customer_id": customer}))
            self.logins.pop(f"{customer}\x00{device}", None)
        self.forget(key, state)
        self.states[key] = {"p": self.partition, "runs": [], "emitted": {}}
        self.changed.add(key)
        self.out.erased.append(customer)
        self.out.attributed.pop(customer, None)
        self.out.counts["erased"] += 1

    def handoff(self, message: dict) -> None:
        kind = message["kind"]
        if kind == "forget":
            key = DEVICE + message["anonymous_id"]
            if self.state(key).get("linked_to") == message["customer_id"]:
                self.forget(key, self.state(key))
                self.states[key] = {"p": self.partition, "runs": [], "emitted": {}}
                self.changed.add(key)
            return
        if kind == "link":
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

    def link(self, message: dict) -> None:
        device, customer = message["anonymous_id"], message["customer_id"]
        key = DEVICE + device
        state = self.state(key)
        linked = state.get("linked_to")
        at = message["event_time"]
        if linked == customer:
            self.out.handoffs.append((customer, _transfer(customer, device, at)))
            return
        if linked:
            self.out.handoffs.append((customer, _transfer(customer, device, at)))
            self.out.counts["identity_conflicts"] += 1
            self.out.dead_letters.append(DeadLetter(
                "identity_conflict",
                f"anonymous_id {device!r} is linked to customer {linked!r}; event "
                f"{message['event_id']!r} links it to {customer!r}: two known customers are "
                "never merged, the event counts for its own customer only",
                _json(message), None))
            return
        self.out.counts["identity_links"] += 1
        self.changed.add(key)
        # Its closed sessions travel as touches too: on the customer's side they may merge
        # with the session of the login itself.
        claimed = _claimable(state["runs"] + self.archive.runs(key, state), at)
        emitted = {}
        profile_id, _ = _ids(key)
        for run in state["runs"]:
            live = any(run is c for c in claimed)
            for piece in s.pieces(run, self.rules.max_length_ms):
                sid = s.session_id(piece[0])
                if live:
                    emitted[sid] = state["emitted"].get(sid) or [
                        piece[0][AT], piece[0][EVENT_ID], s.version(len(piece), False, s.OPEN)]
                else:  # over before the login's window: it stays the device's, closed
                    self.out.sessions.append(s.summary(piece, profile_id, None, s.CLOSED))
        for run in claimed:
            if all(run is not r for r in state["runs"]):
                for piece in s.pieces(run, self.rules.max_length_ms):
                    emitted[s.session_id(piece[0])] = [
                        piece[0][AT], piece[0][EVENT_ID],
                        s.version(len(piece), False, s.CLOSED)]
        # in parts of at most 2,000 touches (each message well under Kafka's 1 MB), the last
        # one a `transfer` that ends the wait
        touches = [x for run in claimed for x in run]
        for i in range(0, max(0, len(touches) - DEVICE_HISTORY_TOUCHES), DEVICE_HISTORY_TOUCHES):
            part = _transfer(customer, device, at, [touches[i:i + DEVICE_HISTORY_TOUCHES]])
            self.out.handoffs.append((customer, {**part, "kind": "transfer_part"}))
        rest = touches[(max(0, len(touches) - 1) // DEVICE_HISTORY_TOUCHES)
                       * DEVICE_HISTORY_TOUCHES:]
        self.out.handoffs.append((customer, _transfer(customer, device, at,
                                                      [rest] if rest else [], emitted)))
        # The customer holds its touches from now on. The device keeps its history (what
        # its login claims of a touch from before it that comes later: `before_login`).
        self.archive.put(key, state, state["runs"])
        linked = {"p": self.partition, "runs": [], "emitted": {}, "linked_to": customer,
                  "linked_at": at}
        for part in ("archive", "late", "seen"):
            if part in state:
                linked[part] = state[part]
        self.states[key] = linked

    def receive(self, message: dict) -> None:
        customer = message["customer_id"]
        key = CUSTOMER + customer
        state = self.state(key)
        pending = state.get("pending", [])
        if message["anonymous_id"] not in pending:
            # Sent again by the device's partition redoing a batch after a crash: its runs are
            # here already, and may have closed since; merging them again would show them twice.
            self.out.counts["duplicates"] += 1
            return
        self.changed.add(key)
        last = message["kind"] == "transfer"  # the others are parts of a long history
        login = f"{customer}\x00{message['anonymous_id']}"
        at = (self.logins.pop(login, None) if last else self.logins.get(login))
        at = message.get("at", at)  # None: a transfer from before logins were timed
        touches = [touch if at is None or touch[AT] >= at else moved_touch(touch, at)
                   for run in message["runs"] for touch in run]
        if last:
            pending.remove(message["anonymous_id"])
            if not pending:
                state.pop("pending", None)
        # the device's touches before its login count from the login
        self.reform(key, state, touches)
        if touches:  # the device's touches now count for the customer
            self.out.attributed.setdefault(customer, []).extend(touches)
        if not state.get("pending"):  # then the customer's own that waited for them
            state.pop("claiming", None)
            self.out.attributed.setdefault(customer, []).extend(state.pop("held", []))
        for sid, entry in message.get("emitted", {}).items():
            state["emitted"].setdefault(sid, entry)
        due = self.proc.due_at(key, state)
        if due is not None:
            self.schedule.wake(due, key)

    def reform(self, key: str, state: dict, touches: list[list]) -> bool:
        """Add touches that may join closed sessions, or come before a login that claimed a
        device's touches: the profile's open runs and the archived runs around the touches
        are formed again in event time (`sessions.build`), so the sessions are what the
        events give, whatever came when. A device's touches claimed at a login join the
        sessions that were open at the login's event time, and only those. Runs that event
        time has closed go back to the archive, re-emitted where they changed; sessions
        absorbed by another are re-emitted as merged. False if every touch was here."""
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
        held = [x for run in state["runs"] + old for x in run]
        runs = s.build(held + fresh, gap, self.rules.close_at)
        now = NEVER if state.get("pending") else self.closing_time()
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
        _note_moved(state)
        return True

    def settle(self, key: str, state: dict, old: list[list[list]], closed: list[list[list]],
               now: list[list[list]]) -> None:
        """Emit what a correction changed among closed sessions: each closed session that is
        new or changed, and each one that an earlier closed session merged into. An earlier
        closed session that is live again is re-emitted by `emit` (it goes into `emitted`)."""
        profile_id, customer = _ids(key)
        attributed = customer is not None
        before = {}
        for run in old:
            for piece in s.pieces(run, self.rules.max_length_ms):
                before[s.session_id(piece[0])] = (piece[0][AT], piece[0][EVENT_ID],
                                                  s.version(len(piece), attributed, s.CLOSED))
        after = set()
        for run in closed:
            for piece in s.pieces(run, self.rules.max_length_ms):
                record = s.summary(piece, profile_id, customer, s.CLOSED)
                after.add(record["session_id"])
                was = before.get(record["session_id"])
                if was is None or was[2] != record["version"]:
                    self.out.sessions.append(record)
                    self.out.counts["sessions_corrected"] += 1
        live = {s.session_id(piece[0]) for run in state["runs"]
                for piece in s.pieces(run, self.rules.max_length_ms)}
        for sid, (started_at, first_event_id, last_version) in before.items():
            if sid in after:
                continue
            if sid in live:  # `emit` re-emits it
                state["emitted"][sid] = [started_at, first_event_id, last_version]
                continue
            target = s.locate(now, (started_at, first_event_id), self.rules.max_length_ms)
            self.out.sessions.append(s.merged(sid, profile_id, customer, started_at, target,
                                              s.merged_version(last_version)))
            self.out.counts["sessions_merged"] += 1

    # -- time --------------------------------------------------------------------------------

    def close_due(self) -> None:
        now = self.closing_time()
        while (key := self.schedule.pop_due(now)) is not None:
            state = self.states.get(key) if key in self.states else self.store.get(key)
            if state is None:
                continue
            state = self.state(key)
            due = self.proc.due_at(key, state)
            if due is not None and due < now:
                self.changed.add(key)
                self.close(key, state, now)
                due = self.proc.due_at(key, state)
            if due is not None and due >= now:  # never a past time: that would spin here
                self.schedule.wake(due, key)

    def close(self, key: str, state: dict, now: int) -> None:
        # Bring the live sessions up to date first, so merges are emitted before closing.
        self.emit(key, state)
        keep = []
        profile_id, customer = _ids(key)
        for run in state["runs"]:
            if self.rules.close_at(run) >= now:
                keep.append(run)
                continue
            for piece in s.pieces(run, self.rules.max_length_ms):
                record = s.summary(piece, profile_id, customer, s.CLOSED)
                state["emitted"].pop(record["session_id"], None)
                self.out.sessions.append(record)
                self.out.counts["sessions_closed"] += 1
            # kept: a late touch may still join it, and a later login claim a device's
            self.archive.put(key, state, [run])
        state["runs"] = keep
        index = state.get("archive")
        if index:
            latest = max([end for _, end in index] + [run[-1][AT] for run in keep])
            self.archive.prune(key, state, latest, self.rules.gap_ms)
            expires = self.archive.expires_at(state)
            if not keep and expires is not None and expires < now:
                self.forget(key, state)  # idle for the whole window
        days = state.get("seen")  # ids kept by an earlier version expire by its rule
        if days and not state["runs"] and (days[-1] + 1) * DAY_MS + DEDUP_MS < now:
            self.forget_seen(key, state)
        if key.startswith(CUSTOMER):
            _note_moved(state)

    # -- output ------------------------------------------------------------------------------

    def emit(self, key: str, state: dict) -> None:
        """Emit every live session whose state changed, and mark the ones merged away."""
        profile_id, customer = _ids(key)
        force = key in self.reemit
        emitted = state["emitted"]
        live = {}
        for run in state["runs"]:
            for piece in s.pieces(run, self.rules.max_length_ms):
                record = s.summary(piece, profile_id, customer, s.OPEN)
                live[record["session_id"]] = (record, piece[0][EVENT_ID])
        for sid, (started_at, first_event_id, last_version) in list(emitted.items()):
            if sid in live:
                continue
            target = s.locate(state["runs"], (started_at, first_event_id),
                              self.rules.max_length_ms) or s.locate(
                self.archive.near(key, state, started_at, started_at, 0), (
                    started_at, first_event_id), self.rules.max_length_ms)
            if target == sid:  # closed meanwhile (a device's session, now the customer's)
                del emitted[sid]
                continue
            self.out.sessions.append(s.merged(sid, profile_id, customer, started_at, target,
                                              s.merged_version(last_version)))
            self.out.counts["sessions_merged"] += 1
            del emitted[sid]
        for sid, (record, first_event_id) in live.items():
            last = emitted.get(sid)
            if force or last is None or last[2] != record["version"]:
                self.out.sessions.append(record)
                emitted[sid] = [record["started_at"], first_event_id, record["version"]]

    def finish(self) -> None:
        for key in self.changed:
            state = self.states.get(key)
            if state is None:
                continue
            if state["runs"] or state["emitted"]:
                self.emit(key, state)
            # A customer's devices are kept after their sessions close: `kizuna erase` must
            # find the links to undo.
            if state["runs"] or state["emitted"] or state.get("archive") \
                    or state.get("seen") or state.get("linked_to") or state.get("devices"):
                self.store[key] = state
            elif key in self.store:
                del self.store[key]
        self.archive.flush()
        for ids_key in self.seen_changed:
            if self.seen[ids_key]:
                self.store[ids_key] = self.seen[ids_key]
            elif ids_key in self.store:
                del self.store[ids_key]
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


def _claimable(runs: list[list[list]], login: int) -> list[list[list]]:
    """The runs of a device that a login at event time `login` claims: those ending within
    30 days before it, and every run that reaches the login or comes after it. A function of
    each run and the login alone, so what a login claims does not depend on how far the
    device's partition had got when the link came, nor on which of the device's touches
    came after it (`before_login`)."""
    return [run for run in runs if run[-1][AT] >= login - DEVICE_HISTORY_MS]


def _transfer(customer: str, device: str, at: int, runs: list | None = None,
              emitted: dict | None = None) -> dict:
    """A device's state for its customer, linked at event time `at`; empty when the device
    has nothing to give."""
    return {"kind": "transfer", "customer_id": customer, "anonymous_id": device, "at": at,
            "runs": runs or [], "emitted": emitted or {}}


def _note_moved(state: dict) -> None:
    """Note the latest login whose claimed touches a customer's open runs hold: a touch
    before it goes through `reform`; one after it cannot change what that login decided,
    and is inserted by the plain gap rule (the same result, see `sessions.build`)."""
    logins = [touch[MOVED_AT] for run in state["runs"]
              for touch in run if len(touch) > MOVED_AT]
    if logins:
        state["moved"] = max(logins)
    else:
        state.pop("moved", None)


def _readable(state: object) -> bool:
    """Whether a stored value is a profile's state this version can read."""
    return isinstance(state, dict) and isinstance(state.get("runs"), list) \
        and isinstance(state.get("emitted"), dict)


def _seen_key(key: str, day: int) -> str:
    """The state key of the ids a profile kept for a day of event time."""
    return f"{SEEN}{key}:{day}"


def _ids(key: str) -> tuple[str, str | None]:
    """(profile_id, customer_id) of a state key."""
    profile = key[2:]
    return profile, profile if key.startswith(CUSTOMER) else None


def _json(message: dict) -> bytes:
    return json.dumps(message, sort_keys=True, default=repr).encode()
