"""`make bench-sessionizer`: the sessionizer's throughput, pure and through faust on Kafka.

1. pure: events/s of `PartitionProcessor` over 4 partitions in batches of 2,000, as the faust
   adapter calls it (no Kafka);
2. kafka: a raw topic pre-filled with N Avro touchpoints, then one sessionizer process started
   on it; events/s from its first consumed message to lag 0, and its CPU per event. Starts its
   own stack (temporary KIZUNA_HOME, free ports) and stops it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

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


def pure(n: int, profiles: int) -> None:
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
    print(f"pure: {n} events, {profiles} profiles: {n / wall:,.0f} events/s "
          f"({cpu / n * 1e6:.1f} us CPU/event), {emitted} session updates")


def through_kafka(n: int, profiles: int, profile_to: str | None = None) -> None:
    from confluent_kafka import Producer

    from services.common.kafka import ensure_topics, group_lag
    from services.common.serde import TOUCHPOINT, default_serde
    from services.common.settings import Settings, load
    from services.common.topics import PUBLIC_TOPICS, TOUCHPOINTS_RAW
    from tests.conftest import free_ports, kizuna, stack_env

    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    env = stack_env(home)
    try:
        kizuna(env, "up")
        bench = {**env, "KIZUNA_TOPIC_PREFIX": "bench.",
                 "KIZUNA_SESSIONIZER_PORT": str(free_ports(1)[0])}
        settings = load(Settings, bench)
        ensure_topics(settings, PUBLIC_TOPICS)
        raw = TOUCHPOINTS_RAW.name("bench.")
        serde = default_serde()
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                             "partitioner": "murmur2_random", "linger.ms": 20,
                             "compression.type": "lz4", "queue.buffering.max.messages": 1000000})
        for r in records(n, profiles):
            r.update(occurred_at=r["event_time"], sent_at=None, received_at=r["event_time"],
                     source="bench", properties={}, context={},
                     commerce={"cart_id": None, "order_id": None, "product_id": None,
                               "quantity": None, "unit_price": None, "value": 10.0,
                               "currency": None})
            key = (r["customer_id"] or r["anonymous_id"]).encode()
            while True:
                try:
                    producer.produce(raw, serde.encode(TOUCHPOINT, r), key)
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.flush(60)
        group = "bench.sessionizer"
        profile = ["-m", "cProfile", "-o", profile_to] if profile_to else []
        worker = subprocess.Popen([sys.executable, *profile, "-m", "services.sessionizer"],
                                  env=bench,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(worker.pid)
        first = cpu0 = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            lag = group_lag(settings, group, [raw])
            now = time.monotonic()
            if first is None and lag < n:
                first, cpu0 = now, sum(proc.cpu_times()[:2])
            if lag == 0:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"sessionizer did not catch up: lag {lag}")
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        rss = proc.memory_info().rss / 2**20
        worker.terminate()
        worker.wait(30)
        wall = now - first
        print(f"kafka: {n} events, {profiles} profiles, 4 partitions, one worker: "
              f"{n / wall:,.0f} events/s, {cpu / n * 1e6:.0f} us CPU/event, RSS {rss:.0f} MiB")
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--only", choices=["pure", "kafka"])
    parser.add_argument("--profile", metavar="FILE", help="cProfile the worker into FILE")
    args = parser.parse_args()
    if args.only != "kafka":
        pure(args.events, args.profiles)
    if args.only != "pure":
        through_kafka(args.events, args.profiles, args.profile)


if __name__ == "__main__":
    main()
