"""Sessionizer throughput without Kafka: the pure partition processor on generated touches.

`python -m benchmarks.sessionizer [events] [profiles]`: events/s of `PartitionProcessor`
over 4 partitions in batches of 2,000, as the faust adapter calls it. The faust adapter adds
its per-message cost on top (engineering notes: about 80 us a message).
"""

from __future__ import annotations

import random
import sys
import time

from services.sessionizer.processor import PartitionProcessor, Touchpoint, Watermark
from services.sessionizer.sessions import MINUTE_MS, SessionRules


def records(n: int, profiles: int, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    t = 1_710_000_000_000
    out = []
    for i in range(n):
        t += rnd.randint(0, 2) * 1000
        who = rnd.randrange(profiles)
        out.append({"event_id": f"e{i}", "event_type": rnd.choice(["page_view", "cart_add",
                    "purchase"]), "channel": "web", "event_time": t,
                    "customer_id": f"C{who}" if who % 2 else None, "anonymous_id": f"d{who}",
                    "commerce": {"value": 10.0}})
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    profiles = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    data = records(n, profiles)
    proc = PartitionProcessor(SessionRules(), {})
    parts = 4
    by_part = [[Touchpoint(r) for r in data if hash(r["customer_id"] or r["anonymous_id"])
                % parts == p] for p in range(parts)]
    start = time.perf_counter()
    cpu = time.process_time()
    emitted = 0
    for p, items in enumerate(by_part):
        for i in range(0, len(items), 2000):
            emitted += len(proc.process(p, items[i:i + 2000]).sessions)
        emitted += len(proc.process(p, [Watermark(data[-1]["event_time"] + 60 * MINUTE_MS)])
                       .sessions)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{n} events, {profiles} profiles: {n / wall:,.0f} events/s "
          f"({cpu / n * 1e6:.1f} us CPU/event), {emitted} session updates")


if __name__ == "__main__":
    main()
