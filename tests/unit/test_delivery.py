"""Results do not depend on delivery (contract section 2): the three stages' pure logic, fed
the same events in many ways, shows what one message in event-time order shows, table for
table (sessions, profiles, alerts as the warehouse keeps them).

The ways are drawn by Hypothesis: the demo generator's customers (every persona, anonymous
browsing, second devices, carts, churners), cut into one to three imports (at random, by
channel, by customer, or the latest days first, as history imported behind a live pipeline),
each with or without `--until`, over 1-4 partitions, with random batch sizes and a random
interleaving of the stages and of the sessionizer's two inputs. Alerting measures the
correction horizon from a wall clock past the data, as in a backfill: every decision is
recorded, none sent, so the decisions alone are compared.

`make test` runs a few dozen examples; `make delivery-check` thousands (KIZUNA_DELIVERY_EXAMPLES).
Minimal failing cases found so far are kept below as regression tests.
"""

from __future__ import annotations

import os
import random
import zlib
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.domain.eventtime import DAY_MS
from tests.pure_pipeline import PurePipeline

T0 = 1_735_689_600_000  # 2025-01-01
EXAMPLES = int(os.environ.get("KIZUNA_DELIVERY_EXAMPLES", "30"))


@lru_cache(maxsize=64)
def history(customers: int, days: int, seed: int) -> tuple[dict, ...]:
    """The generator's events for `customers` over `days`, validated as an import does."""
    from services.generator.personas import generate
    from services.ingest.validation import Enrichment, Rejection, validate

    world = generate(customers, days, seed, T0)
    enrich = Enrichment("test", T0 + (days + 1) * DAY_MS, skew_correction=False)
    return tuple(sorted((r for r in (validate(e, enrich) for e in world.events)
                         if not isinstance(r, Rejection)),
                        key=lambda r: (r["event_time"], r["event_id"])))


def reference(events: tuple[dict, ...], end: int, now: int) -> dict[str, list]:
    """One import, in event-time order, one partition, whole batches."""
    return PurePipeline(partitions=1, now=now).send(list(events)).watermark(end).run().tables()


def files(events: tuple[dict, ...], split: str, parts: int, rnd: random.Random) -> list[list]:
    """The same events as `parts` exports, each in event-time order (as an import sends)."""
    if split == "random":
        key = {e["event_id"]: rnd.randrange(parts) for e in events}
    elif split == "channel":
        channels = sorted({e["channel"] for e in events})
        rnd.shuffle(channels)
        key = {e["event_id"]: channels.index(e["channel"]) % parts for e in events}
    elif split == "customer":
        key = {e["event_id"]: zlib.crc32((e["customer_id"] or e["anonymous_id"]).encode()) % parts
               for e in events}
    else:  # "latest_first": the last days first (live), then the history before them
        cut = events[len(events) * 4 // 5]["event_time"] if events else 0
        key = {e["event_id"]: 0 if e["event_time"] >= cut else 1 for e in events}
        parts = 2
    return [[e for e in events if key[e["event_id"]] == k] for k in range(parts)]


def deliver(events: tuple[dict, ...], end: int, now: int, *, split: str, parts: int,
            untils: list[bool], partitions: int, batch: int, seed: int) -> dict[str, list]:
    rnd = random.Random(seed)
    pipeline = PurePipeline(partitions=partitions, now=now)
    for i, part in enumerate(files(events, split, parts, rnd)):
        pipeline.send(part)
        if untils[i % len(untils)]:
            pipeline.watermark(end)
        pipeline.run(rnd, batch=batch)
    return pipeline.watermark(end).run(rnd, batch=batch).tables()


def differences(got: dict[str, list], expected: dict[str, list]) -> dict[str, tuple]:
    out = {}
    for table, rows in expected.items():
        have, want = set(got[table]), set(rows)
        if have != want:
            out[table] = (sorted(want - have)[:2], sorted(have - want)[:2])
    return out


ways = st.fixed_dictionaries({
    "split": st.sampled_from(["random", "channel", "customer", "latest_first"]),
    "parts": st.integers(1, 3),
    "untils": st.lists(st.booleans(), min_size=1, max_size=3),
    "partitions": st.integers(1, 4),
    "batch": st.sampled_from([1, 3, 20, 200]),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(customers=st.integers(1, 5), days=st.integers(3, 45), data_seed=st.integers(0, 50),
       way=ways)
def test_any_delivery_gives_the_tables_of_one_import_in_time_order(customers, days, data_seed,
                                                                   way) -> None:
    events = history(customers, days, data_seed)
    end = T0 + (days + 2) * DAY_MS
    now = T0 + (days + 400) * DAY_MS
    expected = reference(events, end, now)
    got = deliver(events, end, now, **way)
    assert not differences(got, expected), (customers, days, data_seed, way,
                                            differences(got, expected))
