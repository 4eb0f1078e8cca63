"""Identity across partitions: a device linked to its customer at a login (contract section 2).

A touch with both ids sends `link` to the device's partition. There the device, when not
linked yet, links to that customer and sends what its login claims as `transfer` (its runs
ending within 30 days before the login, and its live sessions); the customer's partition
forms them again with its own sessions open at the login's event time (`receive`, through
`reform`). A device linked to another customer refuses, and the refused link is a dead letter
(`identity_conflict`): two known customers are never merged. `kizuna erase` undoes the links
(`erase`, then `unlink` on each device's partition).
"""

from __future__ import annotations

from services.domain.eventtime import DEVICE_HISTORY_MS
from services.domain.touch import AT, EVENT_ID, counts_at, moved_touch
from services.sessionizer import closing, forming, handoff
from services.sessionizer import sessions as s
from services.sessionizer.batch import Batch
from services.sessionizer.items import DeadLetter, json_payload
from services.sessionizer.state import (
    CUSTOMER,
    DEVICE,
    ProfileState,
    held_key,
    linked_device,
    login_key,
    new_profile,
    profile_ids,
)

#: Most touches in one message of a device's history on its way to the customer.
DEVICE_HISTORY_TOUCHES = 2000


def before_login(batch: Batch, key: str, state: ProfileState, touch: list, at: int) -> None:
    """A linked device's touch from before its login, come after the link (the device's
    partition was behind the customer's, or the touch is late). It goes where it would
    have gone had it come first: with the device's history the login claims (ending
    within 30 days before it, `_claimable`) to the customer, counted from the login
    (`moved_touch`); else it stays the device's, in an anonymous session."""
    if batch.took(key, touch[AT], touch[EVENT_ID]):
        batch.out.counts["duplicates"] += 1
        return
    batch.changed.add(key)
    held = [x for run in state["runs"] + batch.archive.runs(key, state) for x in run]
    runs = s.build(held + [touch], batch.rules.gap_ms, batch.rules.close_at)
    claimed = _claimable(runs, at)
    if any(s.contains([run], touch[AT], touch[EVENT_ID]) for run in claimed):
        # the customer's: kept in the device's history only (what the login claims, and
        # its duplicates), never a session of the device's own
        old = batch.archive.near(key, state, touch[AT], touch[AT], batch.rules.gap_ms)
        joined = s.build([x for run in old for x in run] + [touch], batch.rules.gap_ms,
                         batch.rules.close_at)
        batch.archive.remove(key, state, old)
        batch.archive.put(key, state, joined)
        batch.out.handoffs.append((state["linked_to"], handoff.forward(
            state["linked_to"], moved_touch(touch, at))))
    else:
        forming.reform(batch, key, state, [touch])


def erase(batch: Batch, customer: str) -> None:
    """Forget the customer, and tell each device linked to them to forget the link."""
    key = CUSTOMER + customer
    state = batch.state(key)
    for device in state.get("devices", []):
        batch.out.handoffs.append((device, handoff.forget(device, customer)))
        batch.logins.pop(login_key(customer, device), None)
    batch.logins.pop(held_key(customer), None)
    batch.ids.drop(key, state)
    batch.states[key] = new_profile(batch.partition)
    batch.changed.add(key)
    batch.out.erased.append(customer)
    batch.out.attributed.pop(customer, None)
    batch.out.counts["erased"] += 1


def link(batch: Batch, message: handoff.Link) -> None:
    device, customer = message["anonymous_id"], message["customer_id"]
    key = DEVICE + device
    state = batch.state(key)
    linked = state.get("linked_to")
    at = message["event_time"]
    if linked == customer:
        if at < state.get("linked_at", at):
            claim_earlier(batch, key, state, customer, at)
        else:  # linked at this login or an earlier one: nothing more to give
            batch.out.handoffs.append((customer, handoff.transfer(customer, device, at)))
        return
    if linked:
        batch.out.handoffs.append((customer, handoff.transfer(customer, device, at)))
        batch.out.counts["identity_conflicts"] += 1
        batch.out.dead_letters.append(DeadLetter(
            "identity_conflict",
            f"anonymous_id {device!r} is linked to customer {linked!r}; event "
            f"{message['event_id']!r} links it to {customer!r}: two known customers are "
            "never merged, the event counts for its own customer only",
            json_payload(message), None))
        return
    batch.out.counts["identity_links"] += 1
    batch.changed.add(key)
    # Its closed sessions travel as touches too: on the customer's side they may merge
    # with the session of the login itbatch.
    claimed = _claimable(state["runs"] + batch.archive.runs(key, state), at)
    emitted = {}
    profile_id, _ = profile_ids(key)
    for run in state["runs"]:
        live = any(run is c for c in claimed)
        for piece in s.pieces(run, batch.rules.max_length_ms):
            sid = s.session_id(piece[0])
            if live:
                emitted[sid] = state["emitted"].get(sid) or [
                    piece[0][AT], piece[0][EVENT_ID], s.version(len(piece), False, s.OPEN)]
            else:  # over before the login's window: it stays the device's, closed
                batch.out.sessions.append(s.summary(piece, profile_id, None, s.CLOSED))
    for run in claimed:
        if all(run is not r for r in state["runs"]):
            for piece in s.pieces(run, batch.rules.max_length_ms):
                emitted[s.session_id(piece[0])] = [
                    piece[0][AT], piece[0][EVENT_ID],
                    s.version(len(piece), False, s.CLOSED)]
    send_history(batch, customer, device, at, claimed, emitted)
    # The customer holds its touches from now on. The device keeps its history (what
    # its login claims of a touch from before it that comes later: `before_login`).
    batch.archive.put(key, state, state["runs"])
    batch.states[key] = linked_device(batch.partition, customer, at, state)


