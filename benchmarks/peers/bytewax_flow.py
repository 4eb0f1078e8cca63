"""The job in Bytewax, as its documentation writes it: `collect_window` with an `EventClock`
and a `SessionWindower` per key, and a `stateful_map` per customer. Run by
`benchmarks.peers.run` in the peers' virtualenv, one worker:

    BENCH_BROKERS=.. BENCH_INPUT=.. BENCH_SESSIONS=.. BENCH_CUSTOMERS=.. \
    BENCH_REPORT=.. python -m bytewax.run benchmarks.peers.bytewax_flow:flow

Reads the input topic to its end (`tail=False`), so it stops by itself. Writes BENCH_REPORT
(JSON) at the first message: its monotonic clock and the CPU seconds used so far (the run is
timed from there to the process's exit: startup does not count, closing the last windows and
flushing the outputs does).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

from benchmarks.peers.job import GAP_MS, MONEY, TouchpointDecoder, purchases, sessions, touch

env = os.environ
BROKERS = [env.get("BENCH_BROKERS", "localhost:9092")]
decode = TouchpointDecoder()


class Progress:
    def __init__(self, report: Path) -> None:
        self.report = report
        self.first = True

    def __call__(self, _step: str, _item) -> None:
        if self.first:
            self.first = False
            self.report.write_text(json.dumps({"first_at": time.monotonic(),
                                               "cpu_at_first": time.process_time()}))


def keyed_touch(message) -> tuple[str, tuple]:
    record = decode(message.value)
    return message.key.decode(), (*touch(record), record["customer_id"] is not None)


def event_time(t: tuple) -> datetime:
    return datetime.fromtimestamp(t[0] / 1000, tz=UTC)


def total(state: dict | None, t: tuple) -> tuple[dict, dict]:
    state = purchases(state, t)
    return state, dict(state)


def as_message(key_value: tuple[str, dict]) -> KafkaSinkMessage:
    key, value = key_value
    return KafkaSinkMessage(key.encode(), json.dumps(value).encode())


flow = Dataflow("kizuna-peer-bench")
messages = op.input("touchpoints", flow, KafkaSource(
    BROKERS, [env.get("BENCH_INPUT", "touchpoints")], tail=False))
op.inspect("progress", messages, Progress(Path(env.get("BENCH_REPORT", "bytewax.json"))))
touches = op.map("decode", messages, keyed_touch)

clock = win.EventClock(event_time, wait_for_system_duration=timedelta(0))
windows = win.collect_window("sessions", touches, clock,
                             win.SessionWindower(gap=timedelta(milliseconds=GAP_MS)))
found = op.flat_map("pieces", windows.down,
                    lambda kv: [(kv[0], s) for s in sessions(kv[0], kv[1][1])])
op.output("sessions-out", op.map("sessions-json", found, as_message),
          KafkaSink(BROKERS, env.get("BENCH_SESSIONS", "sessions")))

money = op.filter("money", touches, lambda kv: kv[1][4] and kv[1][2] in MONEY)
totals = op.stateful_map("purchases", money, total)
op.output("customers-out", op.map("customers-json", totals, as_message),
          KafkaSink(BROKERS, env.get("BENCH_CUSTOMERS", "customers")))
