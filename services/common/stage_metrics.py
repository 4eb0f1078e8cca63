"""The metrics every stage keeps beside faust's own sensor (`kizuna_<stage>_faust_*`)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

#: How far behind a stage runs, per batch: `wall` from the collector's receipt of the batch's
#: newest event to its processing; `event` from that event's event time (so a replay of old
#: events reads as days behind).
LATENCY = Histogram(
    "kizuna_stage_latency_seconds", "Processing latency of each batch's newest event",
    ["stage", "clock"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400,
             604800))
STATE_KEYS = Gauge("kizuna_stage_state_keys", "Keys in this worker's state table", ["stage"])
POISON = Counter("kizuna_stage_poison_records",
                 "Records a stage could not process, dead-lettered", ["stage", "reason"])


def observe_latency(stage: str, event_time_ms: int | None,
                    received_at_ms: int | None = None) -> None:
    now = time.time()
    if event_time_ms is not None and event_time_ms > 0:
        LATENCY.labels(stage, "event").observe(max(0.0, now - event_time_ms / 1000))
    if received_at_ms is not None and received_at_ms > 0:
        LATENCY.labels(stage, "wall").observe(max(0.0, now - received_at_ms / 1000))
