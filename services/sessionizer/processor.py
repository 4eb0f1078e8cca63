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
`l:` (its logins waiting for a device). Each batch (`batch.Batch`) reads what it needs, and
writes each changed key once at the end. Its work is in functions over it: this module's
input and end of a batch, forming sessions (forming.py), closing and emitting them
(closing.py), identity (identity.py).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from services.common.schedule import Schedule
from services.domain.eventtime import NEVER
from services.domain.touch import AT, EVENT_ID, touch_of
from services.sessionizer import closing, forming, handoff, identity
from services.sessionizer.batch import ANNOUNCED, LOGINS, STREAM_TIME, Batch
from services.sessionizer.items import DeadLetter, Erase, Handoff, Outputs, Touchpoint, Watermark
from services.sessionizer.sessions import SessionRules
from services.sessionizer.state import (
    CUSTOMER,
    DEVICE,
    ProfileState,
    awaiting,
    kept,
    login_key,
    readable,
)

# the inputs and outputs (from items.py), and how handoffs are routed
__all__ = ["DeadLetter", "Erase", "Handoff", "Outputs", "PartitionProcessor", "Touchpoint",
           "Watermark", "handoff_messages", "handoffs_by_partition"]


def handoff_messages(out: Outputs, partition: int, partitions: int
                     ) -> list[tuple[str | None, dict, int | None]]:
    """What a batch sends through the handoff topic, in order, as (key, message, partition):
    its handoffs, each to the partition of its key (partition None), then its event time
    announced to every partition (key None). The stage produces exactly these."""
    sent: list[tuple[str | None, dict, int | None]] = [
        (key, message, None) for key, message in out.handoffs]
    if out.stream_time is not None:
        announced = handoff.time(partition, out.stream_time)
        sent += [(None, announced, other) for other in range(partitions)]
    return sent


def handoffs_by_partition(out: Outputs, partition: int, partitions: int,
                          partition_of: Callable[[str], int]) -> dict[int, list[Handoff]]:
    """`handoff_messages` by target partition, as the handoff topic delivers them: for
    running the processor without Kafka (tests, benchmarks)."""
    routed: dict[int, list[Handoff]] = {}
    for key, message, target in handoff_messages(out, partition, partitions):
        where = partition_of(key) if target is None else target
        routed.setdefault(where, []).append(Handoff(message))
    return routed


class PartitionProcessor:
    """Processes batches of one stage process's partitions over a shared state mapping."""

    def __init__(self, rules: SessionRules, store: MutableMapping[str, Any],
                 partitions: int = 1) -> None:
        self.rules = rules
        self.store = store
        self.partitions = partitions
        self._deadlines: dict[int, Schedule] = {}

    def process(self, partition: int, items: list) -> Outputs:
        batch = Batch(self.rules, self.store, partition, self.deadlines(partition),
                      self.announced(partition), self.output_time(partition))
        for item in items:
            if isinstance(item, Touchpoint):
                touchpoint(batch, item)
            elif isinstance(item, Watermark):
                batch.stream_time = max(batch.stream_time, item.time)
            elif isinstance(item, Erase):
                identity.erase(batch, item.customer_id)
            else:
                take_handoff(batch, item.message)
        closing.close_due(batch)
        finish(batch)
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

    def drop_index(self, partition: int) -> None:
        """After a rebalance took `partition` away; rebuilt from the store if it comes back."""
        self._deadlines.pop(partition, None)

    def deadlines(self, partition: int) -> Schedule:
        schedule = self._deadlines.get(partition)
        if schedule is None:  # first batch of this partition in this process: index the store
            due = ((closing.due_at(self.rules, state), key)
                   for key, state in list(self.store.items())
                   if key[:2] in (CUSTOMER, DEVICE) and readable(state)
                   and state.get("p") == partition)
            schedule = Schedule((t, key) for t, key in due if t is not None)
            self._deadlines[partition] = schedule
        return schedule


