"""Forming a profile's sessions as its touches come: a touch joins the open runs by the gap
rule (`sessions.insert`), or, when it may belong to a closed session or comes before a login
that claimed a device's touches, the runs around it are formed again from their touches in
event time (`reform`), so the sessions are what the events give, whatever came when.
"""

from __future__ import annotations

from services.domain.eventtime import NEVER
from services.domain.touch import AT, EVENT_ID, MOVED_AT
from services.sessionizer import closing
from services.sessionizer import sessions as s
from services.sessionizer.batch import Batch
from services.sessionizer.state import ProfileState, note_moved


def add(batch: Batch, key: str, state: ProfileState, touch: list) -> None:
    """One touch of the profile's; a duplicate is counted and re-emits the profile."""
    closed_before = batch.closing_time() - batch.rules.lateness_ms
    if len(touch) > MOVED_AT or touch[AT] < max(state.get("moved", NEVER), closed_before):
        # It may join a closed session, come before a login that claimed touches, or be
        # one of those (it joins only the sessions open at its login: `sessions.build`).
        added = reform(batch, key, state, [touch])
    else:
        added = s.insert(state["runs"], touch, batch.rules.gap_ms)
        if added:
            batch.schedule.wake(batch.rules.close_at(state["runs"][0]), key)
    if not added:
        batch.out.counts["duplicates"] += 1
        batch.reemit.add(key)


def plain(state: ProfileState, new: list[list]) -> bool:
    """Whether new touches join the profile's open runs by the plain gap rule alone: no
    claimed touch among them or in the open runs (one counts at its login, not its own
    time), and none with the id of a touch held at another time (`build` replaces it)."""
    if "moved" in state or any(len(x) > MOVED_AT for x in new):
        return False
    ids = {x[EVENT_ID] for x in new}
    return not any(x[EVENT_ID] in ids for run in state["runs"] for x in run)


def reform(batch: Batch, key: str, state: ProfileState, touches: list[list],
           replace: bool = False) -> bool:
    """Add touches that may join closed sessions, or come before a login that claimed a
    device's touches: the profile's open runs and the archived runs around the touches are
    formed again in event time (`sessions.build`). A device's touches claimed at a login
    join the sessions that were open at the login's event time, and only those. Runs that
    event time has closed go back to the archive, re-emitted where they changed; sessions
    absorbed by another are re-emitted as merged. False if every touch was here.
    `replace`: a touch held already but claimed now at another login replaces it."""
    if not touches:
        return False
    rules, archive = batch.rules, batch.archive
    if replace:  # touches held already with another login time are taken anew
        held_as = {x[EVENT_ID]: x for run in state["runs"] + archive.near(
            key, state, min(x[AT] for x in touches), max(x[AT] for x in touches), 0)
            for x in run}
        new = [x for x in touches if held_as.get(x[EVENT_ID]) != x and (
            x[EVENT_ID] in held_as or not batch.took(key, x[AT], x[EVENT_ID]))]
    else:
        new = [x for x in touches if not batch.took(key, x[AT], x[EVENT_ID])]
    if not new:
        return False
    gap = rules.gap_ms
    lo, hi = min(x[AT] for x in new), max(x[AT] for x in new)
    old: list[list[list]] = []
    while True:  # the archived runs around them, and around those
        more = [run for run in archive.near(key, state, lo, hi, gap)
                if all(run is not o for o in old)]
        if not more:
            break
        old += more
        lo = min(lo, *(run[0][AT] for run in more))
        hi = max(hi, *(run[-1][AT] for run in more))
    if old or replace or not plain(state, new):
        replaced = {x[EVENT_ID] for x in new}
        held = [x for run in state["runs"] + old for x in run if x[EVENT_ID] not in replaced]
        runs = s.build(held + new, gap, rules.close_at)
    else:  # the plain gap rule, which is what `build` gives these (its docstring): no need
        # to form every open run again for each touch (a year held open while a device's
        # history is awaited made a second import of it quadratic)
        runs = state["runs"]
        for x in sorted(new, key=lambda x: (x[AT], x[EVENT_ID])):
            s.insert(runs, x, gap)
    now = NEVER if state.get("awaiting") else batch.closing_time()
    closed = [run for run in runs if rules.close_at(run) < now]
    state["runs"] = [run for run in runs if rules.close_at(run) >= now]
    archive.remove(key, state, old)
    archive.put(key, state, closed)
    if new[-1][AT] + rules.lateness_ms < batch.stream_time:
        state["late"] = [max(x[AT] for x in new), batch.stream_time]
    closing.settle(batch, key, state, old, closed, state["runs"] + closed)
    if state["runs"]:
        batch.schedule.wake(min(rules.close_at(run) for run in state["runs"]), key)
    due = closing.due_at(rules, state)
    if due is not None:
        batch.schedule.wake(due, key)
    note_moved(state)
    return True
