"""The cost of a second import of the same period (issue 34): the sessionizer's pure logic on
a generated year, the events split at random in two halves imported one after the other (each
ended by a watermark past the year, as `kizuna import --until` does), against the same events
as one import. Prints the sessionizer's CPU seconds for each import and a hash of the
sessions, so that two checkouts can be paired on the same file:

    python -m benchmarks.second_import --customers 100 --days 365
    cd ../other && python /path/to/benchmarks/second_import.py --customers 100 --days 365
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import orjson


def main() -> None:
    sys.path.insert(0, str(Path.cwd()))
    from aiokafka.partitioner import murmur2

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
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch", type=int, default=20000, help="touchpoints a batch")
    args = parser.parse_args()

    start = 1_767_571_200_000
    world = generate(args.customers, args.days, 1, start)
    enrich = Enrichment("bench", start + (args.days + 1) * 86_400_000)
    records = sorted((r for r in (validate(e, enrich) for e in world.events)
                      if not isinstance(r, Rejection)),
                     key=lambda r: (r["event_time"], r["event_id"]))
    rnd = random.Random(5)
    shuffled = records[:]
    rnd.shuffle(shuffled)
    parts = 4
    end = records[-1]["event_time"] + 2 * 86_400_000

    def partition_of(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % parts

    def imports(waves: list[list[dict]]) -> tuple[list[float], str]:
        proc = PartitionProcessor(SessionRules(), {}, parts)
        queues: list[list] = [[] for _ in range(parts)]
        latest: dict[str, bytes] = {}

        def run(p: int, items: list) -> None:
            out = proc.process(p, queues[p] + items)
            queues[p] = []
            for r in out.sessions:  # the latest record of each session, as the table shows
                latest[r["session_id"]] = orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
            for target, handoffs in handoffs_by_partition(out, p, parts, partition_of).items():
                queues[target].extend(handoffs)

        seconds = []
        for wave in waves:
            cpu = time.process_time()
            by_part: list[list] = [[] for _ in range(parts)]
            for r in sorted(wave, key=lambda r: (r["event_time"], r["event_id"])):
                by_part[partition_of(r["customer_id"] or r["anonymous_id"])].append(
                    Touchpoint(r))
            for i in range(0, max(map(len, by_part), default=0), args.batch // parts):
                for p, items in enumerate(by_part):
                    run(p, items[i:i + args.batch // parts])
            for p in range(parts):
                run(p, [Watermark(end)])
            while any(queues):
                for p in range(parts):
                    run(p, [])
            seconds.append(round(time.process_time() - cpu, 2))
        live = sorted(v for v in latest.values() if b'"status":"merged"' not in v)
        return seconds, hashlib.sha256(b"\n".join(live)).hexdigest()[:16]

    one, one_hash = imports([records])
    two, two_hash = imports([shuffled[0::2], shuffled[1::2]])
    print(json.dumps({"events": len(records), "one_import_s": one, "one_import_sessions":
                      one_hash, "two_imports_s": two, "two_imports_sessions": two_hash}))


if __name__ == "__main__":
    main()
