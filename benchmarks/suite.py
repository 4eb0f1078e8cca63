"""`make bench` / `kizuna bench`: Kizuna against the raw-Kafka and faust ceilings, in one run.

On one local stack (a temporary KIZUNA_HOME, free ports), with the demo generator's events:

1. ceilings: confluent-kafka producing and consuming the same Avro touchpoints (the Kafka
   client's limit here), and a bare faust agent that only decodes them (faust's per-message
   limit, `benchmarks/floor.py`);
2. each stage alone, one worker process on topics filled beforehand: events/s, CPU seconds per
   1,000 events and peak memory (collector, sessionizer with one touchpoint per message and
   with batches of 500, scorer, alerting, warehouse);
3. end to end: `kizuna import` then `kizuna wait` at maximum rate, then live traffic through
   the collector at a fixed rate, with latency from collector receipt to the row in
   ClickHouse and to the alert on its topic;
4. scaling: the stateful stages with 2 worker processes on 4 partitions;
5. state: a stage holding 100,000 customers: memory, and restart to caught up.

Every throughput is also given as a ratio to the ceilings of step 1, because the machine is
shared and noisy and only figures measured side by side compare. Writes out/bench/bench.json,
bench.md and bench.svg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks import ingest as collector_bench
from benchmarks.stages import generated_records
from benchmarks.warehouse import pipeline_outputs
from services.common.kafka import client_config, ensure_topics
from services.common.schema_registry import register, serde_for
from services.common.serde import ALERT, ENGAGEMENT_PROFILE, SESSION, TOUCHPOINT, default_serde
from services.common.settings import Settings, load
from services.common.topics import (
    ALERTS_CART_ABANDONMENT,
    ALERTS_CHURN_RISK,
    ATTRIBUTED,
    ENGAGEMENT_SCORES,
    HANDOFF,
    PUBLIC_TOPICS,
    SESSIONS,
    TOUCHPOINTS_RAW,
)
from services.ingest.importer import PartitionBatcher
from services.localstack.health import scrape, series_total
from services.localstack.registry import readyz_ok
from tests.conftest import free_ports, stack_env

ROOT = Path(__file__).resolve().parents[1]
KIZUNA = [sys.executable, "-m", "services.cli"]
POLL_S = 0.1


# --- processes ------------------------------------------------------------------------------

class Worker:
    """One process of a stage, started with its own port and topic prefix."""

    def __init__(self, module: str, env: dict[str, str], port: int, log: Path,
                 args: tuple[str, ...] = ()) -> None:
        self.port = port
        self.started = time.monotonic()
        self.popen = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", module, *args], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=log.open("w"))
        self.proc = psutil.Process(self.popen.pid)

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from start to `/readyz` answering ok (state recovered, partitions held)."""
        deadline = time.monotonic() + timeout
        while not readyz_ok(self.port):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"a worker on port {self.port} did not become ready")
            time.sleep(0.05)
        return time.monotonic() - self.started

    def counter(self, name: str, labels: dict[str, str]) -> float:
        return series_total(scrape(self.port), name, labels) or 0.0

    def cpu_seconds(self) -> float:
        times = self.proc.cpu_times()
        return times.user + times.system

    def peak_mib(self) -> float:
        """The process's peak resident memory (VmHWM)."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return self.proc.memory_info().rss / 2**20

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()




def drain(workers: list[Worker], counter: str, labels: dict[str, str], expected: float,
          feed: Callable[[], None], timeout: float = 600, poll_s: float = POLL_S) -> dict:
    """Throughput of `workers`, ready and idle, over the input `feed` then produces: from the
    start of the feed to the last event counted. events/s, CPU seconds per 1,000 events (all
    workers) and peak memory (the largest). Feeding costs little next to any stage (the raw
    produce ceiling is many times faster), and so every worker holds its partitions first."""
    for w in workers:
        w.wait_ready()
    time.sleep(1 if len(workers) > 1 else 0)  # the group settled on its last member
    started, cpu0 = time.monotonic(), sum(w.cpu_seconds() for w in workers)
    feed()
    deadline = started + timeout
    while (total := sum(w.counter(counter, labels) for w in workers)) < expected:
        if time.monotonic() > deadline:
            raise SystemExit(f"{counter}: {total:.0f} of {expected:.0f} after {timeout:g} s")
        time.sleep(poll_s)
    seconds = time.monotonic() - started
    cpu = sum(w.cpu_seconds() for w in workers) - cpu0
    return {"events": int(expected), "events_per_s": round(total / seconds),
            "seconds": round(seconds, 2), "cpu_s_per_1000": round(cpu / total * 1000, 4),
            "peak_mib": round(max(w.peak_mib() for w in workers), 1),
            "workers": len(workers)}


# --- the bench ------------------------------------------------------------------------------

@dataclass
class Bench:
    home: Path
    env: dict[str, str]
    events: int
    live_rate: float
    live_seconds: float
    state_customers: int
    copies: int
    e2e_customers: int
    results: dict = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return load(Settings, self.env)

    def note(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def kizuna(self, *args: str, env: dict | None = None, timeout: float = 900) -> str:
        done = subprocess.run([*KIZUNA, *args], env=env or self.env, cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout, check=False)
        if done.returncode:
            raise SystemExit(f"kizuna {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def stage_env(self, prefix: str, **extra: str) -> dict[str, str]:
        env = {**self.env, "KIZUNA_TOPIC_PREFIX": prefix, **extra}
        ensure_topics(load(Settings, env), (*PUBLIC_TOPICS, ATTRIBUTED, HANDOFF))
        register(load(Settings, env))  # the stages write with the registry's ids
        return env

    def worker(self, module: str, env: dict[str, str], port_env: str,
               args: tuple[str, ...] = ()) -> Worker:
        port = free_ports(1)[0]
        log = self.home / "bench-logs" / f"{module.rsplit('.', 1)[-1]}-{port}.log"
        log.parent.mkdir(exist_ok=True)
        return Worker(module, {**env, port_env: str(port)}, port, log, args)

    def producer(self) -> Producer:
        return Producer({**client_config(self.settings), "linger.ms": 20,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000,
                         "partitioner": "murmur2_random"})


Message = tuple  # (topic, value, key, partition, headers)


def produce_all(producer: Producer, messages: list[Message]) -> None:
    """Produce, and wait until every message is acknowledged."""
    for topic, value, key, partition, headers in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise SystemExit("the broker did not acknowledge every benchmark message")


def single_messages(records: list[dict], topic: str) -> list[Message]:
    """One Avro touchpoint per message, keyed by the customer: as the collector writes."""
    serde = default_serde()
    return [(topic, serde.encode(TOUCHPOINT, r),
             (r["customer_id"] or r["anonymous_id"]).encode(), -1, None) for r in records]


def batch_messages(records: list[dict], topic: str, partitions: int) -> list[Message]:
    """touchpoint_batch messages of 500 per partition: as `kizuna import` writes."""
    out: list[Message] = []
    batcher = PartitionBatcher(default_serde(), topic, partitions, lambda t, v, k, _n, partition=-1,
                               headers=None: out.append((t, v, k, partition, headers)), size=500)
    for r in records:
        batcher.add(r)
    batcher.flush()
    return out


def attributed_messages(attributed: list[dict], topic: str, partitions: int) -> list[Message]:
    """The sessionizer's attributed-touches messages, each split onto its customers'
    partitions (as the sessionizer writes: one message per partition and batch)."""
    out = []
    for message in attributed:
        chunks: list[dict] = [{} for _ in range(partitions)]
        for customer, touches in message["c"].items():
            p = (murmur2(customer.encode()) & 0x7FFFFFFF) % partitions
            chunks[p][customer] = touches
        out += [(topic, orjson.dumps({"t": message["t"], "c": c}), None, p, None)
                for p, c in enumerate(chunks) if c]
    return out


def touches_in(messages: list[Message]) -> int:
    return sum(len(t) for m in messages for t in orjson.loads(m[1])["c"].values())


# --- 1. ceilings ----------------------------------------------------------------------------

def ceilings(b: Bench, records: list[dict]) -> None:
    prefix = "bench.m."
    env = b.stage_env(prefix)
    topic = TOUCHPOINTS_RAW.name(prefix)
    messages = single_messages(records, topic)
    producer = b.producer()
    started, cpu = time.perf_counter(), time.process_time()
    produce_all(producer, messages)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    b.results["raw_produce"] = {"events": len(messages),
                                "events_per_s": round(len(messages) / seconds),
                                "cpu_s_per_1000": round(cpu / len(messages) * 1000, 4)}
    b.note(f"raw confluent-kafka produce: {b.results['raw_produce']['events_per_s']:,} "
           "events/s")

    serde = default_serde()
    consumer = Consumer({**client_config(b.settings), "group.id": "bench",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen = 0
    started, cpu = time.perf_counter(), time.process_time()
    while seen < len(messages):
        for message in consumer.consume(1000, timeout=1.0):
            if not message.error():
                serde.decode(TOUCHPOINT, message.value())
                seen += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    consumer.close()
    b.results["raw_consume"] = {"events": seen, "events_per_s": round(seen / seconds),
                                "cpu_s_per_1000": round(cpu / seen * 1000, 4)}
    b.note(f"raw confluent-kafka consume + Avro decode: "
           f"{b.results['raw_consume']['events_per_s']:,} events/s")

    env = b.stage_env("bench.floor.")
    topic = TOUCHPOINTS_RAW.name("bench.floor.")
    floor = b.worker("benchmarks.floor", {**env, "KIZUNA_BENCH_TOPIC": topic},
                     "KIZUNA_BENCH_PORT", ("worker",))
    try:
        b.results["faust_floor"] = drain(
            [floor], "kizuna_bench_floor_events_total", {}, len(messages),
            lambda: produce_all(producer, [(topic, *m[1:]) for m in messages]))
    finally:
        floor.stop()
    b.note(f"bare faust agent (decode only): {b.results['faust_floor']['events_per_s']:,} "
           "events/s")


# --- 2. each stage alone, and 4. scaling ----------------------------------------------------

def collector(b: Bench) -> None:
    key = "bench-key"
    env = b.stage_env("bench.c.", KIZUNA_WRITE_KEYS=f"{key}=bench:web|app|email|pos",
                      KIZUNA_INGEST_RATE="100000000")
    w = b.worker("services.ingest", env, "KIZUNA_INGEST_PORT")
    try:
        w.wait_ready()
        url = f"http://127.0.0.1:{w.port}/v1/events"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        bodies = collector_bench.batches(200, 100)
        asyncio.run(collector_bench.max_rate(url, headers, bodies, 2, 16, 100))  # warm-up
        cpu = w.cpu_seconds()
        rate, latencies = asyncio.run(
            collector_bench.max_rate(url, headers, bodies, 15, 16, 100))
        cpu = w.cpu_seconds() - cpu
        b.results["collector"] = {
            "events_per_s": round(rate), "cpu_s_per_1000": round(cpu / (rate * 15) * 1000, 4),
            "peak_mib": round(w.peak_mib(), 1), "workers": 1,
            "request_p50_ms": round(collector_bench.pct(latencies, 50), 1),
            "request_p99_ms": round(collector_bench.pct(latencies, 99), 1)}
    finally:
        w.stop()
    b.note(f"collector: {b.results['collector']['events_per_s']:,} events/s")


STAGES = {  # name -> (module, port setting, counter, labels)
    "sessionizer": ("services.sessionizer", "KIZUNA_SESSIONIZER_PORT",
                    "kizuna_sessionizer_events_total", {"outcome": "events"}),
    "engagement_scorer": ("services.engagement_scorer", "KIZUNA_ENGAGEMENT_SCORER_PORT",
                          "kizuna_engagement_scorer_touches_total", {}),
    "alerting": ("services.alerting", "KIZUNA_ALERTING_PORT", "kizuna_alerting_touches_total",
                 {}),
}


def run_stage(b: Bench, name: str, stage: str, prefix: str,
              fill: Callable[[str], tuple[list[Message], int]], workers: int = 1) -> dict:
    """`workers` processes of `stage` over `fill`'s messages (and the events they hold) on
    topics of their own (`prefix`)."""
    module, port_env, counter, labels = STAGES[stage]
    env = b.stage_env(prefix)
    messages, expected = fill(prefix)
    started = [b.worker(module, env, port_env) for _ in range(workers)]
    try:
        result = drain(started, counter, labels, expected,
                       lambda: produce_all(b.producer(), messages))
    finally:
        for w in started:
            w.stop()
    b.results[name] = result
    b.note(f"{name}: {result['events_per_s']:,} events/s, {result['cpu_s_per_1000']} CPU s "
           f"per 1,000, peak {result['peak_mib']} MiB")
    return result


def warehouse(b: Bench, outputs: dict) -> None:
    prefix = "bench.w."
    home = b.home / "bench-warehouse"
    # a second warehouse beside the stack's: its own ClickHouse HTTP port (the stack's holds one)
    env = b.stage_env(prefix, KIZUNA_HOME=str(home),
                      KIZUNA_CLICKHOUSE_HTTP_PORT=str(free_ports(1)[0]))
    serde = default_serde()
    messages = single_messages(outputs["touchpoints"][1], TOUCHPOINTS_RAW.name(prefix))
    messages += [(SESSIONS.name(prefix), serde.encode(SESSION, s), s["session_id"].encode(), -1,
                  None) for s in outputs["sessions_by_id"][1]]
    messages += [(ENGAGEMENT_SCORES.name(prefix), serde.encode(ENGAGEMENT_PROFILE, p),
                  p["customer_id"].encode(), -1, None) for p in outputs["customer_profiles"][1]]
    messages += [((ALERTS_CART_ABANDONMENT if a["alert_type"] == "cart_abandonment"
                   else ALERTS_CHURN_RISK).name(prefix), serde.encode(ALERT, a),
                  (a["customer_id"] or a["anonymous_id"]).encode(), -1, None)
                 for a in outputs["alerts"][1]]
    w = b.worker("services.warehouse", env, "KIZUNA_WAREHOUSE_PORT")
    try:
        b.results["warehouse"] = drain([w], "kizuna_warehouse_rows_total", {}, len(messages),
                                       lambda: produce_all(b.producer(), messages))
    finally:
        w.stop()
    b.note(f"warehouse: {b.results['warehouse']['events_per_s']:,} rows/s")


def replicate(records: list[dict], copies: int) -> list[dict]:
    """`copies` copies of the generated customers under ids of their own, in event-time order:
    the fast stages need more events than the per-message ones for a measurable run."""
    out = list(records)
    for j in range(1, copies):
        for r in records:
            out.append({**r, "event_id": f"{r['event_id']}~{j}",
                        "customer_id": r["customer_id"] and f"{r['customer_id']}~{j}",
                        "anonymous_id": r["anonymous_id"] and f"{r['anonymous_id']}~{j}"})
    out.sort(key=lambda r: r["event_time"])
    return out


def stages(b: Bench, records: list[dict]) -> None:
    """Each stage alone on one worker, then the stateful ones on two. The per-message paths
    get `records`; the batched ones `b.copies` times as many (they are that much faster)."""
    partitions = b.settings.partitions
    many = replicate(records, b.copies)
    outputs = pipeline_outputs(many)
    b.note(f"{len(many):,} events through the pure stages for the batched inputs")
    batched = batch_messages(many, "", partitions)

    def singles(prefix: str) -> tuple[list[Message], int]:
        return single_messages(records, TOUCHPOINTS_RAW.name(prefix)), len(records)

    def batches(prefix: str) -> tuple[list[Message], int]:
        return [(TOUCHPOINTS_RAW.name(prefix), *m[1:]) for m in batched], len(many)

    def attributed(prefix: str, repeats: int = 1) -> tuple[list[Message], int]:
        source = [{"t": m["t"], "c": {f"{c}#{j}" if j else c: t for c, t in m["c"].items()}}
                  for j in range(repeats) for m in outputs["attributed"][1]]
        messages = attributed_messages(source, ATTRIBUTED.name(prefix), partitions)
        return messages, touches_in(messages)

    def attributed_x3(prefix: str) -> tuple[list[Message], int]:
        return attributed(prefix, 3)  # the scorer is fast: a longer run measures it better

    collector(b)
    run_stage(b, "sessionizer_per_message", "sessionizer", "bench.s1.", singles)
    run_stage(b, "sessionizer_batched", "sessionizer", "bench.s2.", batches)
    run_stage(b, "engagement_scorer", "engagement_scorer", "bench.a.", attributed_x3)
    run_stage(b, "alerting", "alerting", "bench.a2.", attributed)
    warehouse(b, outputs)
    b.note("scaling: 2 worker processes on 4 partitions")
    run_stage(b, "sessionizer_batched_2_workers", "sessionizer", "bench.x2s.", batches, 2)
    run_stage(b, "engagement_scorer_2_workers", "engagement_scorer", "bench.x2a.",
              attributed_x3, 2)
    run_stage(b, "alerting_2_workers", "alerting", "bench.x2a2.", attributed, 2)


# --- 3. end to end --------------------------------------------------------------------------

def end_to_end_max(b: Bench) -> None:
    """`kizuna import` of generated customers, then `kizuna wait`: the whole pipeline at the
    rate it can take, every stage and the broker and ClickHouse on the same cores."""
    events = b.home / "e2e" / "events.jsonl"
    b.kizuna("generate", "--customers", str(b.e2e_customers), "--days", "30", "--out",
             str(events))
    sent = sum(1 for _ in events.open())
    times = (json.loads(line).get("occurred_at") for line in events.open())
    last = max(t for t in times if isinstance(t, int))  # some are malformed on purpose
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last / 1000 + 86400))
    started = time.monotonic()
    b.kizuna("import", str(events), "--until", until)
    imported = time.monotonic() - started
    b.kizuna("wait", "--timeout", "900")
    seconds = time.monotonic() - started
    rows = int(b.kizuna("query", "SELECT count() FROM kizuna.touchpoints", "--format",
                        "csv").splitlines()[-1])
    b.results["end_to_end_max"] = {"events": sent, "events_per_s": round(sent / seconds),
                                   "seconds": round(seconds, 1),
                                   "import_seconds": round(imported, 1),
                                   "touchpoint_rows": rows}
    b.note(f"end to end, import -> ClickHouse: {sent / seconds:,.0f} events/s "
           f"({sent} events in {seconds:.1f} s; {rows} touchpoint rows)")


LIVE = {"KIZUNA_ALLOWED_LATENESS_MINUTES": "0.05", "KIZUNA_WATERMARK_TICK_SECONDS": "1",
        "KIZUNA_CART_ABANDONMENT_MINUTES": "0.25", "KIZUNA_INGEST_RATE": "100000000"}


def end_to_end_live(b: Bench) -> None:
    """Live traffic through the collector at a fixed rate on a fresh stack with live settings
    (3 s allowed lateness, the sessionizer's 1 s tick, carts abandoned after 15 s). Latency
    from collector receipt (`received_at`) to the row in ClickHouse (sampled: 1 event in 10,
    seen by a poll every 0.25 s), and from the moment an alert is decidable (its detection
    time plus the allowed lateness) to the alert on its topic (first versions: a resolution is
    decided by a later purchase)."""
    from services.common.queries import query_rows
    from services.generator.live import send_live
    from services.generator.personas import generate

    b.kizuna("down")
    b.home = b.home.parent / (b.home.name + "-live")
    b.env = {**stack_env(b.home), **LIVE}
    b.kizuna("up")
    settings = b.settings
    lateness_ms = float(LIVE["KIZUNA_ALLOWED_LATENESS_MINUTES"]) * 60_000
    stop = threading.Event()
    rows: dict[str, float] = {}
    alerts: list[tuple[str, float]] = []
    slow: list[dict] = []

    def poll_clickhouse() -> None:
        since = int(time.time() * 1000)
        while not stop.is_set():
            asked = time.time() * 1000
            window = max(since, int(asked) - 60_000)
            for row in query_rows(settings, (
                    "SELECT event_id, toUnixTimestamp64Milli(received_at) AS r "
                    "FROM kizuna_store.touchpoints WHERE received_at >= "
                    f"fromUnixTimestamp64Milli({window}) AND cityHash64(event_id) % 10 = 0")):
                rows.setdefault(row["event_id"], asked - int(row["r"]))
            time.sleep(0.25)

    def read_alerts() -> None:
        serde = serde_for(settings)
        consumer = Consumer({**client_config(settings), "group.id": "bench",
                             "enable.auto.commit": False})
        topics = [t.name(settings.topic_prefix) for t in (ALERTS_CART_ABANDONMENT,
                                                         ALERTS_CHURN_RISK)]
        consumer.assign([TopicPartition(t, p, 0) for t in topics for p in
                         consumer.list_topics(t, timeout=10).topics[t].partitions])
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.2):
                if message.error():
                    continue
                now = time.time() * 1000
                alert = serde.decode(ALERT, message.value())
                if alert["version"] != 1:  # a resolution: decided by a later purchase
                    continue
                detected = alert["detected_at"]
                detected = detected.timestamp() * 1000 if hasattr(detected, "timestamp") \
                    else detected
                alerts.append((alert["alert_type"], now - (detected + lateness_ms)))
                if now - (detected + lateness_ms) > 5000:
                    slow.append({"ms": round(now - detected - lateness_ms),
                                 **{k: alert[k] for k in ("alert_type", "reasons", "customer_id",
                                                          "anonymous_id", "version")}})
        consumer.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (poll_clickhouse, read_alerts)]
    for t in threads:
        t.start()
    world = generate(max(50, b.events // 125), 30, 7, 1_767_571_200_000)
    report = send_live(world.events, b.live_rate, host="127.0.0.1",
                       port=int(b.env["KIZUNA_INGEST_PORT"]), key="key-shop",
                       duration=b.live_seconds, progress=None)
    sent_done = time.monotonic()
    b.kizuna("wait", "--timeout", "600")
    drained = time.monotonic() - sent_done
    time.sleep(3)  # the last poll and alerts
    stop.set()
    for t in threads:
        t.join(10)
    row_ms = sorted(rows.values())
    result = {"rate_asked": b.live_rate, "seconds": round(report.seconds, 1),
              "events_per_s": round(report.accepted / report.seconds),
              "accepted": report.accepted, "rejected": sum(report.rejected.values()),
              "drain_after_last_send_s": round(drained, 1),
              "row_samples": len(row_ms), **_percentiles("row_ms", row_ms),
              "allowed_lateness_ms": lateness_ms}
    for kind in ("cart_abandonment", "churn_risk"):
        result[f"{kind}_alerts"] = sum(1 for k, _ in alerts if k == kind)
        result.update(_percentiles(f"{kind}_ms", sorted(ms for k, ms in alerts if k == kind)))
    result.update(_percentiles("alert_ms", sorted(ms for _, ms in alerts)))
    result["slowest_alerts"] = sorted(slow, key=lambda a: -a["ms"])[:10]
    b.results["end_to_end_live"] = result
    b.note(f"live {result['events_per_s']:,} events/s: row p50/p95/p99 "
           f"{result.get('row_ms_p50')}/{result.get('row_ms_p95')}/{result.get('row_ms_p99')} "
           f"ms; alert p50/p99 {result.get('alert_ms_p50')}/{result.get('alert_ms_p99')} ms "
           f"after decidable ({len(alerts)} alerts)")


def _percentiles(name: str, values: list[float]) -> dict:
    if len(values) < 2:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {f"{name}_p50": round(q[49]), f"{name}_p95": round(q[94]), f"{name}_p99": round(q[98])}


# --- 5. state -------------------------------------------------------------------------------

def state(b: Bench) -> None:
    """The scorer and alerting holding `state_customers` customers (3 touches each): peak
    memory, then a graceful restart: seconds to ready (state rebuilt from the changelog) and
    to caught up on the next batch."""
    partitions = b.settings.partitions
    t0 = 1_767_571_200_000
    attributed = []
    for start in range(0, b.state_customers, 500):
        chunk = {f"S{i}": [[t0 + i * 1000 + k * 3_600_000, f"st-{i}-{k}",
                            ("page_view", "cart_add", "purchase")[k], "web",
                            25.0 if k == 2 else 0.0, None, None] for k in range(3)]
                 for i in range(start, min(start + 500, b.state_customers))}
        attributed.append({"t": t0 + start * 1000, "c": chunk})
    later = [{"t": t0 + 10**9, "c": {
        f"S{i}": [[t0 + 10**9, f"st-{i}-later", "page_view", "web", 0.0, None, None]]
        for i in range(0, b.state_customers, max(1, b.state_customers // 100))}}]
    for stage in ("engagement_scorer", "alerting"):
        module, port_env, counter, labels = STAGES[stage]
        prefix = f"bench.state.{stage}."
        env = b.stage_env(prefix)
        messages = attributed_messages(attributed, ATTRIBUTED.name(prefix), partitions)
        w = b.worker(module, env, port_env)
        try:
            first = drain([w], counter, labels, touches_in(messages),
                          lambda: produce_all(b.producer(), messages))  # noqa: B023
            keys = series_total(scrape(w.port), "kizuna_stage_state_keys", {}) or 0
        finally:
            w.stop()
        then = attributed_messages(later, ATTRIBUTED.name(prefix), partitions)
        produce_all(b.producer(), then)
        w = b.worker(module, env, port_env)
        try:
            ready = w.wait_ready()
            deadline = time.monotonic() + 300
            while w.counter(counter, labels) < touches_in(then):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{stage} did not catch up after its restart")
                time.sleep(0.05)
            caught_up = time.monotonic() - w.started
            recovered_mib = w.peak_mib()
        finally:
            w.stop()
        b.results[f"state_{stage}"] = {
            "customers": b.state_customers, "state_keys": int(keys),
            "events_per_s": first["events_per_s"], "peak_mib": first["peak_mib"],
            "restart_ready_s": round(ready, 1), "restart_caught_up_s": round(caught_up, 1),
            "peak_mib_after_restart": round(recovered_mib, 1)}
        b.note(f"state, {stage}: {b.state_customers:,} customers, {int(keys):,} keys, peak "
               f"{first['peak_mib']} MiB; restart: ready {ready:.1f} s, caught up "
               f"{caught_up:.1f} s")


# --- report ---------------------------------------------------------------------------------

THROUGHPUTS = (  # result -> label, in the report's order
    ("raw_produce", "ceiling: confluent-kafka produce"),
    ("raw_consume", "ceiling: confluent-kafka consume + Avro decode"),
    ("faust_floor", "ceiling: bare faust agent, decode only"),
    ("collector", "collector (HTTP, 100-event requests)"),
    ("sessionizer_per_message", "sessionizer, 1 touchpoint a message"),
    ("sessionizer_batched", "sessionizer, batches of 500"),
    ("engagement_scorer", "engagement scorer"),
    ("alerting", "alerting"),
    ("warehouse", "warehouse (rows into ClickHouse)"),
    ("end_to_end_max", "end to end: import -> ClickHouse"),
    ("end_to_end_live", "end to end: live through the collector"),
)


def with_ratios(results: dict) -> None:
    raw = results["raw_consume"]["events_per_s"]
    floor = results["faust_floor"]["events_per_s"]
    for result in results.values():
        if "events_per_s" in result:
            result["x_raw_consume"] = round(result["events_per_s"] / raw, 3)
            result["x_faust_floor"] = round(result["events_per_s"] / floor, 3)


def markdown(results: dict, meta: dict) -> str:
    out = [f"# `make bench`, {meta['date']}", "",
           f"{meta['machine']}. {meta['events']:,} generated events (the demo generator's "
           f"customers); {meta['partitions']} partitions; one worker process a stage unless "
           "said. Ratios are to the ceilings measured in the same run.", "",
           "| what | events/s | x raw consume | x faust floor | CPU s / 1,000 events | "
           "peak MiB |", "|---|---|---|---|---|---|"]
    for name, label in THROUGHPUTS:
        r = results.get(name)
        if r:
            out.append(f"| {label} | {r['events_per_s']:,} | {r['x_raw_consume']} | "
                       f"{r['x_faust_floor']} | {r.get('cpu_s_per_1000', '')} | "
                       f"{r.get('peak_mib', '')} |")
    out += ["", "## Scaling: 2 worker processes on 4 partitions", "",
            "| stage | 1 worker events/s | 2 workers events/s | 2 / 1 |", "|---|---|---|---|"]
    for one, two in (("sessionizer_batched", "sessionizer_batched_2_workers"),
                     ("engagement_scorer", "engagement_scorer_2_workers"),
                     ("alerting", "alerting_2_workers")):
        if one in results and two in results:
            a, c = results[one]["events_per_s"], results[two]["events_per_s"]
            out.append(f"| {one} | {a:,} | {c:,} | {c / a:.2f} |")
    live = results.get("end_to_end_live")
    if live:
        out += ["", "## Live latency", "",
                f"{live['events_per_s']:,} events/s accepted for {live['seconds']} s "
                f"(asked {live['rate_asked']:g}); the pipeline drained "
                f"{live['drain_after_last_send_s']} s after the last send.", "",
                "| latency | p50 ms | p95 ms | p99 ms | samples |", "|---|---|---|---|---|",
                f"| collector receipt -> the row in ClickHouse | {live.get('row_ms_p50')} | "
                f"{live.get('row_ms_p95')} | {live.get('row_ms_p99')} | {live['row_samples']} |",
                *(f"| {kind} alert decidable -> on its topic | {live.get(kind + '_ms_p50')} | "
                  f"{live.get(kind + '_ms_p95')} | {live.get(kind + '_ms_p99')} | "
                  f"{live[kind + '_alerts']} |" for kind in ("cart_abandonment", "churn_risk")),
                ""
                f"An alert is decidable once event time passes its detection time plus the "
                f"allowed lateness ({live['allowed_lateness_ms']:g} ms in this run; 10 minutes "
                "by default). Rows are sampled (1 in 10) by a poll every 0.25 s."]
    states = [(k, v) for k, v in results.items() if k.startswith("state_")]
    if states:
        out += ["", "## State", "", "| stage | customers | state keys | peak MiB, loading | "
                "peak MiB, rebuilt from the changelog | restart: ready s | restart: caught up s |",
                "|---|---|---|---|---|---|---|"]
        for name, r in states:
            out.append(f"| {name[6:]} | {r['customers']:,} | {r['state_keys']:,} | "
                       f"{r['peak_mib']} | {r['peak_mib_after_restart']} | "
                       f"{r['restart_ready_s']} | {r['restart_caught_up_s']} |")
    return "\n".join(out) + "\n"


def svg(results: dict) -> str:
    items = [(label, results[name]["events_per_s"]) for name, label in THROUGHPUTS
             if name in results]
    top = max(v for _, v in items)
    row, width = 24, 480
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 420}" '
             f'height="{row * len(items) + 40}" font-family="sans-serif">',
             '<text x="0" y="16" font-size="15">Kizuna make bench: events/s</text>']
    for i, (label, value) in enumerate(items):
        y, w = 30 + i * row, max(1, int(width * value / top))
        colour = "#999" if label.startswith("ceiling") else "#3b7dd8"
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{label}</text>'
                     f'<rect x="320" y="{y}" width="{w}" height="16" fill="{colour}"/>'
                     f'<text x="{325 + w}" y="{y + 13}" font-size="12">{value:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000,
                        help="generated events for the stages and the end-to-end import")
    parser.add_argument("--e2e-customers", type=int, default=2000,
                        help="customers (30 days) imported end to end; 2,000 is the demo's")
    parser.add_argument("--live-rate", type=float, default=2000, help="live events/s")
    parser.add_argument("--live-seconds", type=float, default=30)
    parser.add_argument("--copies", type=int, default=3,
                        help="the batched inputs hold this many copies of the events")
    parser.add_argument("--state-customers", type=int, default=100_000)
    parser.add_argument("--only", nargs="*", choices=["stages", "e2e", "state"],
                        help="some steps only (the ceilings always run)")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench"))
    args = parser.parse_args(argv)
    steps = set(args.only or ["stages", "e2e", "state"])
    home = Path(tempfile.mkdtemp(prefix="kz-bench-", dir="/tmp"))
    b = Bench(home, {**stack_env(home), "KIZUNA_INGEST_RATE": "100000000"}, args.events,
              args.live_rate, args.live_seconds, args.state_customers, args.copies,
              args.e2e_customers)
    started = time.monotonic()
    b.note(f"starting the stack in {home}")
    b.kizuna("up")
    try:
        records = generated_records(args.events)
        b.note(f"{len(records):,} events generated")
        ceilings(b, records)
        if "stages" in steps:
            stages(b, records)
        if "state" in steps:
            state(b)
        if "e2e" in steps:
            end_to_end_max(b)
            end_to_end_live(b)
    finally:
        b.kizuna("down")
        if not os.environ.get("KIZUNA_BENCH_KEEP"):
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(b.home, ignore_errors=True)
    with_ratios(b.results)
    meta = {"date": time.strftime("%Y-%m-%d"), "events": len(records),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python "
                       f"{platform.python_version()}",
            "partitions": load(Settings, b.env).partitions,
            "seconds": round(time.monotonic() - started)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "results": b.results}, indent=1))
    (out / "bench.md").write_text(markdown(b.results, meta))
    (out / "bench.svg").write_text(svg(b.results))
    print(markdown(b.results, meta))
    print(f"written: {out}/bench.json, bench.md, bench.svg ({meta['seconds']} s in all)")


if __name__ == "__main__":
    main()
