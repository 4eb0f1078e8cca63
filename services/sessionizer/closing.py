"""Closing sessions, and emitting them: a batch's sessions as event time makes them.

A run closes when the aligned event time passes its last touch plus the inactivity gap and
the allowed lateness (`SessionRules.close_at`); its sessions are emitted `closed` and it moves
to the archive, where a late touch can still correct it (`settle` emits what a correction
changed). Live sessions are emitted `open` whenever they change; a session absorbed by another
is emitted `merged`, with the session it went into.
"""

from __future__ import annotations

from services.domain.eventtime import DAY_MS, DEDUP_MS
from services.domain.touch import AT, EVENT_ID
from services.sessionizer import sessions as s
from services.sessionizer.archive import Archive
from services.sessionizer.batch import Batch
from services.sessionizer.sessions import SessionRules
from services.sessionizer.state import CUSTOMER, ProfileState, awaiting, note_moved, profile_ids


def due_at(rules: SessionRules, state: ProfileState) -> int | None:
    """When a profile next needs attention without new input: a run to close, or an idle
    profile's archive to drop (with a retention)."""
    if awaiting(state):
        return None  # waiting for a device's answer; its transfer reschedules
    if state["runs"]:
        return min(rules.close_at(run) for run in state["runs"])
    expires = Archive.expires_at(state, rules.retention_ms)
    if expires is not None:
        return expires
    if state.get("seen"):  # ids an earlier version kept: forgotten the window after
        return (state["seen"][-1] + 1) * DAY_MS + DEDUP_MS
    return None


def settle(batch: Batch, key: str, state: ProfileState, old: list[list[list]],
           closed: list[list[list]], now: list[list[list]]) -> None:
    """Emit what a correction changed among closed sessions: each closed session that is
    new or changed, and each one that an earlier closed session merged into. An earlier
    closed session that is live again is re-emitted by `emit` (it goes into `emitted`)."""
    profile_id, customer = profile_ids(key)
    attributed = customer is not None
    before = {}
    for run in old:
        for piece in s.pieces(run, batch.rules.max_length_ms):
            before[s.session_id(piece[0])] = (piece[0][AT], piece[0][EVENT_ID],
                                              s.version(len(piece), attributed, s.CLOSED))
    after = set()
    for run in closed:
        for piece in s.pieces(run, batch.rules.max_length_ms):
            record = s.summary(piece, profile_id, customer, s.CLOSED)
            after.add(record["session_id"])
            was = before.get(record["session_id"])
            if was is None or was[2] != record["version"]:
                batch.out.sessions.append(record)
                batch.out.counts["sessions_corrected"] += 1
    live = {s.session_id(piece[0]) for run in state["runs"]
            for piece in s.pieces(run, batch.rules.max_length_ms)}
    for sid, (started_at, first_event_id, last_version) in before.items():
        if sid in after:
            continue
        if sid in live:  # `emit` re-emits it
            state["emitted"][sid] = [started_at, first_event_id, last_version]
            continue
        target = s.locate(now, (started_at, first_event_id), batch.rules.max_length_ms)
        batch.out.sessions.append(s.merged(sid, profile_id, customer, started_at, target,
                                          s.merged_version(last_version)))
        batch.out.counts["sessions_merged"] += 1


def close_due(batch: Batch) -> None:
    now = batch.closing_time()
    while (key := batch.schedule.pop_due(now)) is not None:
        state = batch.states.get(key) if key in batch.states else batch.store.get(key)
        if state is None:
            continue
        state = batch.state(key)
        due = due_at(batch.rules, state)
        if due is not None and due < now:
            batch.changed.add(key)
            close(batch, key, state, now)
            due = due_at(batch.rules, state)
        if due is not None and due >= now:  # never a past time: that would spin here
            batch.schedule.wake(due, key)


def close(batch: Batch, key: str, state: ProfileState, now: int) -> None:
    # Bring the live sessions up to date first, so merges are emitted before closing.
    emit(batch, key, state)
    keep = []
    profile_id, customer = profile_ids(key)
    for run in state["runs"]:
        if batch.rules.close_at(run) >= now:
            keep.append(run)
            continue
        for piece in s.pieces(run, batch.rules.max_length_ms):
            record = s.summary(piece, profile_id, customer, s.CLOSED)
            state["emitted"].pop(record["session_id"], None)
            batch.out.sessions.append(record)
            batch.out.counts["sessions_closed"] += 1
        # kept: a late touch may still join it, and a later login claim a device's
        batch.archive.put(key, state, [run])
    state["runs"] = keep
    index = state.get("archive")
    retention = batch.rules.retention_ms
    if index and retention is not None:
        latest = max([end for _, end in index] + [run[-1][AT] for run in keep])
        batch.archive.prune(key, state, latest, batch.rules.gap_ms, retention)
        expires = batch.archive.expires_at(state, retention)
        if not keep and expires is not None and expires < now:
            batch.ids.drop(key, state)  # idle for the whole retention
    days = state.get("seen")  # ids kept by an earlier version expire by its rule
    if days and not state["runs"] and (days[-1] + 1) * DAY_MS + DEDUP_MS < now:
        batch.ids.expire_seen(key, state)
    if key.startswith(CUSTOMER):
        note_moved(state)


def emit(batch: Batch, key: str, state: ProfileState) -> None:
    """Emit every live session whose state changed, and mark the ones merged away.

    A live session already emitted with its current version (its first touch and touch
    count: sessions only gain touches) is not summarised again: during a backlog, when
    the partitions' event times are far apart, a profile holds many open sessions, and
    summarising them all at every batch grew with the backlog."""
    profile_id, customer = profile_ids(key)
    force = key in batch.reemit
    emitted = state["emitted"]
    by_first = {(v[0], v[1]): sid for sid, v in emitted.items()} if not force else {}
    live: dict[str, tuple[dict, str] | None] = {}
    for run in state["runs"]:
        for piece in s.pieces(run, batch.rules.max_length_ms):
            first = piece[0]
            sid = by_first.get((first[AT], first[EVENT_ID]))
            if sid is not None and emitted[sid][2] == s.version(
                    len(piece), customer is not None, s.OPEN):
                live[sid] = None  # unchanged since emitted
                continue
            record = s.summary(piece, profile_id, customer, s.OPEN)
            live[record["session_id"]] = (record, first[EVENT_ID])
    for sid, (started_at, first_event_id, last_version) in list(emitted.items()):
        if sid in live:
            continue
        target = s.locate(state["runs"], (started_at, first_event_id),
                          batch.rules.max_length_ms) or s.locate(
            batch.archive.near(key, state, started_at, started_at, 0), (
                started_at, first_event_id), batch.rules.max_length_ms)
        if target == sid:  # closed meanwhile (a device's session, now the customer's)
            del emitted[sid]
            continue
        batch.out.sessions.append(s.merged(sid, profile_id, customer, started_at, target,
                                          s.merged_version(last_version)))
        batch.out.counts["sessions_merged"] += 1
        del emitted[sid]
    for sid, found in live.items():
        if found is None:
            continue
        record, first_event_id = found
        last = emitted.get(sid)
        if force or last is None or last[2] != record["version"]:
            batch.out.sessions.append(record)
            emitted[sid] = [record["started_at"], first_event_id, record["version"]]
