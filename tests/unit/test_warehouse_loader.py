"""The warehouse loader's retry and dedup-token logic, pure (a fake insert, no ClickHouse)."""

from __future__ import annotations

import threading

from services.common.settings import Settings, load
from services.warehouse.loader import Loader, dedup_tokens


class Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


def test_dedup_tokens_name_each_tables_offset_ranges() -> None:
    messages = [Message("kizuna.touchpoints.raw", 1, 7), Message("kizuna.touchpoints.raw", 1, 5),
                Message("kizuna.touchpoints.raw", 0, 2), Message("kizuna.alerts.churn_risk", 3, 9),
                Message("kizuna.alerts.cart_abandonment", 0, 4)]
    assert dedup_tokens(messages, "kizuna.") == {
        "touchpoints": "kizuna.touchpoints.raw:0:2-2;kizuna.touchpoints.raw:1:5-7",
        "alerts": "kizuna.alerts.cart_abandonment:0:4-4;kizuna.alerts.churn_risk:3:9-9",
    }


def test_failed_inserts_are_retried_identically_until_they_succeed() -> None:
    seen = []

    def insert(table: str, rows: list, columns: list, token: str | None) -> None:
        seen.append((table, list(rows), token))
        if len(seen) < 3:
            raise RuntimeError("ClickHouse is down")

    loader = Loader(load(Settings, {}), insert, 0.25)
    loader.stopping.wait = lambda delay: False  # no back-off sleeping in a unit test
    assert loader.insert_until_done({"alerts": [["a1"]]}, {"alerts": "tok"}) is True
    assert seen == [("alerts", [["a1"]], "tok")] * 3


def test_stopping_while_inserts_fail_reports_the_batch_undone() -> None:
    def insert(table: str, rows: list, columns: list, token: str | None) -> None:
        raise RuntimeError("ClickHouse is down")

    loader = Loader(load(Settings, {}), insert, 0.25)
    threading.Timer(0.2, loader.stopping.set).start()
    assert loader.insert_until_done({"touchpoints": [["e1"]]}, {}) is False  # nothing commits
