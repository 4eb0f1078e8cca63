"""The three stages' pure logic chained as on Kafka, without Kafka: for tests that deliver the
same events in many ways and compare what ClickHouse would show.

Raw touchpoints go to the partition of their profile (Java-compatible murmur2, as the
collector produces them); the sessionizer's handoffs to the partition of their key, its
event-time announcements to every partition, its attributed messages (bytes, as on Kafka) to
the scorer and alerting, each with a consumer position of its own. `run(rnd)` interleaves
the stages the way a backlog can: random batch sizes, the two sessionizer inputs read in any
interleaving (each in order), the next stages lagging behind by any amount.

`tables()` gives each result as the warehouse keeps it: the highest version of each session,
profile and alert (ties: the later write), without merged sessions and withdrawn alerts.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import orjson
from aiokafka.partitioner import murmur2

from services.alerting.carts import CartRules
from services.alerting.churn import ChurnRules
from services.alerting.processor import CART, AlertProcessor, alert_record, churn_record
from services.common.weights_file import load_weights
from services.domain import attributed
from services.domain.weights import Weights
from services.engagement_scorer.batch import score_batch
from services.sessionizer.processor import (
    PartitionProcessor,
    Touchpoint,
    Watermark,
    handoffs_by_partition,
)
from services.sessionizer.sessions import SessionRules


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class Consumer:
    """A consumer group's position in each partition of the attributed topic."""

    positions: list[int]

    def take(self, log: list[bytes], p: int, n: int) -> list[bytes]:
        start = self.positions[p]
        self.positions[p] = min(len(log), start + n)
        return log[start:self.positions[p]]


