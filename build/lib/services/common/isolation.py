"""Poison records: a batch whose processing raises, pure (no Kafka, no faust).

A stage processes each partition's batch as one transaction: its state writes and its
outputs are held until the batch is through, then applied together (`Transaction`). When
the stage's logic raises:

1. the transaction is rolled back and the whole batch is tried once more: a fault that does
   not come back (a hiccup) costs a retry, nothing else;
2. if it raises again, the batch is bisected: each half is tried in order, and a half that
   goes through is committed; down to the single record (or the smallest message) that
   fails, which is tried twice more alone and, failing the same way both times, is handed to
   `poisoned` (the stage dead-letters it) and skipped;
3. the records around it are processed exactly as if it had never been there, in order.

What is never dead-lettered: a fault outside the stage's logic (Kafka refusing outputs,
ClickHouse away) raises out of here and stops the stage, and the batch is redelivered. So
does a failure that looks systemic rather than a bad record: most of a batch failing alone
(a bug, a missing dependency), or a record failing differently each time.

Reference: Kafka Streams' processing exception handler (KIP-1033), which ends by isolating
the record; here the isolation is the bisection, as a dead-letter queue does per record.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

R = TypeVar("R")
#: More failing records than this share of a batch (of at least `SYSTEMIC_MIN` records) is a
#: systemic failure, not poison: the stage stops instead of dead-lettering them.
SYSTEMIC_SHARE = 0.5
SYSTEMIC_MIN = 8


class Transaction(Protocol):
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class SystemicFailure(Exception):
    """Too much of a batch fails, or fails differently each time: stop, do not dead-letter."""


@dataclass(frozen=True)
class Failure:
    """How a record failed: the exception's type and where it was raised. Two failures of
    the same record with the same signature are the same failure."""

    kind: str
    where: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        return cls(type(exc).__name__, where, str(exc)[:500])

    def same(self, other: Failure) -> bool:
        return (self.kind, self.where) == (other.kind, other.where)

    def describe(self) -> str:
        return f"{self.kind}: {self.message} (at {self.where})"


def process(records: Sequence[R], attempt: Callable[[Sequence[R]], None], txn: Transaction,
            poisoned: Callable[[R, Failure], None]) -> int:
    """Process `records` with `attempt` inside `txn`, isolating poison records; returns how
    many were handed to `poisoned`."""
    try:
        _try(records, attempt, txn)
        return 0
    except Exception:  # noqa: BLE001 - the stage's logic raised: try it once more
        pass
    try:
        _try(records, attempt, txn)
        return 0
    except Exception:  # noqa: BLE001 - twice: look for the record
        pass
    bad: list[tuple[R, Failure]] = []
    _bisect(list(records), attempt, txn, bad, len(records))
    for record, failure in bad:
        poisoned(record, failure)
    return len(bad)


def _try(records: Sequence[R], attempt: Callable[[Sequence[R]], None],
         txn: Transaction) -> None:
    txn.begin()
    try:
        attempt(records)
    except BaseException:
        txn.rollback()
        raise
    txn.commit()


def _bisect(records: list[R], attempt: Callable[[Sequence[R]], None], txn: Transaction,
            bad: list[tuple[R, Failure]], total: int) -> None:
    if not records:
        return
    try:
        _try(records, attempt, txn)
        return
    except Exception as exc:  # noqa: BLE001
        first = Failure.of(exc)
    if len(records) > 1:
        mid = len(records) // 2
        _bisect(records[:mid], attempt, txn, bad, total)
        _bisect(records[mid:], attempt, txn, bad, total)
        return
    try:  # alone, once more: a record that fails twice alone, the same way, is poison
        _try(records, attempt, txn)
        return
    except Exception as exc:  # noqa: BLE001
        again = Failure.of(exc)
    if not again.same(first):
        raise SystemicFailure(f"a record failed two different ways: {first.describe()}; "
                              f"then {again.describe()}")
    bad.append((records[0], again))
    if total >= SYSTEMIC_MIN and len(bad) > SYSTEMIC_SHARE * total:
        raise SystemicFailure(f"{len(bad)} of {total} records fail alone ({again.describe()}):"
                              " not a poison record but a fault of the stage")
