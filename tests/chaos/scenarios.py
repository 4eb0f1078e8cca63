"""Fault injection on the real stack, each fault compared with a clean run of the same input.

The same generated customers are imported twice into one running stack: once clean, once with
a fault injected mid-stream. Each copy gets its own ids (a tag replaces the generator's
prefix) and its own weeks of event time (shifted by whole weeks, so days and weekdays stay the
same), so the two never meet. Results are compared without the ids that hash them (session
and alert ids), as tuples of customer, times relative to the copy's start, counts, statuses,
scores and reasons: every table, every row.

Used by `make chaos` (the whole matrix, on its own stack, with a summary table) and by the
integration suite (a fast subset on the shared stack).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from confluent_kafka import Producer

from services.common.queries import query_rows
from services.common.serde import TOUCHPOINT, default_serde
from services.common.settings import Settings, load
from services.generator.personas import generate
from services.localstack import supervisor
from services.localstack.registry import readyz_ok

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


def _monday_weeks_ago(weeks: int) -> int:
    today = int(time.time() * 1000) // DAY_MS
    monday = today - (today + 3) % 7  # 1970-01-01 was a Thursday
    return (monday - 7 * weeks) * DAY_MS


#: The first copy's Monday: far enough back that every copy of the longest run (a row 40
#: times, each copy 3 weeks after the one before) lies in the past, where the collector takes
#: it (it refuses events more than 24 h ahead of its clock).
BASE_MS = _monday_weeks_ago(130)
POISON = "chaos-poison"


@dataclass
class Outcome:
    scenario: str
    faults: str
    events: int
    lost: int
    duplicates_visible: int
    recovery_s: float
    equal: bool
    detail: str = ""
    #: how the pipeline took the copy: touchpoints the sessionizer found late, customers
    #: alerting decided again (counters of the running processes, before and after)
    late: int = 0
    replays: int = 0


def _counters(env: dict) -> tuple[float, float]:
    from services.localstack.health import scrape, series_total

    def total(port: str, name: str) -> float:
        try:
            return series_total(scrape(int(env[port])), name, {}) or 0.0
        except (OSError, ValueError):
            return 0.0

    return (total("KIZUNA_SESSIONIZER_PORT", "kizuna_sessionizer_late_touchpoints_total"),
            total("KIZUNA_ALERTING_PORT", "kizuna_alerting_replays_total"))


def dataset(seed: int, customers: int, days: int) -> list[dict]:
    return generate(customers, days, seed, BASE_MS).events


def retag(events: list[dict], seed: int, tag: str, shift_ms: int) -> list[dict]:
    """The same events under other ids (`cust-<seed>-` -> `<tag>-`, devices likewise) and
    `shift_ms` later."""
    text = json.dumps(events)
    text = text.replace(f"cust-{seed}-", f"{tag}-").replace(f"dev-{seed}-", f"{tag}d-")
    out = json.loads(text)
    for e in out:
        if isinstance(e.get("occurred_at"), int):
            e["occurred_at"] += shift_ms
    return out


def fingerprint(env: dict, tag: str, shift_ms: int) -> dict[str, list]:
    """Every result of one copy, without hashed ids, times relative to the copy."""
    settings = load(Settings, env)
    # a customer `<tag>-...`, a device `<tag>d-...` (not the ids of a tag this one begins)
    mine = (f"(startsWith(ifNull(customer_id, profile_id), '{tag}-') "
            f"OR startsWith(ifNull(customer_id, profile_id), '{tag}d-'))")

    def rows(sql: str) -> list:
        return sorted(json.dumps(r, sort_keys=True) for r in query_rows(settings, sql))

    return {
        "touchpoints": rows(f"""
            SELECT replaceOne(event_id, '{tag}', '') AS e, event_type, channel,
                   replaceOne(ifNull(customer_id, ''), '{tag}', '') AS c,
                   toUnixTimestamp64Milli(event_time) - {shift_ms} AS t, value,
                   session_id IS NULL AS sessionless
            FROM kizuna.touchpoints WHERE startsWith(event_id, '{tag}-')"""),
        "sessions": rows(f"""
            SELECT replaceOne(ifNull(customer_id, profile_id), '{tag}', '') AS who,
                   toUnixTimestamp64Milli(started_at) - {shift_ms} AS s,
                   toUnixTimestamp64Milli(ended_at) - {shift_ms} AS e, event_count, status,
                   purchase_count, round(revenue, 2) AS revenue, arraySort(channels) AS ch
            FROM kizuna.sessions WHERE {mine}"""),
        "customer_profiles": rows(f"""
            SELECT replaceOne(customer_id, '{tag}', '') AS who, purchase_count,
                   round(total_revenue, 2) AS revenue, round(engagement_score, 3) AS score,
                   tier, frequency, recency, T, round(monetary_value, 2) AS m,
                   preferred_channel, toUnixTimestamp64Milli(as_of) - {shift_ms} AS at
            FROM kizuna.customer_profiles WHERE startsWith(customer_id, '{tag}-')"""),
        "alerts": rows(f"""
            SELECT replaceOne(customer_id, '{tag}', '') AS who, alert_type, status,
                   toUnixTimestamp64Milli(detected_at) - {shift_ms} AS t, reasons, severity,
                   cart_value, recommended_action, recommended_channel,
                   round(score_snapshot, 3) AS score
            FROM kizuna.alerts WHERE startsWith(customer_id, '{tag}-')"""),
        "dead_letters": rows(f"""
            SELECT stage, reason, count() AS n FROM kizuna.dead_letters
            WHERE (position(payload, '{tag}-') > 0 OR position(payload, '{tag}d-') > 0)
              AND position(payload, '{POISON}') = 0
            GROUP BY stage, reason"""),
    }


def poisoned(env: dict, tag: str) -> list[dict]:
    """Dead letters of the poison records written for `tag`."""
    return query_rows(load(Settings, env), f"""
        SELECT stage, reason FROM kizuna.dead_letters
        WHERE position(payload, '{POISON}') > 0 AND position(payload, '{tag}') > 0
        ORDER BY reason""")


def visible_duplicates(env: dict, tag: str) -> int:
    """Rows a plain count shows twice: the same id in more than one row of a contract table."""
    (row,) = query_rows(load(Settings, env), f"""
        SELECT (SELECT count() - uniqExact(event_id) FROM kizuna.touchpoints
                WHERE startsWith(event_id, '{tag}-'))
             + (SELECT count() - uniqExact(session_id) FROM kizuna.sessions
                WHERE startsWith(ifNull(customer_id, profile_id), '{tag}'))
             + (SELECT count() - uniqExact(customer_id) FROM kizuna.customer_profiles
                WHERE startsWith(customer_id, '{tag}'))
             + (SELECT count() - uniqExact(alert_id) FROM kizuna.alerts
                WHERE startsWith(customer_id, '{tag}')) AS d""")
    return int(row["d"])


def write(events: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


# -- faults ----------------------------------------------------------------------------------

def program_pid(env: dict, name: str) -> int:
    return supervisor.rpc(load(Settings, env)).getProcessInfo(name)["pid"]


def sigkill(name: str) -> Callable[[dict, str], str]:
    def fault(env: dict, tag: str) -> str:
        psutil.Process(program_pid(env, name)).kill()  # the process runner starts it again
        return f"SIGKILL {name}"
    return fault


def graceful_restart(name: str) -> Callable[[dict, str], str]:
    def fault(env: dict, tag: str) -> str:
        rpc = supervisor.rpc(load(Settings, env))
        rpc.stopProcess(name)
        rpc.startProcess(name)
        return f"stop + start {name}"
    return fault


class CollectorKilled:
    """The copy is posted to the collector's HTTP API, 100 events a request, by a client that
    sends again whatever got no 2xx answer (the same events: their `event_id`s make a resend
    harmless); the collector is SIGKILLed while requests are in flight, a third of the way in,
    and the process runner starts it again. A 2xx means Kafka had the events, so nothing may be
    lost, and nothing may show twice."""

    key = "key-chaos"

    def __init__(self) -> None:
        self.resent = 0

    def deliver(self, env: dict, kizuna: Callable, copy: list[dict], until_ms: int,
                path: Path) -> None:
        url = f"http://127.0.0.1:{env['KIZUNA_INGEST_PORT']}/v1/events"
        requests = [copy[i:i + 100] for i in range(0, len(copy), 100)]
        self.resent = 0
        for i, events in enumerate(requests):
            if i == len(requests) // 3:
                threading.Timer(0.02, psutil.Process(program_pid(env, "ingest")).kill).start()
            self._post(url, json.dumps({"events": events}).encode())
        import_events(env, kizuna, [], until_ms, path)  # then event time moves on, as usual

    def _post(self, url: str, body: bytes) -> None:
        deadline = time.monotonic() + 120
        while True:
            request = urllib.request.Request(url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    if 200 <= answer.status < 300:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    raise
            except OSError:  # refused or reset: the collector is down or restarting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the collector did not come back within 120 s")
            self.resent += 1
            time.sleep(0.2)

    def __call__(self, env: dict, tag: str) -> str:
        return f"SIGKILL collector mid-request; {self.resent} requests sent again"


PORT_SETTINGS = {"sessionizer": "KIZUNA_SESSIONIZER_PORT",
                 "engagement_scorer": "KIZUNA_ENGAGEMENT_SCORER_PORT",
                 "alerting": "KIZUNA_ALERTING_PORT"}


def rebalance(name: str) -> Callable[[dict, str], str]:
    """A second worker of stage `name` joins before the copy is imported (1 -> 2 workers:
    each holds half the partitions) and stops gracefully right after, while both work on it
    (2 -> 1: the leaving worker's partitions move back in the middle of the stream), as when
    an operator scales out and back in."""
    workers: list[tuple[subprocess.Popen, Path]] = []

    def prepare(env: dict) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = Path(env["KIZUNA_HOME"]) / "logs" / f"{name}-second-worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        second = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", f"services.{name}"], env={**env, PORT_SETTINGS[name]: str(port)},
            stdout=subprocess.DEVNULL, stderr=log.open("w"))
        workers.append((second, log))
        deadline = time.monotonic() + 120
        while not readyz_ok(port):
            if second.poll() is not None or time.monotonic() > deadline:
                second.kill()
                raise AssertionError(f"the second {name} worker did not start: see {log}")
            time.sleep(0.2)

    def fault(env: dict, tag: str) -> str:
        second, log = workers.pop()
        second.terminate()
        code = second.wait(60)
        if code != 0:
            raise AssertionError(f"the second {name} worker exited {code} on SIGTERM: see {log}")
        return f"2nd {name} worker: joined before (1 -> 2), stopped mid-stream (2 -> 1)"

    fault.prepare = prepare  # type: ignore[attr-defined]
    return fault




def broker_restart(env: dict, tag: str) -> str:
    rpc = supervisor.rpc(load(Settings, env))
    rpc.stopProcess("kafka")
    time.sleep(3)
    rpc.startProcess("kafka")
    return "broker stopped 3 s, restarted"


# -- faults on a cluster (KIZUNA_KAFKA_BROKERS=3) ----------------------------------------------

def partition_leaders(env: dict, topic: str) -> dict[int, int]:
    """Partition -> the node id of its leader."""
    from services.common.kafka import admin_client

    metadata = admin_client(load(Settings, env)).list_topics(topic, timeout=30)
    return {p: meta.leader for p, meta in metadata.topics[topic].partitions.items()}


def active_controller(env: dict) -> int:
    """The KRaft quorum's leader: the node that last completed the transition to leader, at
    the highest epoch, by the nodes' logs."""
    settings = load(Settings, env)
    best = (-1, -1)
    for node in range(1, settings.kafka_brokers + 1):
        log = settings.log_dir / f"kafka-{node}.log"
        for line in log.read_text(errors="replace").splitlines():
            if "Completed transition to Leader" in line and f"[RaftManager id={node}]" in line:
                epoch = re.search(r"epoch=(\d+)", line)
                if epoch and int(epoch[1]) > best[0]:
                    best = (int(epoch[1]), node)
    if best[1] < 0:
        raise AssertionError("no active controller found in the nodes' logs")
    return best[1]


def wait_in_sync(env: dict, timeout: float = 120) -> float:
    """Seconds until every partition of this deployment has all its replicas in sync."""
    from services.common.kafka import replication

    settings = load(Settings, env)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if all(r.in_sync >= r.replicas for r in replication(settings)):
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - the cluster is still electing
            pass
        time.sleep(0.5)
    raise AssertionError(f"replicas not back in sync within {timeout:g} s")


class NodeKilled:
    """SIGKILL a node of the cluster `after` seconds into the import (the stages then work
    through a backlog), and start it again `down` seconds later; the run waits for its
    replicas to be back in sync. `which`: `leader`, the node leading the most partitions
    of the raw topic, or `controller`, the active KRaft controller."""

    def __init__(self, which: str, after: float = 6, down: float = 30) -> None:
        self.which, self.after, self.down = which, after, down
        self.killed: int | None = None
        self.resync = 0.0

    def deliver(self, env: dict, kizuna: Callable, copy: list[dict], until_ms: int,
                path: Path) -> None:
        timer = threading.Timer(self.after, self._kill, args=(env,))
        timer.start()
        try:
            import_events(env, kizuna, copy, until_ms, path)
        finally:
            timer.join()

    def _kill(self, env: dict) -> None:
        if self.which == "controller":
            node = active_controller(env)
        else:
            leaders = partition_leaders(env, f"{env.get('KIZUNA_TOPIC_PREFIX', 'kizuna.')}"
                                             "touchpoints.raw")
            node = max(set(leaders.values()), key=lambda n: list(leaders.values()).count(n))
        self.killed = node
        psutil.Process(program_pid(env, f"kafka-{node}")).kill()
        self.struck = time.monotonic()
        threading.Timer(self.down, self._restart, args=(env, node)).start()

    def _restart(self, env: dict, node: int) -> None:
        rpc = supervisor.rpc(load(Settings, env))
        deadline = time.monotonic() + 60  # the runner may be starting it itself (autorestart)
        while rpc.getProcessInfo(f"kafka-{node}")["statename"] != "RUNNING":
            if rpc.getProcessInfo(f"kafka-{node}")["statename"] in ("EXITED", "FATAL",
                                                                    "STOPPED"):
                rpc.startProcess(f"kafka-{node}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kafka-{node} did not come back")
            time.sleep(0.5)

    def __call__(self, env: dict, tag: str) -> str:
        time.sleep(max(0.0, self.down + 1))  # the node is back (its restart timer fired)
        self.resync = wait_in_sync(env)
        return (f"SIGKILL node {self.killed} ({self.which}) {self.after:g} s into the import, "
                f"started {self.down:g} s later; replicas in sync {self.resync:.0f} s after")


def rolling_restart(env: dict, tag: str) -> str:
    """Every node stopped and started again, one at a time, each back in sync before the
    next, while the stages work (the monthly upgrade)."""
    settings = load(Settings, env)
    rpc = supervisor.rpc(settings)
    took = []
    for node in range(1, settings.kafka_brokers + 1):
        rpc.stopProcess(f"kafka-{node}")
        rpc.startProcess(f"kafka-{node}")
        took.append(wait_in_sync(env))
    return f"rolling restart of {len(took)} nodes, each in sync again after " + \
        ", ".join(f"{t:.0f}" for t in took) + " s"


class NodeDown:
    """One node stopped before the input comes and started again only after the stages have
    caught up: the cluster serves with 2 of 3 replicas in sync (min.insync.replicas=2)."""

    def __init__(self, node: int = 3) -> None:
        self.node = node

    def prepare(self, env: dict) -> None:
        supervisor.rpc(load(Settings, env)).stopProcess(f"kafka-{self.node}")

    def __call__(self, env: dict, tag: str) -> str:
        kizuna_wait(env)
        supervisor.rpc(load(Settings, env)).startProcess(f"kafka-{self.node}")
        return f"node {self.node} down for the whole run, in sync {wait_in_sync(env):.0f} s " \
               "after it came back"


def kizuna_wait(env: dict) -> None:
    from tests.conftest import kizuna

    kizuna(env, "wait", "--timeout", "600", timeout=700)


def failing_inserts(env: dict, tag: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{env['KIZUNA_WAREHOUSE_PORT']}/v1/faults?inserts=8&mode=half",
        data=b"", method="POST")
    urllib.request.urlopen(request, timeout=5).close()
    return "8 ClickHouse inserts fail half-way"


def poison(env: dict, tag: str) -> str:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{env['KIZUNA_KAFKA_PORT']}",
                         "log_level": 0})
    raw = "kizuna.touchpoints.raw"
    marker = f"{POISON} {tag}".encode()
    producer.produce(raw, b"\x00\xffnot avro at all " + marker, tag.encode())
    # the right magic and a real schema fingerprint, then a datum that is not a touchpoint
    good = default_serde().encode(TOUCHPOINT, _touchpoint(tag))
    producer.produce(raw, good[:10] + b"\x99\x99 broken datum " + marker, tag.encode())
    producer.flush(30)
    return "2 poison records on the raw topic"


