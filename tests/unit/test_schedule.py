"""The stages' timer index: one live entry per key, the earliest time asked."""

from __future__ import annotations

from services.common.schedule import Schedule


def due(schedule: Schedule, now: int) -> list[str]:
    out = []
    while (key := schedule.pop_due(now)) is not None:
        out.append(key)
    return out


def test_a_key_wakes_once_at_the_earliest_time_asked() -> None:
    schedule = Schedule()
    for t in (50, 30, 40, 30, 70):
        schedule.wake(t, "a")
    schedule.wake(35, "b")
    assert len(schedule) == 2
    assert due(schedule, 31) == ["a"]  # once, though asked five times
    assert due(schedule, 1000) == ["b"]  # a's later times went with its wake-up
    assert len(schedule) == 0


def test_a_key_taken_off_can_be_asked_again() -> None:
    schedule = Schedule([(10, "a"), (5, "a"), (20, "b")])
    assert due(schedule, 11) == ["a"]
    schedule.wake(15, "a")
    assert due(schedule, 100) == ["a", "b"]  # in time order
