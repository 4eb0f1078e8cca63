"""Random two-device histories through the pure sessionizer on 1, 2 and 4 partitions and
batches of 1 to 1000: the sessions must not depend on any of it. Prints the seeds where they
do, with each configuration's sessions of the customers concerned; exits 1 if there is one.

Not part of `make test`: it reproduces the known limit in the README (a hand-over carrying a
first device's touches after its login, overtaking a second device's older history). Use it
when working on identity: `python -m tests.chaos.identity_orders [seeds]`.
"""

from __future__ import annotations

import random
import sys

from tests.unit.test_sessionizer import MINUTE_MS, T0, Pipeline, spans, tp

CONFIGS = [(1, 1), (1, 1000), (2, 7), (4, 1), (4, 3), (4, 1000)]


def history(seed: int) -> list[dict]:
    rnd = random.Random(seed)
    records = []
    for i in range(rnd.randint(5, 40)):
        who = rnd.choice(["d1", "d2", "C1", "C2", "X"])
        minute = rnd.randint(0, 600)
        records.append(tp(f"e{i}", minute, device=who) if who.startswith("d")
                       else tp(f"e{i}", minute, who))
    for j in range(rnd.randint(1, 3)):
        records.append(tp(f"l{j}", rnd.randint(0, 600), rnd.choice(["C1", "C2"]),
                          device=rnd.choice(["d1", "d2"]), event_type="identify"))
    return sorted(records, key=lambda r: (r["event_time"], r["event_id"]))


def main() -> int:
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    differing = 0
    for seed in range(seeds):
        records = history(seed)
        results = {config: spans(Pipeline(partitions=config[0], batch=config[1])
                                 .send(*records).close_all()) for config in CONFIGS}
        if len(set(map(tuple, results.values()))) == 1:
            continue
        differing += 1
        print(f"seed {seed}:")
        for (partitions, batch), found in results.items():
            minutes = [(who, (a - T0) // MINUTE_MS, (b - T0) // MINUTE_MS, n)
                       for who, a, b, n in found if who != "X"]
            print(f"  {partitions} partitions, batches of {batch}: {minutes}")
    print(f"{differing} of {seeds} histories gave sessions that depend on partitions or batching")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