class PoisonProcessing:
    """Records that make a stage's logic raise (KIZUNA_FAULT_INJECTION, see
    `tests.conftest.POISON_MARKERS`): one for the sessionizer, one for the scorer, one for
    alerting, on a customer of their own, imported with the copy. Each is dead-lettered by
    its stage (processing_error) after one retry and a bisection; everything else must come
    out as in the clean run, and no stage may restart."""

    def deliver(self, env: dict, kizuna: Callable, copy: list[dict], until_ms: int,
                path: Path) -> None:
        from tests.conftest import POISON_MARKERS

        tag = path.stem  # `run` names the copy's file after its tag
        start = min(e["occurred_at"] for e in copy if isinstance(e.get("occurred_at"), int))
        self.pids = {name: program_pid(env, name) for _, name in PORTS}
        bad = [{"event_id": f"zz{tag}-{POISON}-{marker}", "event_type": "cart_add",
                "channel": "web", "occurred_at": start + (i + 1) * 3_600_000,
                "customer_id": f"zz{tag}",
                "commerce": {"cart_id": "K", "product_id": "P", "quantity": 1,
                             "unit_price": 5.0}}
               for i, (_, marker) in enumerate(POISON_MARKERS)]
        import_events(env, kizuna, copy + bad, until_ms, path)

    def __call__(self, env: dict, tag: str) -> str:
        return "3 records that make the sessionizer, the scorer and alerting raise"

    def check(self, env: dict, tag: str) -> list[str]:
        """What went wrong: each stage dead-lettered its record once, none restarted."""
        wrong = []
        rows = query_rows(load(Settings, env), f"""
            SELECT stage, count() AS n FROM kizuna.dead_letters
            WHERE reason = 'processing_error' AND position(payload, 'zz{tag}') > 0
            GROUP BY stage ORDER BY stage""")
        got = {r["stage"]: r["n"] for r in rows}
        if got != {"alerting": 1, "engagement_scorer": 1, "sessionizer": 1}:
            wrong.append(f"processing_error dead letters by stage: {got}")
        restarted = [name for _, name in PORTS if program_pid(env, name) != self.pids[name]]
        if restarted:
            wrong.append(f"restarted: {restarted}")
        return wrong


