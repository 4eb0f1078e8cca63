"""faust's per-message ceiling for `make bench`: a bare faust agent that only decodes.

The same app set-up as every stage (`faust_stage.create_app`: batches of up to 2,000
messages, orjson, faust's Prometheus sensor on), one agent over `KIZUNA_BENCH_TOPIC` that
Avro-decodes every touchpoint and counts it in `kizuna_bench_floor_events_total`. No state,
no outputs: whatever a stage does costs on top of this.

    KIZUNA_BENCH_TOPIC=... KIZUNA_BENCH_PORT=... python -m benchmarks.floor worker
"""

from __future__ import annotations

import os

from prometheus_client import Counter

from services.common import faust_stage
from services.common.serde import TOUCHPOINT, default_serde
from services.common.settings import Settings, load

EVENTS = Counter("kizuna_bench_floor_events", "Touchpoints decoded by the bare faust agent")

common = load(Settings)
app = faust_stage.create_app("bench_floor", common, port=int(os.environ["KIZUNA_BENCH_PORT"]),
                             store="memory://", partitions=common.partitions, batch_size=2000)
source = app.topic(os.environ["KIZUNA_BENCH_TOPIC"], value_serializer="raw",
                   key_serializer="raw")
serde = default_serde()


@app.agent(source)
async def decode(stream) -> None:  # noqa: ANN001 (faust's stream)
    async for events in stream.take_events(2000, within=1.0):
        for event in events:
            serde.decode(TOUCHPOINT, event.value)
        EVENTS.inc(len(events))


if __name__ == "__main__":
    faust_stage.run_worker(app, common)
