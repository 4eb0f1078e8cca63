"""Whether a stage makes progress on what it holds: health that tells the truth.

Every few seconds, for each partition of its input the stage holds, the offset it has taken
(what its own bookkeeping says it processed) is set against the partition's end, asked of
the broker with a client of its own (so a consumer that stopped fetching cannot hide its lag
behind stale figures). A partition with messages waiting whose offset has not moved for
`KIZUNA_STALL_SECONDS` is *stalled*: the stage's `/readyz` turns not ready and names it, the
gauge `kizuna_stage_stalled_partitions{stage}` counts it (an alert rule watches it), and
`kizuna status` shows it. So does a Kafka client error that keeps a stage from its cluster
(authentication, TLS), with its reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import Gauge

STALLED = Gauge("kizuna_stage_stalled_partitions",
                "Input partitions this worker holds with messages waiting and no progress "
                "for KIZUNA_STALL_SECONDS", ["stage"])
LAG = Gauge("kizuna_stage_lag_messages",
            "Messages waiting on the input partitions this worker holds, by the broker's end "
            "offsets", ["stage"])
#: Errors that keep a client from its cluster however often it retries.
BLOCKING = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL,
                      KafkaError.TOPIC_AUTHORIZATION_FAILED,
                      KafkaError.GROUP_AUTHORIZATION_FAILED,
                      KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                      KafkaError.SASL_AUTHENTICATION_FAILED})


@dataclass
class Partition:
    taken: int = -1  # the last offset processed
    since: float = field(default_factory=time.monotonic)  # when `taken` last moved
    end: int = 0  # the partition's end offset, by the broker


class Progress:
    """A stage's progress on the partitions it holds (see the module)."""

    def __init__(self, stage: str, client_config: dict, stall_seconds: float) -> None:
        self.stage = stage
        self.stall_seconds = stall_seconds
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.error: tuple[float, str] | None = None  # (when, why) of a blocking client error
        self._config = {**client_config, "group.id": f"{stage}-progress",
                        "enable.auto.commit": False}
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()
        STALLED.labels(stage).set_function(lambda: len(self.stalled()))
        LAG.labels(stage).set_function(self.lag)

    def client_error(self, err: KafkaError) -> None:
        """A librdkafka error_cb: remember one that keeps the stage from its cluster."""
        if err.code() in BLOCKING:
            self.error = (time.monotonic(), err.str())

    def check(self, held: Mapping[tuple[str, int], int]) -> None:
        """Look again: `held` maps each input partition the stage holds now to the last
        offset it processed there. Blocking (asks the broker): run it off the loop."""
        now = time.monotonic()
        ends = self._ends(list(held))
        with self._lock:
            seen = {}
            for tp, offset in held.items():
                have = self.partitions.get(tp) or Partition(since=now)
                if offset != have.taken:
                    have.taken, have.since = offset, now
                if tp in ends:
                    have.end = ends[tp]
                seen[tp] = have
            self.partitions = seen

    def _ends(self, held: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if self._consumer is None:
            self._consumer = Consumer({**self._config, "error_cb": self.client_error})
        ends = {}
        for topic, p in held:
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                               timeout=5, cached=False)
                ends[(topic, p)] = high
            except KafkaException:  # the broker away for now: the last figure stands
                pass
        return ends

    def stalled(self) -> list[str]:
        """`topic[partition]` of each stalled partition."""
        now = time.monotonic()
        with self._lock:
            return [f"{topic}[{p}]" for (topic, p), s in sorted(self.partitions.items())
                    if s.end > s.taken + 1 and now - s.since > self.stall_seconds]

    def lag(self) -> int:
        with self._lock:
            return sum(max(0, s.end - s.taken - 1) for s in self.partitions.values())

    def problem(self) -> str | None:
        """Why the stage is not making progress, or None."""
        if self.error is not None and time.monotonic() - self.error[0] < 2 * self.stall_seconds:
            return f"Kafka: {self.error[1]}"
        stalled = self.stalled()
        if stalled:
            return (f"no progress for over {self.stall_seconds:g} s with messages waiting on "
                    f"{', '.join(stalled)}")
        return None