def claim_earlier(batch: Batch, key: str, state: ProfileState, customer: str,
                  at: int) -> None:
    """A login earlier than the one that linked the device came late: the device's
    history is claimed from it, as if it had come first. Everything it claims goes to
    the customer again, counted from this login (`receive` replaces the copies it
    holds), and the sessions it claims beyond the first login's are retired there."""
    batch.changed.add(key)
    own = state["runs"]  # its anonymous sessions since the link (`before_login`)
    runs = own + batch.archive.runs(key, state)
    before = _claimable(runs, state["linked_at"])
    claimed = _claimable(runs, at)
    emitted = {}
    taken = []
    for run in claimed:
        if any(run is r for r in before):
            continue
        live = any(run is r for r in own)
        for piece in s.pieces(run, batch.rules.max_length_ms):
            sid = s.session_id(piece[0])
            emitted[sid] = state["emitted"].pop(sid, None) if live else None
            emitted[sid] = emitted[sid] or [piece[0][AT], piece[0][EVENT_ID], s.version(
                len(piece), False, s.OPEN if live else s.CLOSED)]
        if live:
            taken.append(run)
    if taken:  # the customer's now, as they would have been had this login come first
        state["runs"] = [run for run in own if all(run is not t for t in taken)]
        batch.archive.put(key, state, taken)
    send_history(batch, customer, key[len(DEVICE):], at, claimed, emitted)
    state["linked_at"] = at


def send_history(batch: Batch, customer: str, device: str, at: int,
                 claimed: list[list[list]], emitted: dict) -> None:
    """The runs a login at `at` claims, to the customer, in parts of at most 2,000
    touches (each message well under Kafka's 1 MB), the last one a `transfer` that ends
    the customer's wait."""
    touches = [x for run in claimed for x in run]
    for i in range(0, max(0, len(touches) - DEVICE_HISTORY_TOUCHES), DEVICE_HISTORY_TOUCHES):
        batch.out.handoffs.append((customer, handoff.transfer(
            customer, device, at, [touches[i:i + DEVICE_HISTORY_TOUCHES]], last=False)))
    rest = touches[(max(0, len(touches) - 1) // DEVICE_HISTORY_TOUCHES)
                   * DEVICE_HISTORY_TOUCHES:]
    batch.out.handoffs.append((customer, handoff.transfer(customer, device, at,
                                                         [rest] if rest else [], emitted)))


def receive(batch: Batch, message: handoff.Transfer) -> None:
    customer = message["customer_id"]
    key = CUSTOMER + customer
    state = batch.state(key)
    awaited = state.get("awaiting", [])
    login_at = state.get("login_at", {}).get(message["anonymous_id"])
    if message["anonymous_id"] not in awaited or (
            login_at is not None and message.get("at", login_at) != login_at):
        # Sent again by the device's partition redoing a batch after a crash: its runs are
        # here already, and may have closed since; merging them again would show them
        # twice. Or the answer to a login superseded by an earlier one, whose answer
        # holds all of it.
        batch.out.counts["duplicates"] += 1
        return
    batch.changed.add(key)
    last = message["kind"] == "transfer"  # the others are parts of a long history
    login = login_key(customer, message["anonymous_id"])
    at = (batch.logins.pop(login, None) if last else batch.logins.get(login))
    at = message.get("at", at)  # None: a transfer from before logins were timed
    touches = [touch if at is None or touch[AT] >= at else moved_touch(touch, at)
               for run in message["runs"] for touch in run]
    if last:
        awaited.remove(message["anonymous_id"])
        if not awaited:
            state.pop("awaiting", None)
    # the device's touches before its login count from the login (an earlier login
    # that came late claims some anew: `replace`)
    forming.reform(batch, key, state, touches, replace=True)
    if touches:  # the device's touches now count for the customer
        batch.out.attributed.setdefault(customer, []).extend(touches)
        if state.get("held"):  # a copy held from a later login's claim is superseded
            sent = {x[EVENT_ID] for x in touches}
            state["held"] = [x for x in state["held"] if x[EVENT_ID] not in sent]
            if state["held"]:
                batch.logins[held_key(customer)] = min(map(counts_at, state["held"]))
            else:
                state.pop("held")
                batch.logins.pop(held_key(customer), None)
    if not state.get("awaiting"):  # then the customer's own that waited for them
        state.pop("claiming", None)
        batch.out.attributed.setdefault(customer, []).extend(state.pop("held", []))
        batch.logins.pop(held_key(customer), None)
    for sid, entry in message.get("emitted", {}).items():
        state["emitted"].setdefault(sid, entry)
    due = closing.due_at(batch.rules, state)
    if due is not None:
        batch.schedule.wake(due, key)


def unlink(batch: Batch, message: handoff.Forget) -> None:
    """A device's customer was erased: the device forgets the link and its history."""
    key = DEVICE + message["anonymous_id"]
    if batch.state(key).get("linked_to") == message["customer_id"]:
        batch.ids.drop(key, batch.state(key))
        batch.states[key] = new_profile(batch.partition)
        batch.changed.add(key)


def _claimable(runs: list[list[list]], login: int) -> list[list[list]]:
    """The runs of a device that a login at event time `login` claims: those ending within
    30 days before it, and every run that reaches the login or comes after it. A function of
    each run and the login alone, so what a login claims does not depend on how far the
    device's partition had got when the link came, nor on which of the device's touches
    came after it (`before_login`)."""
    return [run for run in runs if run[-1][AT] >= login - DEVICE_HISTORY_MS]
