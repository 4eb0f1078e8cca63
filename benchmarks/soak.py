"""`make soak`: steady live traffic for a long while; memory, lag and latency over time.

    python -m benchmarks.soak --minutes 30 --rate 500

A fresh stack with the settings as shipped, but live ones (3 s allowed lateness, the
sessionizer's 1 s tick, carts abandoned after 15 s, no collector rate limit), takes
single-event requests through the collector at `--rate` events/s from a fixed population of
customers (the generator's personas, their days replayed again and again with new ids, so
each customer's history keeps growing as a live shop's does). Every 10 s it records each
stage's resident memory, each consumer group's lag, and the p99 of collector receipt -> row
in ClickHouse over the interval (1 event in 20, seen by a poll every 0.5 s).

It fails (exit 1) when, after the warm-up (the first fifth of the run):
- a stage's memory keeps growing: the mean of the last fifth is more than 10 % + 64 MiB
  above the mean of the second fifth;
- or lag does not stay bounded: any group's lag in the last fifth above `--max-lag`, or its
  mean there more than twice its mean in the second fifth + 1,000.

Writes out/soak.json and out/soak.svg (memory and lag over time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIVE = {"KIZUNA_ALLOWED_LATENESS_MINUTES": "0.05", "KIZUNA_WATERMARK_TICK_SECONDS": "1",
        "KIZUNA_CART_ABANDONMENT_MINUTES": "0.25", "KIZUNA_INGEST_RATE": "100000000"}
STAGES = ("ingest", "sessionizer", "engagement_scorer", "alerting", "warehouse")
IDS = ("event_id", "cart_id", "order_id")


def again(event: dict, cycle: int) -> dict:
    """The event with its ids (event, cart, order) made new for replay `cycle`."""
    def fresh(value: object) -> object:
        if isinstance(value, dict):
            return {k: (f"{v}-r{cycle}" if k in IDS and isinstance(v, str) else fresh(v))
                    for k, v in value.items()}
        return value
    return fresh(event) if cycle else event


def endless(customers: int, seed: int) -> Iterator[dict]:
    from services.generator.personas import generate

    world = generate(customers, 14, seed, 1_767_571_200_000)
    events = [e for e in world.events if isinstance(e, dict) and "_malformed" not in e]
    for cycle in itertools.count():
        for event in events:
            yield again(event, cycle)


class Recorder(threading.Thread):
    """Every `every` s: RSS per stage, lag per consumer group, row-latency p99."""

    def __init__(self, env: dict, every: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.env, self.every = env, every
        self.stop = threading.Event()
        self.samples: list[dict] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()

    def poll_rows(self) -> None:
        from services.common.queries import query_rows
        from services.common.settings import Settings, load

        settings = load(Settings, self.env)
        seen: set[str] = set()
        while not self.stop.is_set():
            asked = time.time() * 1000
            try:
                rows = query_rows(settings, (
                    "SELECT event_id, toUnixTimestamp64Milli(received_at) AS r "
                    "FROM kizuna_store.touchpoints WHERE received_at >= "
                    f"fromUnixTimestamp64Milli({int(asked) - 60_000}) "
                    "AND cityHash64(event_id) % 20 = 0"))
            except Exception:  # noqa: BLE001 - the warehouse busy: ask again
                rows = []
            with self.lock:
                for row in rows:
                    if row["event_id"] not in seen:
                        seen.add(row["event_id"])
                        self.latencies.append(asked - int(row["r"]))
            time.sleep(0.5)

    def run(self) -> None:
        import psutil

        from services.common.kafka import group_positions
        from services.common.settings import Settings, load
        from services.localstack.pipeline import stage_inputs
        from services.localstack.supervisor import rpc

        settings = load(Settings, self.env)
        threading.Thread(target=self.poll_rows, daemon=True).start()
        started = time.monotonic()
        while not self.stop.wait(self.every):
            rss = {}
            for stage in STAGES:
                try:
                    pid = rpc(settings).getProcessInfo(stage)["pid"]
                    rss[stage] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
                except Exception:  # noqa: BLE001, S112 - restarting: no sample
                    continue
            lag = {}
            for group, topics in stage_inputs(settings).items():
                try:
                    found = group_positions(settings, group, topics)
                    lag[group.rsplit(".", 1)[-1]] = sum(max(0, high - done)
                                                        for done, high in found.values())
                except Exception:  # noqa: BLE001, S112
                    continue
            with self.lock:
                window, self.latencies = self.latencies, []
            p99 = (statistics.quantiles(window, n=100, method="inclusive")[98]
                   if len(window) >= 2 else None)
            self.samples.append({"t": round(time.monotonic() - started), "rss_mib": rss,
                                 "lag": lag, "row_p99_ms": p99 and round(p99),
                                 "rows_sampled": len(window)})
            last = self.samples[-1]
            print(f"[{last['t']:>5} s] rss {rss} lag {lag} row p99 {last['row_p99_ms']} ms",
                  flush=True)


def verdict(samples: list[dict], max_lag: int) -> list[str]:
    """What fails the soak (nothing: it passed)."""
    n = len(samples)
    if n < 10:
        return [f"only {n} samples: run longer"]
    second, last = samples[n // 5: 2 * n // 5], samples[4 * n // 5:]
    problems = []
    for stage in STAGES:
        early = [s["rss_mib"][stage] for s in second if stage in s["rss_mib"]]
        late = [s["rss_mib"][stage] for s in last if stage in s["rss_mib"]]
        if early and late and statistics.mean(late) > statistics.mean(early) * 1.10 + 64:
            problems.append(f"{stage}: memory kept growing, {statistics.mean(early):.0f} -> "
                            f"{statistics.mean(late):.0f} MiB")
    for group in samples[-1]["lag"]:
        early = [s["lag"][group] for s in second if group in s["lag"]]
        late = [s["lag"][group] for s in last if group in s["lag"]]
        if late and max(late) > max_lag:
            problems.append(f"{group}: lag {max(late)} > {max_lag}")
        elif early and late and statistics.mean(late) > 2 * statistics.mean(early) + 1000:
            problems.append(f"{group}: lag grew, {statistics.mean(early):.0f} -> "
                            f"{statistics.mean(late):.0f}")
    return problems


def svg(samples: list[dict]) -> str:
    """Two panels over time: each stage's RSS (MiB) and each group's lag."""
    width, height, left = 760, 200, 60
    colours = ["#3b7dd8", "#d83b3b", "#3bb54a", "#e0a020", "#8a3bd8"]
    end = max(s["t"] for s in samples) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 200}" '
             f'height="{2 * height + 90}" font-family="sans-serif" font-size="12">']
    for panel, (key, title) in enumerate((("rss_mib", "resident memory, MiB"),
                                          ("lag", "consumer lag, records"))):
        top = 30 + panel * (height + 40)
        names = sorted({k for s in samples for k in s[key]})
        peak = max([s[key].get(k, 0) for s in samples for k in names] + [1])
        parts.append(f'<text x="0" y="{top - 8}" font-size="14">{title} (max {peak:,.0f}) '
                     f'over {end} s</text>')
        parts.append(f'<rect x="{left}" y="{top}" width="{width}" height="{height}" '
                     'fill="none" stroke="#ccc"/>')
        for i, name in enumerate(names):
            points = " ".join(
                f"{left + width * s['t'] / end:.1f},"
                f"{top + height - height * s[key][name] / peak:.1f}"
                for s in samples if name in s[key])
            colour = colours[i % len(colours)]
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}"/>')
            parts.append(f'<text x="{left + width + 10}" y="{top + 14 + 16 * i}" '
                         f'fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def main() -> int:
    from benchmarks.scale import bench_env, kizuna
    from services.generator.live import send_live

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=500, help="events/s")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--max-lag", type=int, default=50_000)
    parser.add_argument("--home", default="/tmp/kz-soak")
    args = parser.parse_args()

    home = Path(args.home)
    env = {**bench_env(home), **LIVE, "KIZUNA_WRITE_KEYS": "soak-key=soak:web|app|email|pos|"
           "support|social|other"}
    kizuna(env, "up", timeout=600)
    recorder = Recorder(env)
    recorder.start()
    try:
        report = send_live(endless(args.customers, 11), args.rate, host="127.0.0.1",
                           port=int(env["KIZUNA_INGEST_PORT"]), key="soak-key",
                           duration=args.minutes * 60, progress=None)
        time.sleep(recorder.every + 1)
    finally:
        recorder.stop.set()
        recorder.join(30)
        kizuna(env, "down", timeout=300)
    problems = verdict(recorder.samples, args.max_lag)
    result = {"minutes": args.minutes, "rate_asked": args.rate,
              "events_per_s": round(report.accepted / report.seconds),
              "accepted": report.accepted, "rejected": sum(report.rejected.values()),
              "customers": args.customers, "problems": problems,
              "samples": recorder.samples}
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    if recorder.samples:
        (out / "soak.svg").write_text(svg(recorder.samples))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    print("soak: " + ("PASSED" if not problems else "FAILED: " + "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
