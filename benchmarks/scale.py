"""`make bench-scale`: a retailer's customers in a stack with the settings as shipped.

    python -m benchmarks.scale --customers 1000000 --shape thin       # 2 touchpoints each
    python -m benchmarks.scale --customers 1000000 --shape personas   # ~30 a year each

1. Generates the events into a JSONL file (`thin`: a page view and a purchase a customer over
   the year; `personas`: the demo generator's personas over the year at a retailer's
   activity, about 30 touchpoints a customer on every channel), in chunks of customers.
2. `kizuna up` in a fresh KIZUNA_HOME with nothing set but the home and free ports; `kizuna
   import` the file; `kizuna wait`. Meanwhile each stage's resident memory is sampled every
   2 s (peak and the series, for the plot).
3. Counts the profiles in ClickHouse (every customer must have one).
4. Each stateful stage killed with SIGKILL: seconds until supervisord's restart answers
   `/readyz`.
5. A second sessionizer worker joins the group: seconds until it is ready with its share of
   the partitions, and what the first holds then.
6. The state on disk per stage (its databases) and its changelog topic's size.

Writes out/scale-<shape>-<customers>.json and .md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
KIZUNA = [sys.executable, "-m", "services.cli"]
START_MS = 1_735_689_600_000  # 2025-01-01
DAY_MS = 86_400_000
STATEFUL = ("sessionizer", "engagement_scorer", "alerting")
PORTS = {"sessionizer": "KIZUNA_SESSIONIZER_PORT",
         "engagement_scorer": "KIZUNA_ENGAGEMENT_SCORER_PORT",
         "alerting": "KIZUNA_ALERTING_PORT", "ingest": "KIZUNA_INGEST_PORT",
         "warehouse": "KIZUNA_WAREHOUSE_PORT"}


def write_thin(path: Path, customers: int, seed: int) -> int:
    """A page view and, a few minutes later, a purchase, for each customer, at a random
    moment of the year."""
    rnd = random.Random(seed)
    with path.open("w") as f:
        for n in range(customers):
            t = START_MS + rnd.randrange(364 * DAY_MS)
            who = {"customer_id": f"c{n:07d}", "anonymous_id": f"d{n:07d}"}
            f.write(json.dumps({"event_id": f"c{n:07d}-1", "event_type": "page_view",
                                "channel": "web", "occurred_at": t, **who,
                                "properties": {"page": "/"}}) + "\n")
            f.write(json.dumps({"event_id": f"c{n:07d}-2", "event_type": "purchase",
                                "channel": "web", "occurred_at": t + rnd.randint(60, 900) * 1000,
                                **who, "commerce": {"order_id": f"o{n:07d}",
                                                    "value": rnd.randint(500, 20000) / 100,
                                                    "currency": "EUR"}}) + "\n")
    return 2 * customers


def write_personas(path: Path, customers: int, seed: int, activity: float) -> int:
    """The demo generator's personas over a year, 1,000 customers a chunk (each chunk its own
    seed, so its own ids)."""
    from services.generator.personas import generate

    written = 0
    with path.open("w") as f:
        for chunk, first in enumerate(range(0, customers, 1000)):
            world = generate(min(1000, customers - first), 365, seed * 100_000 + chunk,
                             START_MS, activity)
            for event in world.events:
                f.write(json.dumps(event, separators=(",", ":")) + "\n")
            written += len(world.events)
            if chunk % 100 == 0:
                print(f"  generated {first + 1000:,} customers, {written:,} events", flush=True)
    return written


def bench_env(home: Path) -> dict[str, str]:
    """Nothing set but the home and free ports: the settings as shipped."""
    from tests.conftest import free_ports

    env = {k: v for k, v in os.environ.items() if not k.startswith("KIZUNA_")}
    names = ["KIZUNA_KAFKA_PORT", "KIZUNA_KAFKA_CONTROLLER_PORT", "KIZUNA_CLICKHOUSE_HTTP_PORT",
             "KIZUNA_SCHEMA_REGISTRY_PORT", *PORTS.values()]
    env.update(zip(names, map(str, free_ports(len(names))), strict=True))
    env["KIZUNA_HOME"] = str(home)
    return env


def kizuna(env: dict, *args: str, timeout: float = 36_000) -> str:
    done = subprocess.run([*KIZUNA, *args], env=env, cwd=ROOT, text=True, capture_output=True,
                          timeout=timeout, check=False)
    if done.returncode:
        raise SystemExit(f"kizuna {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def pid_of(env: dict, program: str) -> int:
    from services.common.settings import Settings, load
    from services.localstack.supervisor import rpc

    return rpc(load(Settings, env)).getProcessInfo(program)["pid"]


def ready(env: dict, stage: str) -> bool:
    from services.localstack.registry import readyz_ok

    return readyz_ok(int(env[PORTS[stage]]))


class Sampler(threading.Thread):
    """Every stage's resident memory every `every` seconds: the series and the peak."""

    def __init__(self, env: dict, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.env, self.every = env, every
        self.started = time.monotonic()
        self.series: list[tuple[float, dict[str, float]]] = []
        self.peak: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            sample = {}
            for stage in (*STATEFUL, "ingest", "warehouse"):
                try:
                    sample[stage] = psutil.Process(pid_of(self.env, stage)).memory_info().rss
                except Exception:  # noqa: BLE001 - a stage restarting has no process
                    continue
                sample[stage] /= 2**20
                self.peak[stage] = max(self.peak.get(stage, 0.0), sample[stage])
            self.series.append((round(time.monotonic() - self.started, 1), sample))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def changelog_bytes(home: Path, stage: str) -> int:
    """The changelog's log segments (not Kafka's preallocated indexes)."""
    return sum(f.stat().st_size for d in home.glob(f"kafka*/**/kizuna.{stage}-*-changelog-*")
               for f in d.glob("*.log"))


def query(env: dict, sql: str) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(kizuna(env, "query", sql, "--format", "csv"))))


