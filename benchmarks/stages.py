"""`make bench-sessionizer` / `make bench-scorer`: one stage's throughput, pure and on Kafka.

1. pure: the stage's pure logic in batches as its faust adapter calls it (no Kafka);
2. kafka: the stage's input topic is filled first, then one worker process starts on it;
   events/s from its first consumed message to consumer lag 0, and its CPU per event. Starts
   its own stack (temporary KIZUNA_HOME, free ports) and stops it.

   sessionizer: Avro touchpoints on the raw topic, one per message (as the collector writes);
   engagement_scorer: attributed touches, one message per partition and 500 touches (as the
   sessionizer writes).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from services.common.kafka import client_config
from services.domain.eventtime import MINUTE_MS
from services.sessionizer.processor import (
    PartitionProcessor,
    Touchpoint,
    Watermark,
    handoffs_by_partition,
)
from services.sessionizer.sessions import SessionRules


def generated_records(n: int, seed: int = 1) -> list[dict]:
    """The demo generator's customers (realistic sessions), validated like an import, until
    there are `n` events."""
    from services.generator.personas import generate
    from services.ingest.validation import Enrichment, Rejection, validate

    customers, days = max(50, n // 125), 30
    world = generate(customers, days, seed, 1_767_571_200_000)
    enrich = Enrichment("bench", 1_767_571_200_000 + (days + 1) * 24 * 3600 * 1000)
    out = []
    for event in world.events:
        record = validate(event, enrich)
        if not isinstance(record, Rejection):
            out.append(record)
    return out[:n]


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


def pure(n: int, profiles: int) -> None:
    data = records(n, profiles)
    parts = 4
    proc = PartitionProcessor(SessionRules(), {}, parts)

    def partition_of(key: str) -> int:
        return hash(key) % parts

    by_part = [[Touchpoint(r) for r in data if partition_of(r["customer_id"] or r["anonymous_id"])
                == p] for p in range(parts)]
    queues: list[list] = [[] for _ in range(parts)]  # the handoff topic's partitions
    emitted = 0

    def run(p: int, items: list) -> None:
        nonlocal emitted
        out = proc.process(p, queues[p] + items)
        queues[p] = []
        emitted += len(out.sessions)
        for target, handoffs in handoffs_by_partition(out, p, parts, partition_of).items():
            queues[target].extend(handoffs)

    start = time.perf_counter()
    cpu = time.process_time()
    for i in range(0, max(map(len, by_part)), 2000):
        for p, items in enumerate(by_part):
            run(p, items[i:i + 2000])
    for p in range(parts):
        run(p, [Watermark(data[-1]["event_time"] + 60 * MINUTE_MS)])
    while any(queues):
        for p in range(parts):
            run(p, [])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"pure sessionizer: {n} events, {profiles} profiles: {n / wall:,.0f} events/s "
          f"({cpu / n * 1e6:.1f} us CPU/event), {emitted} session updates")


def through_kafka(stage: str, n: int, profiles: int, profile_to: str | None = None,
                  batch: int = 1, realistic: bool = False,
                  framings: tuple[str, ...] = ("confluent",)) -> None:
    """One worker on a filled input topic, once per framing, on one stack: `confluent` (the
    values and the stage's outputs in Confluent's wire format, the local schema registry) or
    `single-object` (`KIZUNA_SCHEMA_REGISTRY_URL=none`)."""
    from tests.conftest import kizuna, stack_env

    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    env = stack_env(home)
    try:
        kizuna(env, "up")
        data = generated_records(n) if realistic else records(n, profiles)
        for i, framing in enumerate(framings):
            _one_worker(stage, env, f"bench{i}.", framing, data, realistic, profiles,
                        profile_to, batch)
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def _one_worker(stage: str, env: dict, prefix: str, framing: str, data: list[dict],
                realistic: bool, profiles: int, profile_to: str | None, batch: int) -> None:
    from aiokafka.partitioner import murmur2
    from confluent_kafka import Producer

    from services.common.kafka import ensure_topics, group_lag
    from services.common.schema_registry import register, serde_for
    from services.common.serde import TOUCHPOINT
    from services.common.settings import Settings, load
    from services.common.topics import ATTRIBUTED, PUBLIC_TOPICS, TOUCHPOINTS_RAW
    from services.domain.touch import touch_of
    from services.ingest.importer import PartitionBatcher
    from services.localstack.registry import readyz_ok
    from tests.conftest import free_ports

    port = str(free_ports(1)[0])
    bench = {**env, "KIZUNA_TOPIC_PREFIX": prefix, "KIZUNA_SESSIONIZER_PORT": port,
             "KIZUNA_ENGAGEMENT_SCORER_PORT": port}
    if framing == "single-object":
        bench["KIZUNA_SCHEMA_REGISTRY_URL"] = "none"
    settings = load(Settings, bench)
    ensure_topics(settings, (*PUBLIC_TOPICS, ATTRIBUTED))
    if settings.schema_registry:
        register(settings)  # the stages write with the registry's ids
    serde = serde_for(settings)  # the input in the framing measured
    producer = Producer({**client_config(settings),
                         "partitioner": "murmur2_random", "linger.ms": 20,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1000000})

    def produce(topic: str, value: bytes, key: bytes | None, partition: int = -1,
                headers: dict | None = None) -> None:
        while True:
            try:
                producer.produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                producer.poll(0.1)

    n = len(data)
    if stage == "sessionizer":
        source = TOUCHPOINTS_RAW.name(prefix)
        batcher = PartitionBatcher(
            serde, source, settings.partitions,
            lambda topic, value, key, _n, partition=-1, headers=None: produce(
                topic, value, key, partition, headers), size=batch)
        for r in data:
            if not realistic:
                r.update(occurred_at=r["event_time"], sent_at=None,
                         received_at=r["event_time"], source="bench", properties={},
                         context={}, commerce={
                             "cart_id": None, "order_id": None, "product_id": None,
                             "quantity": None, "unit_price": None, "value": 10.0,
                             "currency": None})
            if batch > 1:  # as `kizuna import` writes
                batcher.add(r)
            else:  # as the HTTP collector writes
                produce(source, serde.encode(TOUCHPOINT, r),
                        (r["customer_id"] or r["anonymous_id"]).encode())
        batcher.flush()
    else:
        source = ATTRIBUTED.name(prefix)
        chunks: list[dict] = [{} for _ in range(settings.partitions)]
        sizes = [0] * settings.partitions
        for r in data:
            customer = r["customer_id"] or r["anonymous_id"]
            p = (murmur2(customer.encode()) & 0x7FFFFFFF) % settings.partitions
            chunks[p].setdefault(customer, []).append(touch_of(r))
            sizes[p] += 1
            if sizes[p] == 500:
                produce(source, json.dumps({"t": r["event_time"], "c": chunks[p]}).encode(),
                        None, p)
                chunks[p], sizes[p] = {}, 0
        for p, chunk in enumerate(chunks):
            if chunk:
                produce(source, json.dumps({"t": data[-1]["event_time"], "c": chunk})
                        .encode(), None, p)
    producer.flush(60)
    messages = sum(high for _, high in _watermarks(settings, source))
    worker_log = Path("out") / f"bench-{stage}-worker.log"  # kept for a look afterwards
    worker_log.parent.mkdir(exist_ok=True)
    profile = ["-m", "cProfile", "-o", profile_to] if profile_to else []
    worker = subprocess.Popen([sys.executable, *profile, "-m", f"services.{stage}"],
                              env=bench,
                              stdout=subprocess.DEVNULL, stderr=worker_log.open("w"))  # noqa: SIM115
    proc = psutil.Process(worker.pid)
    deadline = time.monotonic() + 600
    while not readyz_ok(port):  # started, partitions assigned, state recovered
        if time.monotonic() > deadline or worker.poll() is not None:
            raise SystemExit(f"{stage} did not become ready")
        time.sleep(0.05)
    first, cpu0 = time.monotonic(), sum(proc.cpu_times()[:2])
    while time.monotonic() < deadline:
        lag = group_lag(settings, f"{prefix}{stage}", [source])
        now = time.monotonic()
        if lag == 0:  # committed offsets lag processing by up to 1 s (commit interval)
            break
        time.sleep(0.2)
    else:
        raise SystemExit(f"{stage} did not catch up: lag {lag}")
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    rss = proc.memory_info().rss / 2**20
    wall = now - first
    print(f"kafka {stage} ({framing}): {n} events in {messages} messages, "
          f"{'generated customers' if realistic else f'{profiles} profiles'}, "
          f"{settings.partitions} partitions, one worker: {n / wall:,.0f} events/s, "
          f"{cpu / n * 1e6:.0f} us CPU/event, RSS {rss:.0f} MiB", flush=True)
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        print(f"note: {stage} took over 30 s to stop on SIGTERM; killed", flush=True)
        worker.kill()


def _watermarks(settings, topic: str) -> list[tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**client_config(settings), "group.id": "bench"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in parts]
    finally:
        consumer.close()


def pure_scorer(n: int, profiles: int) -> None:
    from services.common.weights_file import load_weights
    from services.domain.touch import touch_of
    from services.engagement_scorer.batch import score_batch

    weights = load_weights()
    chunks, chunk = [], {}
    for i, r in enumerate(records(n, profiles)):
        chunk.setdefault(r["customer_id"] or r["anonymous_id"], []).append(touch_of(r))
        if i % 500 == 499:
            chunks.append({"t": r["event_time"], "c": chunk})
            chunk = {}
    chunks.append({"t": 0, "c": chunk})
    store: dict = {}
    start, cpu = time.perf_counter(), time.process_time()
    updates = 0
    for i in range(0, len(chunks), 4):  # a faust batch: a few attributed messages
        updates += len(score_batch(store, weights, chunks[i:i + 4]).profiles)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"pure engagement_scorer: {n} touches, {profiles} customers: {n / wall:,.0f} "
          f"events/s ({cpu / n * 1e6:.1f} us CPU/event), {updates} profile updates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["sessionizer", "engagement_scorer"])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--only", choices=["pure", "kafka"])
    parser.add_argument("--profile", metavar="FILE", help="cProfile the worker into FILE")
    parser.add_argument("--generated", action="store_true",
                        help="sessionizer: the demo generator's customers (realistic "
                             "sessions) instead of uniform random touches")
    parser.add_argument("--batch", type=int, default=1,
                        help="sessionizer: touchpoints per raw message (1: as the collector "
                             "writes; 500: as kizuna import writes)")
    parser.add_argument("--framing", default="confluent",
                        help="on Kafka, comma-separated, in this order on one stack: "
                             "confluent (Confluent's wire format, the local schema registry), "
                             "single-object (Avro single-object encoding); both = "
                             "confluent,single-object")
    args = parser.parse_args()
    if args.only != "kafka":
        (pure if args.stage == "sessionizer" else pure_scorer)(args.events, args.profiles)
    if args.only != "pure":
        framings = tuple(["confluent", "single-object"] if args.framing == "both"
                         else args.framing.split(","))
        if not set(framings) <= {"confluent", "single-object"}:
            parser.error(f"--framing: unknown {args.framing!r}")
        through_kafka(args.stage, args.events, args.profiles, args.profile, args.batch,
                      args.generated, framings)


if __name__ == "__main__":
    main()
