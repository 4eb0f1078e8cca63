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

`make test` runs a few dozen examples; `make order-check` 10,000 (KIZUNA_DELIVERY_EXAMPLES).
The failing cases it has found are kept below as regression tests, each with its cause.
"""

from __future__ import annotations

import os
import random
import zlib
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, example, given, settings
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
            untils: list[bool], partitions: int, batch: int, seed: int,
            message_touches: int = 2000) -> dict[str, list]:
    rnd = random.Random(seed)
    pipeline = PurePipeline(partitions=partitions, now=now, message_touches=message_touches)
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
    # a batch's touches over several attributed messages (the next stages may read part)
    "message_touches": st.sampled_from([2000, 1, 5]),
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


@pytest.mark.parametrize("customers, days, data_seed, way", [
    # A login earlier than the device's link came with the history imported behind the live
    # days, after the device had kept a touch of its own from more than 30 days before the
    # link (an anonymous session): the earlier login claims that session too, as it would
    # have had it come first (identity.claim_earlier looked in the archive only).
    (1, 38, 43, {"split": "latest_first", "parts": 1, "untils": [False], "partitions": 2,
                 "batch": 1, "seed": 0}),
    (4, 35, 2, {"split": "latest_first", "parts": 1, "untils": [False], "partitions": 4,
                "batch": 1, "seed": 0}),
    # A device's touch forwarded as claimed at the later of two logins was held for the
    # device's answer to the earlier one (come late), which re-sent it as of that login;
    # the held copy went out after it and stood (identity.receive keeps the answer's).
    (5, 10, 5, {"split": "random", "parts": 2, "untils": [False], "partitions": 3,
                "batch": 1, "seed": 0}),
])
def test_found_by_the_harness(customers, days, data_seed, way) -> None:
    events = history(customers, days, data_seed)
    end = T0 + (days + 2) * DAY_MS
    now = T0 + (days + 400) * DAY_MS
    assert not differences(deliver(events, end, now, **way), reference(events, end, now))



@settings(max_examples=max(10, EXAMPLES // 3), deadline=None, derandomize=EXAMPLES <= 100,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(customers=st.integers(2, 6), days=st.integers(3, 30), data_seed=st.integers(0, 50),
       partitions=st.integers(1, 4), batch=st.sampled_from([1, 3, 20, 200, 5000]),
       message_touches=st.sampled_from([1, 5, 2000]), seed=st.integers(0, 2**16))
@example(customers=3, days=6, data_seed=42, partitions=3, batch=3, message_touches=1, seed=6)
def test_touches_sent_in_time_order_reach_alerting_in_time_however_batched(
        customers, days, data_seed, partitions, batch, message_touches, seed) -> None:
    # A touch on time at the sessionizer is on time for alerting, however the stages'
    # batches fall: a batch's output over several attributed messages moves event time
    # on only with its last (attributed.encode), so alerting, reading part of them in one
    # poll, never judges past touches still to come. (Found on a 3-node cluster with a
    # broker killed mid-import: a customer's cart alert decided again from late touches,
    # only recorded where the clean run had sent it.) And touches the sessionizer holds for
    # a device's history hold its output time at the time they count from (the example: a
    # device's touch forwarded, counted from its login, held while the customer's other
    # device answered a later login, which alone held the output time).
    events = history(customers, days, data_seed)
    end = T0 + (days + 2) * DAY_MS
    pipeline = PurePipeline(partitions=partitions, message_touches=message_touches)
    pipeline.send(list(events)).watermark(end).run(random.Random(seed), batch=batch)
    assert pipeline.replayed == []


def test_logins_answered_in_one_batch_reach_alerting_in_time_read_one_message_a_poll() -> None:
    # Two customers' devices (on the other partition) answer their logins in one batch of
    # the customers' partition: the output time, held at the logins, moves on in that
    # batch, whose touches take one message per customer. Alerting reads one message a
    # poll: had the first carried the new time, the second customer's device history
    # (counted from the login) would have been late for it.
    def tp(i: int, minute: int, customer: str | None, device: str | None) -> dict:
        return {"event_id": f"e{i}", "event_type": "page_view", "channel": "web",
                "event_time": T0 + minute * 60_000, "customer_id": customer,
                "anonymous_id": device, "commerce": None}

    # c0 and c4 on partition 0, their devices d1 and d4 on partition 1
    events = [tp(1, 0, None, "d1"), tp(2, 1, None, "d4"), tp(3, 10, "c0", "d1"),
              tp(4, 11, "c4", "d4"), tp(5, 3000, "c0", None), tp(6, 3000, None, "d9")]
    pipeline = PurePipeline(partitions=2, message_touches=1).send(events)
    pipeline.watermark(T0 + 4000 * 60_000)
    pipeline._step(0, 0, 100, None)  # the logins: links to the devices, the output time held
    pipeline._step(0, 1, 100, None)  # the devices answer
    pipeline._step(0, 0, 100, None)  # both answers, and the time announced, in one batch
    assert len(pipeline.attributed[0]) >= 3, pipeline.attributed[0]
    while pipeline._pending(2, 0):
        pipeline._step(2, 0, 1, None)  # alerting: one message a poll
    assert pipeline.replayed == []