def restart_after_kill(env: dict, stage: str, timeout: float = 600) -> float:
    """SIGKILL the stage; seconds until its restarted process answers /readyz."""
    old = pid_of(env, stage)
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < timeout:
        try:
            if pid_of(env, stage) not in (0, old) and ready(env, stage):
                return time.monotonic() - killed
        except Exception:  # noqa: BLE001, S110 - supervisord between two states
            pass
        time.sleep(0.2)
    raise SystemExit(f"{stage} not ready {timeout:g} s after SIGKILL")


def second_worker(env: dict, home: Path, timeout: float = 1800) -> dict:
    """A second sessionizer worker (its own home and port) joins: seconds until it is
    ready, and the partitions each holds then."""
    from tests.conftest import free_ports

    port = free_ports(1)[0]
    wenv = {**env, "KIZUNA_HOME": str(home / "second"), "KIZUNA_SESSIONIZER_PORT": str(port),
            "KIZUNA_WORKER_ID": "second"}
    for name in ("run", "logs"):
        (home / "second" / name).mkdir(parents=True, exist_ok=True)
    log = (home / "second" / "logs" / "sessionizer.log").open("w")
    started = time.monotonic()
    worker = subprocess.Popen([sys.executable, "-m", "services.sessionizer"], env=wenv,  # noqa: S603
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        from services.localstack.registry import readyz_ok

        while not readyz_ok(port):
            if worker.poll() is not None or time.monotonic() - started > timeout:
                raise SystemExit("the second sessionizer worker did not become ready")
            time.sleep(0.2)
        joined = time.monotonic() - started
        while not ready(env, "sessionizer"):  # the first one, after the rebalance
            time.sleep(0.2)
        both = time.monotonic() - started
        return {"second_ready_s": round(joined, 1), "both_ready_s": round(both, 1),
                "second_state_mb": round(du(home / "second" / "state") / 2**20, 1)}
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--shape", choices=["thin", "personas"], default="thin")
    parser.add_argument("--activity", type=float, default=0.02,
                        help="personas only: the generator's activity (0.02: ~30 a year)")
    parser.add_argument("--home", help="KIZUNA_HOME (default: a new directory under /tmp)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()

    home = Path(args.home or f"/tmp/kz-scale-{args.shape}-{args.customers}")
    home.mkdir(parents=True, exist_ok=True)
    events = home / "events.jsonl"
    begun = time.monotonic()
    if not events.exists():
        print(f"generating {args.customers:,} customers ({args.shape})", flush=True)
        (write_thin(events, args.customers, 1) if args.shape == "thin"
         else write_personas(events, args.customers, 1, args.activity))
    lines = sum(1 for _ in events.open())
    result: dict = {"customers": args.customers, "shape": args.shape, "events": lines,
                    "events_mb": round(events.stat().st_size / 2**20),
                    "generated_s": round(time.monotonic() - begun)}
    env = bench_env(home)
    kizuna(env, "up", timeout=600)
    sampler = Sampler(env)
    sampler.start()
    try:
        started = time.monotonic()
        kizuna(env, "import", str(events), "--format", "jsonl",
               "--until", "2026-01-02T00:00:00Z")
        result["import_s"] = round(time.monotonic() - started)
        print(f"imported {lines:,} events in {result['import_s']} s", flush=True)
        kizuna(env, "wait", "--timeout", "36000")
        result["caught_up_s"] = round(time.monotonic() - started)
        result["peak_rss_mib"] = {k: round(v) for k, v in sampler.peak.items()}
        print(f"caught up {result['caught_up_s']} s after the import began; peak RSS "
              f"{result['peak_rss_mib']}", flush=True)
        (row,) = query(env, "SELECT uniqExact(customer_id) AS n FROM kizuna.customer_profiles")
        result["profiles"] = int(row["n"])
        result["state_disk_mb"] = {s: round(du(home / "state" / f"kizuna.{s}") / 2**20, 1)
                                   for s in STATEFUL}
        result["changelog_mb"] = {s: round(changelog_bytes(home, s) / 2**20, 1)
                                  for s in STATEFUL}
        result["rss_mib_caught_up"] = dict(sampler.series[-1][1]) if sampler.series else {}
        result["ready_after_kill_s"] = {}
        for stage in STATEFUL:
            result["ready_after_kill_s"][stage] = round(restart_after_kill(env, stage), 1)
            print(f"{stage}: ready {result['ready_after_kill_s'][stage]} s after SIGKILL",
                  flush=True)
        result["second_sessionizer"] = second_worker(env, home)
        result["peak_rss_mib"] = {k: round(v) for k, v in sampler.peak.items()}
    finally:
        sampler.stopped.set()
        result["rss_series"] = sampler.series
        out = ROOT / "out" / f"scale-{args.shape}-{args.customers}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        if not args.keep:
            kizuna(env, "down", timeout=300)
    shown = {k: v for k, v in result.items() if k != "rss_series"}
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