@dataclass
class PurePipeline:
    partitions: int = 4
    rules: SessionRules = field(default_factory=SessionRules)
    cart_rules: CartRules = field(default_factory=CartRules)
    churn_rules: ChurnRules = field(default_factory=ChurnRules)
    weights: Weights = field(default_factory=load_weights)
    #: The wall clock alerting measures the correction horizon from (None: event time only).
    now: int | None = None
    #: Touches per attributed message at most: fewer splits a batch's output over messages.
    message_touches: int = attributed.MESSAGE_TOUCHES

    def __post_init__(self) -> None:
        n = self.partitions
        self.session_store: dict = {}
        self.sessionizer = PartitionProcessor(self.rules, self.session_store, n)
        self.scorer_store: dict = {}
        self.alert_store: dict = {}
        self.alerting = AlertProcessor(self.cart_rules, self.weights, self.alert_store,
                                       self.churn_rules)
        self.raw: list[deque] = [deque() for _ in range(n)]
        self.handoffs: list[deque] = [deque() for _ in range(n)]
        self.attributed: list[list[bytes]] = [[] for _ in range(n)]
        self.scorer_at = Consumer([0] * n)
        self.alerting_at = Consumer([0] * n)
        self.sessions: list[dict] = []
        self.profiles: list[dict] = []
        self.alerts: list[dict] = []
        self.dead_letters: list = []
        #: (customer, touch time, settled) of each late touch alerting decided again for
        self.replayed: list = []

    # -- input ---------------------------------------------------------------------------------

    def send(self, records: list[dict]) -> PurePipeline:
        """Touchpoint records (as the collector writes them), each to its profile's partition."""
        for record in records:
            key = record["customer_id"] or record["anonymous_id"]
            self.raw[partition_of(key, self.partitions)].append(Touchpoint(record))
        return self

    def watermark(self, t: int) -> PurePipeline:
        """`kizuna import --until`: event time moves on to `t` on every partition."""
        for q in self.raw:
            q.append(Watermark(t))
        return self

    # -- running -------------------------------------------------------------------------------

    def run(self, rnd: random.Random | None = None, *, batch: int = 1000) -> PurePipeline:
        """Process everything queued. With `rnd`, in a random interleaving and random batch
        sizes up to `batch`; without, each partition in turn, whole batches, in order."""
        while True:
            moves = [(stage, p) for p in range(self.partitions) for stage in (0, 1, 2)
                     if self._pending(stage, p)]
            if not moves:
                return self
            if rnd is None:
                for stage, p in moves:
                    self._step(stage, p, batch, None)
            else:
                stage, p = rnd.choice(moves)
                self._step(stage, p, rnd.randint(1, batch), rnd)

    def _pending(self, stage: int, p: int) -> bool:
        if stage == 0:
            return bool(self.raw[p] or self.handoffs[p])
        at = (self.scorer_at if stage == 1 else self.alerting_at).positions[p]
        return at < len(self.attributed[p])

    def _step(self, stage: int, p: int, n: int, rnd: random.Random | None) -> None:
        if stage == 0:
            self._sessionize(p, n, rnd)
        elif stage == 1:
            self._score(p, self.scorer_at.take(self.attributed[p], p, n))
        else:
            self._alert(p, self.alerting_at.take(self.attributed[p], p, n))

    def _sessionize(self, p: int, n: int, rnd: random.Random | None) -> None:
        raw, hand = self.raw[p], self.handoffs[p]
        take_raw = min(len(raw), n if rnd is None else rnd.randint(0, n))
        take_hand = min(len(hand), n if rnd is None else rnd.randint(0, n))
        if take_raw + take_hand == 0:  # at least one item
            take_raw, take_hand = (1, 0) if raw else (0, 1)
        a = [raw.popleft() for _ in range(take_raw)]
        b = [hand.popleft() for _ in range(take_hand)]
        items: list = []
        while a or b:  # any interleaving of the two topics, each in order
            pick_a = a and (not b or (rnd.random() < 0.5 if rnd else False))
            items.append(a.pop(0) if pick_a else b.pop(0))
        out = self.sessionizer.process(p, items)
        self.sessions += out.sessions
        self.dead_letters += out.dead_letters
        routed = handoffs_by_partition(out, p, self.partitions,
                                       lambda key: partition_of(key, self.partitions))
        for q, handoffs in routed.items():
            self.handoffs[q].extend(handoffs)
        if out.attributed or out.erased or out.output_time is not None:
            self.attributed[p] += attributed.encode(self.sessionizer.output_time(p),
                                                    out.attributed, out.erased,
                                                    self.message_touches, out.held_time)

    @staticmethod
    def _units(messages: list[bytes]) -> list[dict]:
        return [u for m in messages for u in attributed.units(m)]

    def _score(self, p: int, messages: list[bytes]) -> None:
        scored = score_batch(self.scorer_store, self.weights, self._units(messages))
        assert not scored.corrupt, scored.corrupt
        self.profiles += scored.profiles

    def _alert(self, p: int, messages: list[bytes]) -> None:
        alerted = self.alerting.process(p, self._units(messages), **(
            {"now": self.now} if self.now is not None else {}))
        self.replayed += alerted.replayed
        for customer, kind, alert, snapshot in alerted.alerts:
            record = alert_record(customer, alert, snapshot, 0, self.cart_rules) \
                if kind == CART else churn_record(customer, alert, snapshot, 0)
            self.alerts.append(record)

    # -- what the warehouse shows --------------------------------------------------------------

    def tables(self) -> dict[str, list]:
        sessions = _latest(self.sessions, "session_id")
        profiles = _latest(self.profiles, "customer_id")
        alerts = _latest(self.alerts, "alert_id")
        return {
            "sessions": _rows(r for r in sessions if r["status"] != "merged"),
            "customer_profiles": _rows(profiles),
            "alerts": _rows({k: v for k, v in r.items() if k not in ("version", "emitted_at")}
                            for r in alerts if r["status"] != "withdrawn"),
        }


def _latest(records: list[dict], key: str) -> list[dict]:
    """ReplacingMergeTree(version): the highest version of each key, the later write on a tie."""
    latest: dict[str, dict] = {}
    for record in records:
        have = latest.get(record[key])
        if have is None or record["version"] >= have["version"]:
            latest[record[key]] = record
    return list(latest.values())


def _rows(records) -> list:  # noqa: ANN001 - any iterable of dicts
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode() for r in records)