PORTS = (("KIZUNA_SESSIONIZER_PORT", "sessionizer"),
         ("KIZUNA_ENGAGEMENT_SCORER_PORT", "engagement_scorer"),
         ("KIZUNA_ALERTING_PORT", "alerting"))


def _touchpoint(tag: str) -> dict:
    return {"event_id": f"{tag}-poison", "event_type": "page_view", "channel": "web",
            "occurred_at": BASE_MS, "sent_at": None, "received_at": BASE_MS,
            "event_time": BASE_MS, "customer_id": f"{tag}-x", "anonymous_id": None,
            "source": "chaos", "properties": {}, "commerce": None, "context": {}}


# -- one scenario ----------------------------------------------------------------------------

def import_events(env: dict, kizuna: Callable, events: list[dict], until_ms: int,
                  path: Path) -> None:
    kizuna(env, "import", str(write(events, path)), "--until", _iso(until_ms))


def run(env: dict, kizuna: Callable, tmp: Path, *, scenario: str, events: list[dict],
        seed: int, days: int, slot: int, fault: Callable[[dict, str], str] | None,
        doubled: bool = False, expected: dict | None = None) -> tuple[Outcome, dict]:
    """Import the copy of `events` in week slot `slot` (fault injected right after the import
    is sent, while the stages still work on it), wait, and compare with `expected` (the clean
    copy's fingerprint; None: this is the clean copy)."""
    tag = f"x{seed}{re.sub(r'[^a-z0-9]', '', scenario)}"
    shift = slot * -(-(days + 2) // 7) * WEEK_MS  # each copy's weeks apart from the others
    copy = retag(events, seed, tag, shift)
    if doubled:  # every event delivered twice, within the allowed lateness
        copy = sorted(copy + copy, key=lambda e: json.dumps(e.get("occurred_at")))
    until = BASE_MS + shift + (days + 1) * DAY_MS
    counted = _counters(env)
    if hasattr(fault, "prepare"):  # a fault set up before the input arrives
        fault.prepare(env)
    if hasattr(fault, "deliver"):  # a fault in the delivery itself
        fault.deliver(env, kizuna, copy, until, tmp / f"{tag}.jsonl")
    else:
        import_events(env, kizuna, copy, until, tmp / f"{tag}.jsonl")
    started = time.monotonic()
    faults = fault(env, tag) if fault else "none"
    kizuna(env, "wait", "--timeout", "900", timeout=1000)
    # from the fault itself when it says when it struck (a node killed during the import)
    recovery = time.monotonic() - getattr(fault, "struck", started)
    got = fingerprint(env, tag, shift)
    late, replays = (max(0, int(b - a)) for a, b in zip(counted, _counters(env), strict=True))
    if expected is None:
        return Outcome(scenario, faults, len(copy), 0, visible_duplicates(env, tag),
                       round(recovery, 1), True, late=late, replays=replays), got
    lost = len(expected["touchpoints"]) - len(got["touchpoints"])
    differing = [table for table in expected if expected[table] != got[table]]
    if fault is poison and len(poisoned(env, tag)) != 2:
        differing.append("the 2 poison records are not both in kizuna.dead_letters")
    if hasattr(fault, "check"):
        differing += fault.check(env, tag)
    detail = ""
    if differing:
        detail = "differs: " + ", ".join(differing)
        for table in differing[:2]:
            only_clean = sorted(set(expected.get(table, [])) - set(got.get(table, [])))[:2]
            only_here = sorted(set(got.get(table, [])) - set(expected.get(table, [])))[:2]
            detail += f"; {table}: clean only {only_clean}, here only {only_here}"
    return Outcome(scenario, faults, len(copy), lost, visible_duplicates(env, tag),
                   round(recovery, 1), not differing, detail, late, replays), got
