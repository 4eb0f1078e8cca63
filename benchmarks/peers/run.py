"""`make bench-peers`: Kizuna against the peers a user would pick instead, on the same events.

On one local stack of its own (temporary KIZUNA_HOME, free ports): the demo generator's
customers, at least 250,000 touchpoints in event-time order, one Avro touchpoint a message
keyed by profile on 4 partitions (as the collector writes them), are processed by

1. Kizuna's sessionizer, then its engagement scorer on what the sessionizer attributed, one
   worker each (and the sessionizer again on the same events in `kizuna import`'s batches);
2. a Quix Streams app (`benchmarks/peers/quix_app.py`);
3. a Bytewax dataflow (`benchmarks/peers/bytewax_flow.py`);
4. ClickHouse SQL over the raw events (`benchmarks/peers/warehouse_sql.py`).

The job is the one Kizuna's stages do and the peers can: gap sessions per profile (30 min,
24 h at most) and each customer's purchase count and revenue. Each peer's sessions and totals
are checked against Kizuna's (same count, same boundaries, same counts and revenue): a faster
peer that computes something else does not count. The peers run in a virtualenv of their own
(`.venv-peers`, `benchmarks/peers/requirements.txt`).

The events carry one id each (the customer's when known, else the device's) and no event id
twice: identity stitching and deduplication are Kizuna guarantees the peers do not have, so
the comparison leaves them out. A closing touch per profile, two days after the last event,
closes its last session in every engine.

Writes out/bench/peers.json and peers.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import orjson
import psutil
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.stages import generated_records
from benchmarks.suite import (
    ROOT,
    STAGES,
    Bench,
    batch_messages,
    drain,
    produce_all,
    single_messages,
)
from services.common.schema_registry import serde_for
from services.common.serde import ENGAGEMENT_PROFILE, SESSION
from services.common.topics import ATTRIBUTED, ENGAGEMENT_SCORES, SESSIONS, TOUCHPOINTS_RAW
from services.domain.eventtime import DAY_MS
from tests.conftest import stack_env

PREFIX = "peers.kizuna."
BATCHED = "peers.batched."
PEERS = ("quixstreams", "bytewax")
CLOSING = "~end-"  # the event ids of the closing touches
#: How often Kizuna's workers are asked for their counters: a scrape costs the worker (the
#: open-sessions gauge walks its state), and the peers are not scraped at all.
POLL_S = 0.5


# --- the events -----------------------------------------------------------------------------

def bench_records(n: int) -> tuple[list[dict], int]:
    """`n` generated touchpoints with one id each, no event id twice, in event-time
    order; then one closing touch per profile two days after the last event, at the time
    returned. The closing touches close every profile's last session in every engine (a
    session window closes on a later event of its key) and are left out of the comparison."""
    seen: set[str] = set()
    out = []
    for r in generated_records(n + n // 10):
        if r["event_id"] in seen:
            continue
        seen.add(r["event_id"])
        out.append({**r, "anonymous_id": None} if r["customer_id"] else r)
    out.sort(key=lambda r: (r["event_time"], r["event_id"]))
    del out[n:]
    closing_at = out[-1]["event_time"] + 2 * DAY_MS
    profiles = {(r["customer_id"], r["anonymous_id"]): r for r in out}
    out += [{**r, "event_id": f"{CLOSING}{r['customer_id'] or r['anonymous_id']}",
             "event_type": "page_view", "commerce": None, "properties": {},
             "event_time": closing_at, "occurred_at": closing_at, "received_at": closing_at,
             "sent_at": None} for r in profiles.values()]
    return out, closing_at


# --- Kafka ----------------------------------------------------------------------------------

def create_topics(brokers: str, names: list[str], partitions: int) -> None:
    """The peers' output topics, as their operator would create them (the broker does not
    create topics on first use), kept for good: a session window's output carries its event
    time, months old, which a 7-day retention would delete at once."""
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config={"retention.ms": "-1"})
                                   for name in names])
    for future in futures.values():
        future.result(30)


def read_topic(brokers: str, topic: str, settle_s: float = 2.0) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of `topic`, once its end offsets have not moved for `settle_s`."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "bench-peers-reader",
                         "enable.auto.commit": False})
    try:
        metadata_ = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in metadata_.partitions]
        ends, stable_since = None, time.monotonic()
        while True:
            now = [consumer.get_watermark_offsets(tp, timeout=10) for tp in parts]
            if now != ends:
                ends, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= settle_s:
                break
            time.sleep(0.25)
        if any(low for low, _ in ends):
            raise SystemExit(f"{topic}: the broker deleted some of it (retention?)")
        ends = [high for _, high in ends]
        consumer.assign([TopicPartition(topic, tp.partition, 0) for tp in parts])
        out, left = [], sum(ends)
        while left > 0:
            for message in consumer.consume(1000, timeout=1.0):
                if message.error():
                    continue
                if message.offset() < ends[message.partition()]:
                    out.append((message.key(), message.value()))
                    left -= 1
        return out
    finally:
        consumer.close()


# --- what each engine found ------------------------------------------------------------------

def session_key(s: dict) -> tuple:
    return (s["profile_id"], s["started_at"], s["ended_at"], s["event_count"],
            s["purchase_count"], round(s["revenue"], 2))


def latest_versions(records: list[dict], key: str) -> dict[str, dict]:
    """The highest `version` of each `key`: what a versioned upsert topic says in the end."""
    latest: dict[str, dict] = {}
    for r in records:
        if r[key] not in latest or r["version"] > latest[r[key]]["version"]:
            latest[r[key]] = r
    return latest


def sessions_of(records: list[dict]) -> list[tuple]:
    """Kizuna's session records to the compared form: the last version of each, merged ones
    left out, keyed by the customer or else the device."""
    return [session_key({**s, "profile_id": s["customer_id"] or s["anonymous_ids"][0]})
            for s in latest_versions(records, "session_id").values() if s["status"] != "merged"]


def totals_of(profiles: list[dict]) -> dict[str, tuple]:
    return {c: (p["purchase_count"], round(p["total_revenue"], 2))
            for c, p in latest_versions(profiles, "customer_id").items()}


def kizuna_sessions(b: Bench) -> list[tuple]:
    serde = serde_for(b.settings)
    return sessions_of([serde.decode(SESSION, value, epoch_ms=True) for _key, value in
                        read_topic(b.settings.kafka_bootstrap, SESSIONS.name(PREFIX))])


def kizuna_customers(b: Bench) -> dict[str, tuple]:
    serde = serde_for(b.settings)
    return totals_of([serde.decode(ENGAGEMENT_PROFILE, value) for _key, value in
                      read_topic(b.settings.kafka_bootstrap, ENGAGEMENT_SCORES.name(PREFIX))])


def peer_outputs(brokers: str, sessions_topic: str, customers_topic: str
                 ) -> tuple[list[tuple], dict[str, tuple]]:
    found = [session_key(orjson.loads(v)) for _k, v in read_topic(brokers, sessions_topic)]
    customers = {}
    for key, value in read_topic(brokers, customers_topic):  # in order within a key
        t = orjson.loads(value)
        customers[key.decode()] = (t["purchase_count"],
                                   round(t["revenue"] - t["refunds"], 2))
    return found, customers



def compare(name: str, sessions: list[tuple], customers: dict[str, tuple],
            k_sessions: list[tuple], k_customers: dict[str, tuple], closing_at: int) -> dict:
    """How `name`'s sessions and customer totals compare with Kizuna's (the closing touches'
    sessions aside)."""
    mine = sorted(s for s in sessions if s[1] < closing_at)
    theirs = sorted(s for s in k_sessions if s[1] < closing_at)
    only_peer = _multiset_minus(mine, theirs)
    only_kizuna = _multiset_minus(theirs, mine)
    customers = {c: v for c, v in customers.items() if v != (0, 0.0)}
    k_customers = {c: v for c, v in k_customers.items() if v != (0, 0.0)}
    differ = sorted(c for c in set(customers) | set(k_customers)
                    if customers.get(c) != k_customers.get(c))
    return {"engine": name, "sessions": len(mine), "kizuna_sessions": len(theirs),
            "sessions_only_here": len(only_peer), "sessions_only_in_kizuna": len(only_kizuna),
            "customers": len(customers), "customers_differing": len(differ),
            "equal": not only_peer and not only_kizuna and not differ,
            "examples": {"only_here": only_peer[:3], "only_in_kizuna": only_kizuna[:3],
                         "customers": [(c, customers.get(c), k_customers.get(c))
                                       for c in differ[:3]]}}


def _multiset_minus(a: list, b: list) -> list:
    left = {}
    for x in b:
        left[x] = left.get(x, 0) + 1
    out = []
    for x in a:
        if left.get(x):
            left[x] -= 1
        else:
            out.append(x)
    return out


# --- the engines ----------------------------------------------------------------------------

def one_worker(b: Bench, stage: str, env: dict[str, str], expected: int) -> dict:
    """One worker of `stage` over its filled input, from ready to `expected` counted."""
    module, port_env, counter, labels = STAGES[stage]
    w = b.worker(module, env, port_env)
    try:
        return drain([w], counter, labels, expected, lambda: None, poll_s=POLL_S)
    finally:
        w.stop()


def kizuna(b: Bench, messages: list, batched: list, events: int) -> dict:
    """The sessionizer on the filled raw topic, then the scorer on what it attributed; each
    from ready to its last event counted (`benchmarks.suite.drain`)."""
    results = {}
    env = b.stage_env(PREFIX)
    produce_all(b.producer(), messages)
    results["sessionizer"] = one_worker(b, "sessionizer", env, events)
    attributed = read_topic(b.settings.kafka_bootstrap, ATTRIBUTED.name(PREFIX))
    touches = sum(len(t) for _k, v in attributed for t in orjson.loads(v)["c"].values())
    results["engagement_scorer"] = one_worker(b, "engagement_scorer", env, touches)
    s, a = results["sessionizer"], results["engagement_scorer"]
    seconds = s["seconds"] + a["seconds"]
    cpu = s["cpu_s_per_1000"] * events / 1000 + a["cpu_s_per_1000"] * touches / 1000
    results["both"] = {"events": events, "seconds": round(seconds, 2),
                       "events_per_s": round(events / seconds),
                       "cpu_s_per_1000": round(cpu / events * 1000, 4),
                       "peak_mib": round(s["peak_mib"] + a["peak_mib"], 1)}
    results["engagement_scorer"]["touches"] = touches

    env = b.stage_env(BATCHED)
    produce_all(b.producer(), [(TOUCHPOINTS_RAW.name(BATCHED), *m[1:]) for m in batched])
    results["sessionizer_batched"] = one_worker(b, "sessionizer", env, events)
    return results


def run_process(args: list[str], env: dict[str, str], log: Path, timeout: float = 600) -> dict:
    """Run a peer to its end: when it exited (monotonic), its CPU seconds (from the kernel,
    wait4) and its peak memory (VmHWM, polled: the rusage's maximum would count the
    orchestrator's memory, which the child shares between fork and exec)."""
    popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"),  # noqa: S603
                             stderr=subprocess.STDOUT)
    status_file = Path(f"/proc/{popen.pid}/status")
    deadline = time.monotonic() + timeout
    peak_kib = 0
    while True:
        with contextlib.suppress(OSError, ValueError):  # gone, or not exec'd yet
            peak_kib = max([peak_kib] + [int(line.split()[1]) for line in
                                         status_file.read_text().splitlines()
                                         if line.startswith("VmHWM:")])
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            exited = time.monotonic()
            break
        if time.monotonic() > deadline:
            popen.kill()
            raise SystemExit(f"{args[2]} did not finish in {timeout:g} s; see {log}")
        time.sleep(0.05)
    popen.returncode = os.waitstatus_to_exitcode(status)
    if popen.returncode:
        raise SystemExit(f"{args[2]} failed ({popen.returncode}):\n{log.read_text()[-3000:]}")
    return {"exited_at": exited, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_mib": round(peak_kib / 1024, 1)}


def streaming_peer(b: Bench, name: str, python: str, events: int) -> tuple[dict, tuple]:
    brokers = b.settings.kafka_bootstrap
    source = TOUCHPOINTS_RAW.name(PREFIX)
    sessions_topic, customers_topic = f"peers.{name}.sessions", f"peers.{name}.customers"
    report = b.home / f"{name}.json"
    create_topics(brokers, [sessions_topic, customers_topic], b.settings.partitions)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if name == "quixstreams":
        args = [python, "-m", "benchmarks.peers.quix_app", brokers, source, sessions_topic,
                customers_topic, str(events), str(b.home / "quix-state"), str(report)]
    else:
        args = [python, "-m", "bytewax.run", "benchmarks.peers.bytewax_flow:flow"]
        env.update(BENCH_BROKERS=brokers, BENCH_INPUT=source, BENCH_SESSIONS=sessions_topic,
                   BENCH_CUSTOMERS=customers_topic, BENCH_REPORT=str(report))
    usage = run_process(args, env, b.home / f"{name}.log")
    timing = json.loads(report.read_text())
    seconds = usage["exited_at"] - timing["first_at"]
    result = {"events": events, "seconds": round(seconds, 2),
              "events_per_s": round(events / seconds),
              "cpu_s_per_1000": round((usage["cpu_seconds"] - timing["cpu_at_first"])
                                      / events * 1000, 4),
              "peak_mib": usage["peak_mib"]}
    if "last_at" in timing:  # the app's own clock at its last input, before shutting down
        result["seconds_to_last_input"] = round(timing["last_at"] - timing["first_at"], 2)
    return result, peer_outputs(brokers, sessions_topic, customers_topic)


def warehouse_sql(b: Bench, events: int) -> tuple[dict, tuple]:
    out = b.home / "sql.json"
    args = [sys.executable, "-m", "benchmarks.peers.warehouse_sql",
            b.settings.kafka_bootstrap, TOUCHPOINTS_RAW.name(PREFIX), str(events),
            str(b.home / "sql-chdb"), str(out)]
    usage = run_process(args, {**os.environ, "PYTHONPATH": str(ROOT)}, b.home / "sql.log")
    found = json.loads(out.read_text())
    land, q1, q2 = found["land"], found["sessions_query"], found["rfm_query"]
    seconds = land["seconds"] + q1["seconds"] + q2["seconds"]
    cpu = land["cpu_seconds"] + q1["cpu_seconds"] + q2["cpu_seconds"]
    result = {"events": events, "seconds": round(seconds, 2),
              "events_per_s": round(events / seconds),
              "cpu_s_per_1000": round(cpu / events * 1000, 4), "peak_mib": usage["peak_mib"],
              "land_seconds": round(land["seconds"], 2),
              "insert_seconds": round(land["insert_seconds"], 2),
              "insert_events_per_s": round(events / land["insert_seconds"]),
              "sessions_query_seconds": round(q1["seconds"], 2),
              "rfm_query_seconds": round(q2["seconds"], 2)}
    sessions = [session_key(s) for s in found["sessions"]]
    customers = {c["customer_id"]: (c["purchase_count"], round(c["total_revenue"], 2))
                 for c in found["customers"]}
    return result, (sessions, customers)


# --- report ---------------------------------------------------------------------------------

ROWS = (  # result -> label
    ("kizuna", "Kizuna: sessionizer + engagement scorer (2 processes, one after the other)"),
    ("kizuna_sessionizer", "Kizuna: sessionizer alone"),
    ("kizuna_engagement_scorer", "Kizuna: engagement scorer alone (per touch attributed)"),
    ("kizuna_sessionizer_batched", "Kizuna: sessionizer, `kizuna import` batches of 500"),
    ("quixstreams", "Quix Streams: session window + stateful totals"),
    ("bytewax", "Bytewax: collect_window + stateful_map, 1 worker"),
    ("clickhouse_sql", "ClickHouse SQL: land + sessions query + RFM query"),
)


def markdown(results: dict, checks: list[dict], meta: dict) -> str:
    base = results["kizuna"]
    out = [f"# `make bench-peers`, {meta['date']}", "",
           f"{meta['machine']}. {meta['events']:,} touchpoints (the demo generator's "
           f"customers), one a message keyed by profile, {meta['partitions']} partitions, in "
           "event-time order. Versions: " + ", ".join(f"{k} {v}" for k, v in
                                                   meta["versions"].items()) + ".", "",
           "| engine | events/s | x Kizuna | CPU s / 1,000 events | x Kizuna CPU | peak MiB |"
           " same sessions and totals as Kizuna |", "|---|---|---|---|---|---|---|"]
    equal = {c["engine"]: c for c in checks}
    for name, label in ROWS:
        r = results.get(name)
        if not r:
            continue
        check = equal.get(name)
        same = ("yes" if check["equal"] else "**no**") + \
            f" ({check['sessions']:,} sessions)" if check else ""
        out.append(f"| {label} | {r['events_per_s']:,} | "
                   f"{r['events_per_s'] / base['events_per_s']:.2f} | {r['cpu_s_per_1000']} | "
                   f"{r['cpu_s_per_1000'] / base['cpu_s_per_1000']:.2f} | {r['peak_mib']} | "
                   f"{same} |")
    sql = results.get("clickhouse_sql")
    if sql:
        out += ["", f"ClickHouse SQL, separately: landing {sql['land_seconds']} s (consume, "
                f"decode, insert), of which inserts {sql['insert_seconds']} s "
                f"({sql['insert_events_per_s']:,} events/s); sessions query "
                f"{sql['sessions_query_seconds']} s; RFM query {sql['rfm_query_seconds']} s."]
    out += ["", "Each engine's sessions and customer totals against Kizuna's:", "",
            "| engine | sessions | Kizuna's | only here | only in Kizuna | customers | "
            "customers differing |", "|---|---|---|---|---|---|---|"]
    for c in checks:
        out.append(f"| {c['engine']} | {c['sessions']:,} | {c['kizuna_sessions']:,} | "
                   f"{c['sessions_only_here']} | {c['sessions_only_in_kizuna']} | "
                   f"{c['customers']:,} | {c['customers_differing']} |")
    return "\n".join(out) + "\n"


def peer_versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m; print(' '.join(m.version(p) for p in "
            "('quixstreams', 'bytewax', 'confluent-kafka')))")
    quix, bytewax_, kafka = subprocess.run([python, "-c", code], capture_output=True,
                                           text=True, check=True).stdout.split()
    return {"kizuna": metadata.version("kizuna"), "faust-streaming":
            metadata.version("faust-streaming"), "quixstreams": quix, "bytewax": bytewax_,
            "chdb": metadata.version("chdb"), "peers' confluent-kafka": kafka}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=250_000)
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                        help="the Python of the peers' virtualenv")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["quixstreams", "bytewax", "clickhouse_sql"])
    parser.add_argument("--out", default=str(ROOT / "out" / "bench"))
    args = parser.parse_args(argv)
    versions = peer_versions(args.peers_python)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    home = Path(tempfile.mkdtemp(prefix="kz-peers-", dir="/tmp"))
    b = Bench(home, {**stack_env(home), "KIZUNA_INGEST_RATE": "100000000"}, args.events,
              0, 0, 0, 1, 0)
    started = time.monotonic()
    b.note(f"starting the stack in {home}")
    b.kizuna("up")
    results: dict = {}
    checks: list[dict] = []
    try:
        partitions = b.settings.partitions
        records, closing_at = bench_records(args.events)
        events = len(records)
        b.note(f"{events:,} events generated")
        messages = single_messages(records, TOUCHPOINTS_RAW.name(PREFIX))
        batched = batch_messages(records, "", partitions)
        k = kizuna(b, messages, batched, events)
        results["kizuna"] = k["both"]
        for stage in ("sessionizer", "engagement_scorer", "sessionizer_batched"):
            results[f"kizuna_{stage}"] = k[stage]
        b.note(f"Kizuna: {k['both']['events_per_s']:,} events/s "
               f"(sessionizer {k['sessionizer']['events_per_s']:,}, scorer "
               f"{k['engagement_scorer']['events_per_s']:,} touches/s)")
        k_sessions, k_customers = kizuna_sessions(b), kizuna_customers(b)
        for name in PEERS:
            if name in args.skip:
                continue
            results[name], (sessions, customers) = streaming_peer(b, name, args.peers_python,
                                                                  events)
            checks.append(compare(name, sessions, customers, k_sessions, k_customers,
                                  closing_at))
            b.note(f"{name}: {results[name]['events_per_s']:,} events/s; same as Kizuna: "
                   f"{checks[-1]['equal']}")
        if "clickhouse_sql" not in args.skip:
            results["clickhouse_sql"], (sessions, customers) = warehouse_sql(b, events)
            checks.append(compare("clickhouse_sql", sessions, customers, k_sessions,
                                  k_customers, closing_at))
            b.note(f"ClickHouse SQL: {results['clickhouse_sql']['events_per_s']:,} events/s; "
                   f"same as Kizuna: {checks[-1]['equal']}")
    finally:
        b.kizuna("down")
        if not os.environ.get("KIZUNA_BENCH_KEEP"):
            shutil.rmtree(home, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "events": events, "partitions": partitions,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python "
                       f"{platform.python_version()}",
            "versions": versions, "seconds": round(time.monotonic() - started)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps({"meta": meta, "results": results,
                                                "checks": checks}, indent=1))
    report = markdown(results, checks, meta)
    (out / "peers.md").write_text(report)
    print(report)
    print(f"written: {out}/peers.json, peers.md ({meta['seconds']} s in all)")
    if not all(c["equal"] for c in checks):
        raise SystemExit("a peer's sessions or totals differ from Kizuna's: see peers.json")


if __name__ == "__main__":
    main()
