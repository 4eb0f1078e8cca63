"""`make bench-ingest`: one collector process, 100-event batches, against the local broker.

1. maximum rate: closed loop, C concurrent clients, for D seconds -> accepted events/s;
2. half that rate, open loop (requests start on schedule whatever the latency) -> p50/p99;
3. the same events as Segment `/v1/batch` bodies (its HTTP Tracking API), closed loop.

Starts its own stack (free ports, temporary KIZUNA_HOME) and stops it. The load generator
shares the machine's cores with the collector and the broker: the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.conftest import stack_env

ROOT = Path(__file__).resolve().parents[1]


def batches(n: int, size: int) -> list[bytes]:
    out = []
    for b in range(n):
        events = [{
            "event_id": f"bench-{b}-{i}",
            "event_type": ("page_view", "cart_add", "purchase")[i % 3],
            "channel": ("web", "app", "email", "pos")[i % 4],
            "occurred_at": 1_710_000_000_000 + b * 1000 + i,
            "customer_id": f"C{(b * size + i) % 5000}",
            "properties": {"page": f"/p/{i}", "ref": "campaign-spring"},
            "context": {"device": "mobile", "source": "shop-web"},
        } for i in range(size)]
        out.append(json.dumps({"events": events}).encode())
    return out


def segment_batches(n: int, size: int) -> list[bytes]:
    """The same events as Segment's `/v1/batch` bodies, as its SDKs send them."""
    names = ("Product Viewed", "Product Added", "Order Completed")
    contexts = ({"userAgent": "Mozilla/5.0", "page": {"path": "/"}}, {"os": {"name": "iOS"}})
    out = []
    for b in range(n):
        batch = [{
            "type": "track", "messageId": f"seg-{b}-{i}", "event": names[i % 3],
            "userId": f"C{(b * size + i) % 5000}",
            "timestamp": f"2024-03-09T16:{b % 60:02d}:{i % 60:02d}.000Z",
            "properties": {"page": f"/p/{i}", "ref": "campaign-spring", "product_id": f"P{i}",
                           "price": 19.9, "quantity": 1},
            "context": {**contexts[i % 2], "library": {"name": "analytics-python"}},
        } for i in range(size)]
        out.append(json.dumps({"batch": batch, "sentAt": "2024-03-09T17:00:00.000Z"}).encode())
    return out


async def max_rate(url, headers, bodies, seconds, concurrency, size, ok=202):
    accepted, latencies = 0, []
    stop = time.monotonic() + seconds

    async def worker(session, k):
        nonlocal accepted
        i = k
        while time.monotonic() < stop:
            t = time.perf_counter()
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                await r.read()
                if r.status == ok:
                    accepted += size
                else:
                    raise RuntimeError(f"status {r.status}")
            latencies.append(time.perf_counter() - t)
            i += concurrency

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        started = time.monotonic()
        await asyncio.gather(*(worker(s, k) for k in range(concurrency)))
        elapsed = time.monotonic() - started
    return accepted / elapsed, latencies


async def fixed_rate(url, headers, bodies, seconds, events_per_s, size):
    interval = size / events_per_s
    latencies, tasks = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
        async def one(i):
            t = time.perf_counter()
            async with s.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                await r.read()
                assert r.status == 202, r.status
            latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        await asyncio.gather(*tasks)
    return latencies


def pct(values, q):
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-ingest.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kz-bench-", dir="/tmp"))
    env = dict(stack_env(home), KIZUNA_WRITE_KEYS="bench=bench:web|app|email|pos",
               KIZUNA_INGEST_RATE="10000000")
    kizuna = [sys.executable, "-m", "services.cli"]
    subprocess.run([*kizuna, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{env['KIZUNA_INGEST_PORT']}/v1/events"
        headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
        bodies = batches(200, args.batch)
        asyncio.run(max_rate(url, headers, bodies, 3, args.concurrency, args.batch))  # warm-up
        rate, closed = asyncio.run(
            max_rate(url, headers, bodies, args.seconds, args.concurrency, args.batch))
        half = asyncio.run(fixed_rate(url, headers, bodies, args.seconds, rate / 2, args.batch))
        # Segment's /v1/batch, the same events in Segment's format, in the same run
        segment_url = url.replace("/v1/events", "/v1/batch")
        segment_headers = {"Authorization": "Basic " + base64.b64encode(b"bench:").decode(),
                           "Content-Type": "application/json"}
        segment_bodies = segment_batches(200, args.batch)
        segment_rate, segment_closed = asyncio.run(max_rate(
            segment_url, segment_headers, segment_bodies, args.seconds, args.concurrency,
            args.batch, ok=200))
    finally:
        subprocess.run([*kizuna, "down"], env=env, stdout=subprocess.DEVNULL)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores", "batch_events": args.batch, "concurrency": args.concurrency,
        "max_events_per_s": round(rate),
        "max_rate_p50_ms": round(pct(closed, 50), 2), "max_rate_p99_ms": round(pct(closed, 99), 2),
        "half_rate_events_per_s": round(rate / 2),
        "half_rate_p50_ms": round(pct(half, 50), 2), "half_rate_p99_ms": round(pct(half, 99), 2),
        "segment_batch_max_events_per_s": round(segment_rate),
        "segment_batch_p50_ms": round(pct(segment_closed, 50), 2),
        "segment_batch_p99_ms": round(pct(segment_closed, 99), 2),
        "segment_vs_events_ratio": round(segment_rate / rate, 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        print(f"{key:<24} {value}")


if __name__ == "__main__":
    main()
