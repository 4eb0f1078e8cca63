"""The pure logic of each stage, chained as on Kafka but without it: CPU per event, state.

The demo generator's customers (validated as an import does, in event-time order) go through
the sessionizer's `PartitionProcessor` on 4 partitions in batches (its handoffs routed back
as the handoff topic would), its attributed output through the scorer's `score_batch` and
alerting's `AlertProcessor`. Each stage's state is a dict that counts the bytes of what is
written to it (JSON, as the changelog holds it). Prints one line per stage; `--json` for a
file. For before/after comparisons of a change, run it in both checkouts:

    python -m benchmarks.pure --customers 1500 --days 30 --batch 500
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import MutableMapping

import orjson


class CountingStore(dict):
    """A dict that counts the bytes written to it, as a changelog would carry them."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.writes = 0

    def __setitem__(self, key, value) -> None:
        self.written += len(orjson.dumps(value)) + len(key)
        self.writes += 1
        super().__setitem__(key, value)

    def held(self) -> int:
        return sum(len(orjson.dumps(v)) + len(k) for k, v in self.items())


def main() -> None:
    from aiokafka.partitioner import murmur2

    # The modules a stage process holds (faust's and the adapter's): CPython's full garbage
    # collections come less often the more long-lived objects there are, so without them the
    # pure stages measure up to 1.7x slower than in a stage (the scorer: 11 against 6.4 us).
    import services.common.faust_stage  # noqa: F401
    from services.alerting.carts import CartRules
    from services.alerting.processor import AlertProcessor
    try:
        from services.common.stage_state import BatchStore
    except ImportError:  # a checkout from before 0.10
        from services.common.faust_stage import BatchStore
    try:
        from services.common.weights_file import load_weights
    except ImportError:  # a checkout from before 0.10
        from services.domain.weights import load_weights
    from services.engagement_scorer.batch import score_batch
    from services.generator.personas import generate
    from services.ingest.validation import Enrichment, Rejection, validate
    from services.sessionizer.processor import (
        PartitionProcessor,
        Touchpoint,
        Watermark,
        handoffs_by_partition,
    )
    from services.sessionizer.sessions import SessionRules

    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--uuid-ids", action="store_true",
                        help="event ids as UUIDs (36 characters, as SDKs send them) instead of "
                             "the generator's short ones")
    parser.add_argument("--stored", action="store_true",
                        help="the scorer's and alerting's states behind the stages' BatchStore, "
                             "a transaction per batch, each state read a copy (as with the "
                             "memory store; rocksdb decodes each read instead)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    start = 1_767_571_200_000
    world = generate(args.customers, args.days, 1, start)
    if args.uuid_ids:
        for e in world.events:
            if isinstance(e, dict) and isinstance(e.get("event_id"), str):
                e["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, e["event_id"]))
    enrich = Enrichment("bench", start + (args.days + 1) * 86_400_000)
    records = [r for r in (validate(e, enrich) for e in world.events)
               if not isinstance(r, Rejection)]
    parts = 4

    def partition_of(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % parts

    by_part: list[list] = [[] for _ in range(parts)]
    for r in records:
        by_part[partition_of(r["customer_id"] or r["anonymous_id"])].append(Touchpoint(r))
    store = CountingStore()
    proc = PartitionProcessor(SessionRules(), store, parts)
    queues: list[list] = [[] for _ in range(parts)]
    attributed: list[list[dict]] = [[] for _ in range(parts)]
    sessions = 0

    def run(p: int, items: list) -> None:
        nonlocal sessions
        out = proc.process(p, queues[p] + items)
        queues[p] = []
        sessions += len(out.sessions)
        if out.attributed or out.output_time is not None:
            attributed[p].append({"t": proc.output_time(p), "c": out.attributed})
        for target, handoffs in handoffs_by_partition(out, p, parts, partition_of).items():
            queues[target].extend(handoffs)

    cpu = time.process_time()
    for i in range(0, max(map(len, by_part)), args.batch):
        for p, items in enumerate(by_part):
            run(p, items[i:i + args.batch])
    for p in range(parts):
        run(p, [Watermark(records[-1]["event_time"] + 86_400_000)])
    while any(queues):
        for p in range(parts):
            run(p, [])
    sessionizer_cpu = time.process_time() - cpu
    messages = [json.loads(orjson.dumps(m)) for ms in attributed for m in ms]  # as on Kafka
    touches = sum(len(x) for m in messages for x in m["c"].values())

    def wrap(store: CountingStore) -> MutableMapping:
        return BatchStore(store, copy_reads=True) if args.stored else store

    def in_batches(wrapped: MutableMapping, work) -> float:
        """CPU seconds of `work(p, messages)` over every partition's messages, 4 a call."""
        cpu = time.process_time()
        for p in range(parts):
            for k in range(0, len(attributed[p]), 4):
                if args.stored:
                    wrapped.begin()
                work(p, [json.loads(orjson.dumps(m)) for m in attributed[p][k:k + 4]])
                if args.stored:
                    wrapped.commit()
        return time.process_time() - cpu

    weights = load_weights()
    scorer_store = CountingStore()
    scored = wrap(scorer_store)
    scorer_cpu = in_batches(scored, lambda p, batch: score_batch(scored, weights, batch))
    alert_store = CountingStore()
    alerting = AlertProcessor(CartRules(), weights, wrap(alert_store))
    alerts = 0

    def alert(p: int, batch: list) -> None:
        nonlocal alerts
        found = alerting.process(p, batch)
        alerts += len(getattr(found, "alerts", found))  # a list before 0.10

    alerting_cpu = in_batches(alerting.store, alert)

    def held(store: CountingStore) -> dict:
        return {"state_held_mb": round(store.held() / 2**20, 1),
                "state_bytes_per_customer": round(store.held() / args.customers)}

    figures = {
        "events": len(records), "attributed_touches": touches, "batch": args.batch,
        "sessionizer": {"us_cpu_per_event": round(sessionizer_cpu / len(records) * 1e6, 1),
                        "session_updates": sessions, "state_written_mb": round(
                            store.written / 2**20, 1), **held(store)},
        "engagement_scorer": {"us_cpu_per_touch": round(scorer_cpu / touches * 1e6, 1),
                              "state_written_mb": round(scorer_store.written / 2**20, 1),
                              **held(scorer_store)},
        "alerting": {"us_cpu_per_touch": round(alerting_cpu / touches * 1e6, 1),
                     "alerts": alerts, "state_written_mb": round(
                         alert_store.written / 2**20, 1), **held(alert_store)},
    }
    for stage in ("sessionizer", "engagement_scorer", "alerting"):
        print(f"{stage:<18} {figures[stage]}")
    print(f"events {len(records)}, attributed touches {touches}, batch {args.batch}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
