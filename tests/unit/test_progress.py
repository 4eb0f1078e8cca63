"""A stage's progress on the partitions it holds (services/common/progress.py), with the
broker's end offsets given by hand and the clock moved on by hand."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from services.common import progress as p


class Clock:
    now = 1000.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


@pytest.fixture()
def watcher(monkeypatch) -> p.Progress:
    monkeypatch.setattr(p.time, "monotonic", Clock.monotonic)
    w = p.Progress("teststage", {"bootstrap.servers": "127.0.0.1:1"}, stall_seconds=60)
    w.ends = {}
    monkeypatch.setattr(w, "_ends", lambda held: {tp: w.ends[tp] for tp in held if tp in w.ends})
    return w


def test_a_partition_with_messages_waiting_and_no_progress_is_stalled(watcher) -> None:
    watcher.ends = {("raw", 0): 100, ("raw", 1): 50}
    watcher.check({("raw", 0): 10, ("raw", 1): 49})  # 1: all taken
    Clock.now += 59
    assert watcher.stalled() == [] and watcher.problem() is None
    watcher.check({("raw", 0): 10, ("raw", 1): 49})
    Clock.now += 2
    assert watcher.stalled() == ["raw[0]"] and watcher.lag() == 89
    assert "raw[0]" in watcher.problem() and "raw[1]" not in watcher.problem()
    watcher.check({("raw", 0): 11, ("raw", 1): 49})  # it moved: not stalled any more
    assert watcher.stalled() == []


def test_a_partition_no_longer_held_is_forgotten(watcher) -> None:
    watcher.ends = {("raw", 0): 100}
    watcher.check({("raw", 0): 10})
    Clock.now += 120
    watcher.check({})  # revoked in a rebalance
    assert watcher.stalled() == [] and watcher.lag() == 0


def test_a_client_error_that_blocks_it_is_the_problem_for_a_while(watcher) -> None:
    watcher.client_error(KafkaError(KafkaError._TRANSPORT, "disconnected"))
    assert watcher.problem() is None  # a passing error
    watcher.client_error(KafkaError(KafkaError._AUTHENTICATION, "invalid credentials"))
    assert "invalid credentials" in watcher.problem()
    Clock.now += 121
    assert watcher.problem() is None