def touchpoint(batch: Batch, tp: Touchpoint) -> None:
    record = tp.record
    t = record["event_time"]
    batch.out.counts["events"] += 1
    customer, device = record.get("customer_id"), record.get("anonymous_id")
    touch = touch_of(record)
    key = CUSTOMER + customer if customer else DEVICE + device
    late = batch.rules.too_late(t, batch.stream_time)
    if late:
        if batch.took(key, t, record["event_id"]):
            # delivered again (a client's resend, a producer's retry): a duplicate, not late
            batch.out.counts["duplicates"] += 1
            batch.reemit.add(key)
            batch.changed.add(key)
            if customer:
                batch.out.attributed.setdefault(customer, []).append(touch)
            return
        # Late: it still counts, and corrects the sessions it belongs to (`forming.reform`).
        batch.out.counts["corrections"] += 1
        batch.out.late.append((record["channel"], batch.stream_time - t))
    elif t < batch.stream_time:
        batch.out.counts["late"] += 1
    batch.stream_time = max(batch.stream_time, t)
    if customer:
        state = batch.touched(key)
        batch.attribute(customer, state, touch, late)
        if device and logs_in(state, device, t):
            # Its sessions wait for the device's answer before they may close.
            if device not in awaiting(state):
                state.setdefault("awaiting", []).append(device)
            if not late:  # the next stages are past a late login already
                login = login_key(customer, device)
                batch.logins[login] = min(batch.logins.get(login, t), t)
            else:  # theirs go out after the device's history (`Batch.attribute`)
                state["claiming"] = min(state.get("claiming", t), t)
            batch.out.handoffs.append((device, handoff.link(
                device, customer, record["event_id"], t)))
        forming.add(batch, key, state, touch)
        return
    state = batch.state(key)
    if state.get("linked_to"):
        at = state.get("linked_at")
        if at is not None and t < at:
            identity.before_login(batch, key, state, touch, at)
            return
        batch.out.handoffs.append((state["linked_to"],
                                   handoff.forward(state["linked_to"], touch)))
        return
    batch.changed.add(key)
    forming.add(batch, key, state, touch)


def logs_in(state: ProfileState, device: str, t: int) -> bool:
    """Whether a touch with both ids at `t` links `device` to the customer: the device's
    first login, or one earlier than the login that linked it (it came late: the device's
    history is claimed from there, as if it had come first)."""
    devices = state.setdefault("devices", [])
    login_at = state.setdefault("login_at", {})
    if device not in devices:
        devices.append(device)
    elif device not in login_at or t >= login_at[device]:
        return False  # linked already at this login or an earlier one
    login_at[device] = t
    return True


def take_handoff(batch: Batch, message: dict) -> None:
    """A message of the handoff topic (handoff.py)."""
    kind = message["kind"]
    if kind == "forget":
        identity.unlink(batch, message)
    elif kind == "link":
        identity.link(batch, message)
    elif kind in ("transfer", "transfer_part"):
        identity.receive(batch, message)
    elif kind == "time":
        q = message["partition"]
        if message["t"] > batch.announced[q]:
            batch.announced[q] = message["t"]
            batch.aligned = min(batch.announced)
    elif kind == "forward":
        touch = message["touch"]
        key = CUSTOMER + message["customer_id"]
        if batch.took(key, touch[AT], touch[EVENT_ID]):
            # sent again by a batch redone after a crash, or a copy delivered again
            batch.out.counts["duplicates"] += 1
            return
        state = batch.touched(key)
        forming.add(batch, key, state, touch)
        batch.attribute(message["customer_id"], state, touch,
                        touch[AT] + batch.rules.lateness_ms < batch.stream_time)


def finish(batch: Batch) -> None:
    """The end of the batch: each changed state written once (or deleted when it holds
    nothing), the live sessions emitted, the partition's times written and announced."""
    store = batch.store
    for key in batch.changed:
        state = batch.states.get(key)
        if state is None:
            continue
        if state["runs"] or state["emitted"]:
            closing.emit(batch, key, state)
        if kept(state):
            store[key] = state
        elif key in store:
            del store[key]
    batch.ids.flush()
    if batch.stream_time != batch.start_time:
        store[f"{STREAM_TIME}{batch.partition}"] = batch.stream_time
        batch.out.stream_time = batch.stream_time
    if batch.announced != batch.start_announced:
        store[f"{ANNOUNCED}{batch.partition}"] = batch.announced
    if batch.logins != batch.start_logins:
        store[f"{LOGINS}{batch.partition}"] = batch.logins
    batch.out.held_time = batch.start_output
    output_time = min([min(batch.announced), *batch.logins.values()])
    if output_time != batch.start_output:
        batch.out.output_time = output_time
