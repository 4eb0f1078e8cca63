"""A hash over every output of the three stages' pure logic on a generated data set: to show a
change leaves the outputs identical (or where they differ), paired against another checkout.

The demo generator's customers, validated as an import does, go through the sessionizer on 4
partitions in batches (its handoffs routed back as the handoff topic would), its attributed
output through the scorer and alerting; then a share of the same customers' events again,
held back and delivered late (a store's night upload). Every session, profile and alert
record emitted is hashed, as a sorted multiset. Uses only the stages' public entry points,
so the same file runs against an older checkout:

    python -m benchmarks.output_hash                     # this checkout
    cd ../other && python /path/to/benchmarks/output_hash.py   # the other one
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import orjson


def main() -> None:
    sys.path.insert(0, str(Path.cwd()))
    from aiokafka.partitioner import murmur2

    from services.alerting.carts import CartRules
    from services.alerting.processor import CART, AlertProcessor, alert_record, churn_record
    from services.domain import attributed
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
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--late-share", type=float, default=0.0,
                        help="share of the pos events held back and delivered after the rest")
    args = parser.parse_args()

    start = 1_767_571_200_000
    world = generate(args.customers, args.days, 1, start)
    enrich = Enrichment("bench", start + (args.days + 1) * 86_400_000)
    records = sorted((r for r in (validate(e, enrich) for e in world.events)
                      if not isinstance(r, Rejection)),
                     key=lambda r: (r["event_time"], r["event_id"]))
    rnd = random.Random(7)
    late = [r for r in records if r["channel"] == "pos" and rnd.random() < args.late_share]
    held = {r["event_id"] for r in late}
    in_time = [r for r in records if r["event_id"] not in held]
    parts = 4
    end = records[-1]["event_time"] + 86_400_000

    def partition_of(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % parts

    proc = PartitionProcessor(SessionRules(), {}, parts)
    queues: list[list] = [[] for _ in range(parts)]
    messages: list[list[bytes]] = [[] for _ in range(parts)]
    sessions: list[bytes] = []

    def run(p: int, items: list) -> None:
        out = proc.process(p, queues[p] + items)
        queues[p] = []
        sessions.extend(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in out.sessions)
        if out.attributed or out.erased or out.output_time is not None:
            messages[p].extend(attributed.encode(proc.output_time(p), out.attributed, out.erased,
                                                 held=out.held_time))
        for target, handoffs in handoffs_by_partition(out, p, parts, partition_of).items():
            queues[target].extend(handoffs)

    for wave in (in_time, late):
        by_part: list[list] = [[] for _ in range(parts)]
        for r in wave:
            by_part[partition_of(r["customer_id"] or r["anonymous_id"])].append(Touchpoint(r))
        for i in range(0, max(map(len, by_part), default=0), args.batch):
            for p, items in enumerate(by_part):
                run(p, items[i:i + args.batch])
        for p in range(parts):
            run(p, [Watermark(end)])
        while any(queues):
            for p in range(parts):
                run(p, [])

    weights = load_weights()
    rules = CartRules()
    scorer_store: dict = {}
    alerting = AlertProcessor(rules, weights, {})
    profiles: list[bytes] = []
    alerts: list[bytes] = []
    for p in range(parts):
        for k in range(0, len(messages[p]), 4):
            units = [u for m in messages[p][k:k + 4] for u in attributed.units(m)]
            for profile in score_batch(scorer_store, weights, units).profiles:
                profiles.append(orjson.dumps(profile, option=orjson.OPT_SORT_KEYS))
            found = alerting.process(p, units)
            # a result with .alerts since 0.10, the list of them before
            for customer, kind, alert, snap in getattr(found, "alerts", found):
                record = alert_record(customer, alert, snap, 0, rules) if kind == CART \
                    else churn_record(customer, alert, snap, 0)
                alerts.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))

    figures = {"events": len(records), "late": len(late)}
    digest = hashlib.sha256()
    for name, rows in (("sessions", sessions), ("profiles", profiles), ("alerts", alerts)):
        part = hashlib.sha256(b"\n".join(sorted(rows))).hexdigest()[:16]
        figures[name] = {"records": len(rows), "sha256": part}
        digest.update(part.encode())
    figures["sha256"] = digest.hexdigest()[:16]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
