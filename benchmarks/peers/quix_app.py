"""The job in Quix Streams, as its documentation writes it: a session window per message key
(`session_window(...).collect().final()`, closed by a later event of the key: the
documentation's default) and a stateful per-customer total. QUIX_CLOSING=partition closes by
the partition's event time instead (docs/benchmarks.md: what that costs). Run by
`benchmarks.peers.run` in the peers' virtualenv:

    python -m benchmarks.peers.quix_app BROKERS INPUT SESSIONS CUSTOMERS EVENTS STATE_DIR REPORT

Stops after EVENTS input messages. Writes REPORT (JSON) at the first message (its monotonic
clock and the CPU seconds used so far: the run is timed from there to the process's exit, so
that startup does not count and flushing the last outputs does) and at the last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from quixstreams import Application
from quixstreams.models.serializers import Deserializer

from benchmarks.peers.job import GAP_MS, MONEY, TouchpointDecoder, purchases, sessions, touch


class TouchDeserializer(Deserializer):
    """Kizuna's Avro touchpoints to the job's touch, plus whether a customer is known."""

    def __init__(self) -> None:
        super().__init__()
        self.decode = TouchpointDecoder()

    def __call__(self, value: bytes, ctx) -> list:
        record = self.decode(value)
        return [*touch(record), record["customer_id"] is not None]


class Progress:
    def __init__(self, app: Application, events: int, report: Path) -> None:
        self.app, self.events, self.report = app, events, report
        self.seen = 0
        self.first: dict = {}

    def __call__(self, _value) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = {"first_at": time.monotonic(), "cpu_at_first": time.process_time()}
            self.report.write_text(json.dumps(self.first))
        if self.seen == self.events:
            self.report.write_text(json.dumps({
                **self.first, "last_at": time.monotonic(), "cpu_at_last": time.process_time()}))
            self.app.stop()


def main(brokers: str, source: str, sessions_topic: str, customers_topic: str, events: str,
         state_dir: str, report: str) -> None:
    app = Application(broker_address=brokers, consumer_group="bench-quix",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING")
    touches = app.topic(source, key_deserializer="str", value_deserializer=TouchDeserializer(),
                        timestamp_extractor=lambda value, _h, _ts, _type: value[0])
    sdf = app.dataframe(touches)
    sdf = sdf.update(Progress(app, int(events), Path(report)))

    found = (sdf.session_window(inactivity_gap_ms=timedelta(milliseconds=GAP_MS))
             .collect().final(closing_strategy=os.environ.get("QUIX_CLOSING", "key")))
    found = found.apply(lambda window, key, _ts, _h: sessions(key, window["value"]),
                        expand=True, metadata=True)
    found.to_topic(app.topic(sessions_topic, value_serializer="json"))

    money = sdf.filter(lambda t: t[4] and t[2] in MONEY)

    def total(t: list, state) -> dict:
        totals = purchases(state.get("totals"), t)
        state.set("totals", totals)
        return totals

    money = money.apply(total, stateful=True)
    money.to_topic(app.topic(customers_topic, value_serializer="json"))
    app.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
