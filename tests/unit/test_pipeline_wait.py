"""`kizuna wait`'s rule, on a simulated pipeline (no broker): it returns at rest, and in live
mode, where the sessionizer's tick keeps one record of event time in flight."""

from __future__ import annotations

import pytest

from services.common.errors import KizunaError
from services.common.settings import Settings, load
from services.localstack import pipeline


def simulate(monkeypatch, step) -> list[int]:
    """step(poll) -> {group: (committed, end)} for one partition per group's first input."""
    polls = [0]
    settings = load(Settings, {"KIZUNA_HOME": "/tmp/kizuna-unit"})

    def positions(_settings, group, topics, timeout=10.0):
        return {(topics[0], 0): step(polls[0])[group]}

    def sleep(_seconds):
        polls[0] += 1

    monkeypatch.setattr(pipeline, "check_reachable", lambda s: 1)
    monkeypatch.setattr(pipeline, "group_positions", positions)
    monkeypatch.setattr(pipeline.time, "sleep", sleep)
    clock = iter(range(0, 10**6, 1))
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: next(clock))
    pipeline.wait_caught_up(settings, timeout=200)
    return polls


def test_at_rest_it_returns_when_nothing_is_left_twice(monkeypatch) -> None:
    polls = simulate(monkeypatch, lambda n: {g: (min(n, 5), 5) for g in GROUPS})
    assert polls[0] == 6  # lag 0 from poll 5 on, seen twice


def test_live_it_returns_though_a_tick_record_is_always_in_flight(monkeypatch) -> None:
    # each poll, one more record of event time has arrived and the one before is done
    polls = simulate(monkeypatch, lambda n: {g: (n + 10, n + 11) for g in GROUPS})
    # not at once: each hop of the pipeline has had a round to pass its inputs on
    assert pipeline.PIPELINE_DEPTH < polls[0] < 20


def test_a_stage_that_does_not_move_is_not_caught_up(monkeypatch) -> None:
    def step(n):
        found = {g: (n + 10, n + 11) for g in GROUPS}
        found["kizuna.engagement_scorer"] = (3, n + 11)  # stuck
        return found

    with pytest.raises(KizunaError, match="engagement_scorer lag"):
        simulate(monkeypatch, step)


GROUPS = list(pipeline.stage_inputs(load(Settings, {"KIZUNA_HOME": "/tmp/kizuna-unit"})))
