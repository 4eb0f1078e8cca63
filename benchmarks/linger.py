"""`make bench-linger`: single-event requests, each touchpoint its own message or gathered
across requests (`KIZUNA_INGEST_LINGER_MS`), and what that costs the stages.

For each linger (alternating, ROUNDS times), a stack of its own; C concurrent clients post
one event a request for D seconds (closed loop); then `kizuna wait`. Reported per run: events/s
accepted, request latency p50/p99, raw-topic messages per event, and the CPU seconds the
sessionizer, the scorer and alerting spent per 1,000 events (from /proc, from the first request
until caught up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.conftest import stack_env

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sessionizer", "engagement_scorer", "alerting")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_messages(env: dict) -> int:
    from confluent_kafka import Consumer, TopicPartition

    topic = "kizuna.touchpoints.raw"
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{env['KIZUNA_KAFKA_PORT']}",
                         "group.id": "bench-linger"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in partitions)
    finally:
        consumer.close()


async def single_events(url: str, seconds: float, concurrency: int, tag: str):
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def client(session, k):
        i = 0
        while time.monotonic() < stop:
            body = json.dumps({"event_id": f"{tag}-{k}-{i}", "event_type": "page_view",
                               "channel": "web", "customer_id": f"C{(k * 7919 + i) % 5000}",
                               "occurred_at": 1_710_000_000_000 + i * 1000 + k,
                               "properties": {"page": f"/p/{i % 50}"}})
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 202:
                    raise RuntimeError(f"status {r.status}")
            latencies.append(time.perf_counter() - t)
            i += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        started = time.monotonic()
        await asyncio.gather(*(client(s, k) for k in range(concurrency)))
        return len(latencies) / (time.monotonic() - started), latencies


def one_run(linger: float, seconds: float, concurrency: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="kz-linger-", dir="/tmp"))
    env = dict(stack_env(home), KIZUNA_WRITE_KEYS="bench=bench:web|app|email|pos",
               KIZUNA_INGEST_RATE="10000000", KIZUNA_INGEST_LINGER_MS=str(linger))
    kizuna = [sys.executable, "-m", "services.cli"]
    subprocess.run([*kizuna, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        pids = {p["name"]: p["pid"] for p in json.loads(subprocess.run(
            [*kizuna, "status", "--json"], env=env, capture_output=True, text=True).stdout)}
        url = f"http://127.0.0.1:{env['KIZUNA_INGEST_PORT']}/v1/events"
        asyncio.run(single_events(url, 2, concurrency, "warm"))
        subprocess.run([*kizuna, "wait", "--timeout", "300"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        messages_before = raw_messages(env)
        cpu_before = {s: cpu_seconds(pids[s]) for s in STAGES}
        rate, latencies = asyncio.run(single_events(url, seconds, concurrency, "run"))
        subprocess.run([*kizuna, "wait", "--timeout", "600"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        cpu = {s: cpu_seconds(pids[s]) - cpu_before[s] for s in STAGES}
        messages = raw_messages(env) - messages_before
    finally:
        subprocess.run([*kizuna, "down"], env=env, stdout=subprocess.DEVNULL)
    events = len(latencies)
    q = statistics.quantiles(latencies, n=100)
    return {"linger_ms": linger, "events": events, "events_per_s": round(rate),
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "raw_messages_per_event": round(messages / events, 3),
            **{f"{s}_cpu_s_per_1000": round(cpu[s] * 1000 / events, 3) for s in STAGES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--lingers", default="0,5")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs = []
    for _ in range(args.rounds):
        for linger in (float(x) for x in args.lingers.split(",")):
            runs.append(one_run(linger, args.seconds, args.concurrency))
            print(json.dumps(runs[-1]), flush=True)
    out = ROOT / "out" / "bench-linger.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
