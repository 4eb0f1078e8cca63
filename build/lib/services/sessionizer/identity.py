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

from typing import TYPE_CHECKING

from services.domain.eventtime import DEVICE_HISTORY_MS
from services.domain.touch import AT, EVENT_ID, moved_touch
from services.sessionizer import handoff
from services.sessionizer import sessions as s
from services.sessionizer.items import DeadLetter, json_payload
from services.sessionizer.state import (
    CUSTOMER,
    DEVICE,
    ProfileState,
    linked_device,
    new_profile,
    profile_ids,
)

if TYPE_CHECKING:
    from services.sessionizer.processor import _Batch

#: Most touches in one message of a device's history on its way to the customer.
DEVICE_HISTORY_TOUCHES = 2000


class Identity:
    """The identity half of a batch (`processor._Batch` mixes it in)."""

    def before_login(self: _Batch, key: str, state: ProfileState, touch: list, at: int) -> None:
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
            self.out.handoffs.append((state["linked_to"], handoff.forward(
                state["linked_to"], moved_touch(touch, at))))
        else:
            self.reform(key, state, [touch])

    def erase(self: _Batch, customer: str) -> None:
        """Forget the customer, and tell each device linked to them to forget the link."""
        key = CUSTOMER + customer
        state = self.state(key)
        for device in state.get("devices", []):
            self.out.handoffs.append((device, handoff.forget(device, customer)))
            self.logins.pop(f"{customer}\x00{device}", None)
        self.ids.forget(key, state)
        self.states[key] = new_profile(self.partition)
        self.changed.add(key)
        self.out.erased.append(customer)
        self.out.attributed.pop(customer, None)
        self.out.counts["erased"] += 1

    def link(self: _Batch, message: handoff.Link) -> None:
        device, customer = message["anonymous_id"], message["customer_id"]
        key = DEVICE + device
        state = self.state(key)
        linked = state.get("linked_to")
        at = message["event_time"]
        if linked == customer:
            if at < state.get("linked_at", at):
                self.claim_earlier(key, state, customer, at)
            else:  # linked at this login or an earlier one: nothing more to give
                self.out.handoffs.append((customer, handoff.transfer(customer, device, at)))
            return
        if linked:
            self.out.handoffs.append((customer, handoff.transfer(customer, device, at)))
            self.out.counts["identity_conflicts"] += 1
            self.out.dead_letters.append(DeadLetter(
                "identity_conflict",
                f"anonymous_id {device!r} is linked to customer {linked!r}; event "
                f"{message['event_id']!r} links it to {customer!r}: two known customers are "
                "never merged, the event counts for its own customer only",
                json_payload(message), None))
            return
        self.out.counts["identity_links"] += 1
        self.changed.add(key)
        # Its closed sessions travel as touches too: on the customer's side they may merge
        # with the session of the login itself.
        claimed = _claimable(state["runs"] + self.archive.runs(key, state), at)
        emitted = {}
        profile_id, _ = profile_ids(key)
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
        self.send_history(customer, device, at, claimed, emitted)
        # The customer holds its touches from now on. The device keeps its history (what
        # its login claims of a touch from before it that comes later: `before_login`).
        self.archive.put(key, state, state["runs"])
        self.states[key] = linked_device(self.partition, customer, at, state)

    def claim_earlier(self: _Batch, key: str, state: ProfileState, customer: str,
                      at: int) -> None:
        """A login earlier than the one that linked the device came late: the device's
        history is claimed from it, as if it had come first. Everything it claims goes to
        the customer again, counted from this login (`receive` replaces the copies it
        holds), and the sessions it claims beyond the first login's are retired there."""
        self.changed.add(key)
        runs = self.archive.runs(key, state)
        before = _claimable(runs, state["linked_at"])
        claimed = _claimable(runs, at)
        emitted = {}
        for run in claimed:
            if any(run is r for r in before):
                continue
            for piece in s.pieces(run, self.rules.max_length_ms):
                emitted[s.session_id(piece[0])] = [piece[0][AT], piece[0][EVENT_ID],
                                                   s.version(len(piece), False, s.CLOSED)]
        self.send_history(customer, key[len(DEVICE):], at, claimed, emitted)
        state["linked_at"] = at

    def send_history(self: _Batch, customer: str, device: str, at: int,
                     claimed: list[list[list]], emitted: dict) -> None:
        """The runs a login at `at` claims, to the customer, in parts of at most 2,000
        touches (each message well under Kafka's 1 MB), the last one a `transfer` that ends
        the customer's wait."""
        touches = [x for run in claimed for x in run]
        for i in range(0, max(0, len(touches) - DEVICE_HISTORY_TOUCHES), DEVICE_HISTORY_TOUCHES):
            self.out.handoffs.append((customer, handoff.transfer(
                customer, device, at, [touches[i:i + DEVICE_HISTORY_TOUCHES]], last=False)))
        rest = touches[(max(0, len(touches) - 1) // DEVICE_HISTORY_TOUCHES)
                       * DEVICE_HISTORY_TOUCHES:]
        self.out.handoffs.append((customer, handoff.transfer(customer, device, at,
                                                             [rest] if rest else [], emitted)))

    def receive(self: _Batch, message: handoff.Transfer) -> None:
        customer = message["customer_id"]
        key = CUSTOMER + customer
        state = self.state(key)
        awaited = state.get("awaiting", [])
        login_at = state.get("login_at", {}).get(message["anonymous_id"])
        if message["anonymous_id"] not in awaited or (
                login_at is not None and message.get("at", login_at) != login_at):
            # Sent again by the device's partition redoing a batch after a crash: its runs are
            # here already, and may have closed since; merging them again would show them
            # twice. Or the answer to a login superseded by an earlier one, whose answer
            # holds all of it.
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
            awaited.remove(message["anonymous_id"])
            if not awaited:
                state.pop("awaiting", None)
        # the device's touches before its login count from the login (an earlier login
        # that came late claims some anew: `replace`)
        self.reform(key, state, touches, replace=True)
        if touches:  # the device's touches now count for the customer
            self.out.attributed.setdefault(customer, []).extend(touches)
        if not state.get("awaiting"):  # then the customer's own that waited for them
            state.pop("claiming", None)
            self.out.attributed.setdefault(customer, []).extend(state.pop("held", []))
        for sid, entry in message.get("emitted", {}).items():
            state["emitted"].setdefault(sid, entry)
        due = self.proc.due_at(key, state)
        if due is not None:
            self.schedule.wake(due, key)

    def unlink(self: _Batch, message: handoff.Forget) -> None:
        """A device's customer was erased: the device forgets the link and its history."""
        key = DEVICE + message["anonymous_id"]
        if self.state(key).get("linked_to") == message["customer_id"]:
            self.ids.forget(key, self.state(key))
            self.states[key] = new_profile(self.partition)
            self.changed.add(key)


def _claimable(runs: list[list[list]], login: int) -> list[list[list]]:
    """The runs of a device that a login at event time `login` claims: those ending within
    30 days before it, and every run that reaches the login or comes after it. A function of
    each run and the login alone, so what a login claims does not depend on how far the
    device's partition had got when the link came, nor on which of the device's touches
    came after it (`before_login`)."""
    return [run for run in runs if run[-1][AT] >= login - DEVICE_HISTORY_MS]
