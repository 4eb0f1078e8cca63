"""`kizuna up`, `query`, `migrate`, `status`, `down` on the real local stack."""

import datetime as dt
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from services.common.settings import Settings, load
from services.localstack import supervisor
from tests.conftest import free_ports, kizuna, stack_env

pytestmark = pytest.mark.integration
CONTRACT_TABLES = ["alerts", "customer_profiles", "customer_touchpoints", "daily_alerts",
                   "daily_funnel", "daily_touchpoints", "dead_letters", "sessions",
                   "touchpoints"]
LIST_TABLES = "SELECT name FROM system.tables WHERE database = 'kizuna' ORDER BY name"
MINUTE, DAY = dt.timedelta(minutes=1), dt.timedelta(days=1)


def one_error_line(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("kizuna: error: ")
    return lines[0]


def test_up_twice_then_query_lists_the_contract_tables(stack):
    before = {p["name"]: p["pid"] for p in json.loads(kizuna(stack, "status", "--json").stdout)}
    assert set(before) == {"kafka", "schema_registry", "warehouse", "ingest", "sessionizer",
                           "engagement_scorer", "alerting"}
    again = kizuna(stack, "up")
    assert "0 created" in again.stdout
    after = json.loads(kizuna(stack, "status", "--json").stdout)
    assert {p["name"]: p["pid"] for p in after} == before
    assert all(p["state"] == "RUNNING" for p in after)

    # The warehouse owns the embedded engine; `kizuna query` goes through its gateway.
    out = kizuna(stack, "query", LIST_TABLES, "--format", "csv").stdout.splitlines()
    assert out == ['"name"'] + [f'"{t}"' for t in CONTRACT_TABLES]
    rows = kizuna(stack, "query", LIST_TABLES, "--format", "json").stdout.splitlines()
    assert [json.loads(r)["name"] for r in rows] == CONTRACT_TABLES
    table = kizuna(stack, "query", LIST_TABLES).stdout
    assert all(t in table for t in CONTRACT_TABLES)
    assert kizuna(stack, "migrate").stdout.strip() == "up to date"


def test_query_is_read_only_and_errors_are_one_line(stack):
    line = one_error_line(kizuna(stack, "query", "DROP TABLE kizuna.touchpoints", check=False))
    assert "readonly" in line.lower()
    line = one_error_line(kizuna(
        stack, "query", "INSERT INTO kizuna_store.dead_letters (dead_letter_id) VALUES ('x')",
        check=False))
    assert "readonly" in line.lower()
    assert "Syntax error" in one_error_line(kizuna(stack, "query", "SELEC 1", check=False))
    assert kizuna(stack, "query", "SELECT count() FROM kizuna.touchpoints",
                  "--format", "csv").stdout.splitlines()[1].isdigit()


def test_query_file(stack, tmp_path):
    sql = tmp_path / "q.sql"
    sql.write_text("SELECT 40 + 2 AS answer")
    assert kizuna(stack, "query", "-f", str(sql), "--format", "json").stdout.strip() == \
        '{"answer":42}'


def test_wrong_addresses_give_one_clear_line(stack):
    (dead_port,) = free_ports(1)
    env = dict(stack, KIZUNA_KAFKA_BOOTSTRAP=f"127.0.0.1:{dead_port}")
    line = one_error_line(kizuna(env, "topics", "create", check=False))
    assert f"cannot reach Kafka at 127.0.0.1:{dead_port} (KIZUNA_KAFKA_BOOTSTRAP)" in line
    env = dict(stack, KIZUNA_CLICKHOUSE_URL=f"http://127.0.0.1:{dead_port}")
    line = one_error_line(kizuna(env, "query", "SELECT 1", check=False))
    assert "cannot reach ClickHouse" in line and "KIZUNA_CLICKHOUSE_URL" in line
    env = dict(stack, KIZUNA_CLICKHOUSE_URL="ftp://somewhere")
    assert "unsupported scheme" in one_error_line(kizuna(env, "query", "SELECT 1", check=False))


def test_a_second_stack_on_a_taken_port_refuses_to_start(stack):
    with tempfile.TemporaryDirectory(prefix="kz-", dir="/tmp") as home:
        env = dict(stack_env(Path(home)), KIZUNA_KAFKA_PORT=stack["KIZUNA_KAFKA_PORT"])
        line = one_error_line(kizuna(env, "up", check=False))
        assert f"port {stack['KIZUNA_KAFKA_PORT']} (KIZUNA_KAFKA_PORT) is already in use" in line
        assert not supervisor.stack_processes(load(Settings, env))


def schema_ids(topics_create: str) -> dict[str, tuple[str, int]]:
    """subject -> (registered|exists, schema id), from `kizuna topics create`."""
    found = re.findall(r"^(\S+-\S+)\s+(registered|exists)\s+schema id (\d+)", topics_create,
                       re.MULTILINE)
    return {subject: (verb, int(schema_id)) for subject, verb, schema_id in found}


def test_side_by_side_stack_survives_a_crash_and_down_leaves_nothing(stack):
    """A second stack beside the session's; its process runner is killed, then cleaned up."""
    with tempfile.TemporaryDirectory(prefix="kz-", dir="/tmp") as home:
        env = stack_env(Path(home))
        del env["KIZUNA_WRITE_KEYS"]  # local mode: `kizuna up` generates a key
        settings = load(Settings, env)
        started = time.monotonic()
        kizuna(env, "up")
        cold = time.monotonic() - started
        key = (Path(home) / "write_keys").read_text().split("=")[0]
        assert key not in kizuna(env, "config").stdout
        assert f"KIZUNA_WRITE_KEYS={key}=local:" in kizuna(env, "config", "--show-secrets").stdout
        event = {"event_id": "k1", "event_type": "page_view", "channel": "pos",
                 "occurred_at": 1_710_000_000_000, "anonymous_id": "d1"}
        request = urllib.request.Request(
            f"http://127.0.0.1:{env['KIZUNA_INGEST_PORT']}/v1/events", method="POST",
            data=json.dumps(event).encode(), headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 202
        assert kizuna(env, "query", LIST_TABLES, "--format", "csv").stdout.count("\n") == \
            1 + len(CONTRACT_TABLES)
        kizuna(stack, "query", "SELECT 1")  # the other stack is unaffected
        ids = schema_ids(kizuna(env, "topics", "create").stdout)
        assert len(ids) == 10 and all(verb == "exists" for verb, _ in ids.values())

        runner = psutil.Process(supervisor.supervisord_pid(settings))
        runner.kill()
        deadline = time.monotonic() + 10
        while not gone(runner):  # however long the kill takes, no longer
            assert time.monotonic() < deadline, "the process runner outlived SIGKILL"
            time.sleep(0.05)
        orphans = supervisor.stack_processes(settings)
        assert {p.name() for p in orphans} >= {"java"}
        assert "orphaned" in kizuna(env, "status", check=False).stdout

        # Restart over the orphans and the existing data: a warm start.
        started = time.monotonic()
        kizuna(env, "up")
        warm = time.monotonic() - started
        assert all(gone(p) for p in orphans)
        # the registry kept its schemas and ids: values already on the topics still resolve
        assert schema_ids(kizuna(env, "topics", "create").stdout) == ids
        kizuna(env, "down")
        assert supervisor.stack_processes(settings) == []
        assert kizuna(env, "down").stdout.strip() == "nothing running"
        assert kizuna(env, "status", check=False).returncode == 3
        print(f"\nstack start: cold {cold:.1f} s, warm (after a crash) {warm:.1f} s")


def test_every_service_reports_its_work_and_status_shows_the_pipeline_caught_up(
        stack, tmp_path) -> None:
    from services.localstack.health import PROCESSED, scrape, series_total
    from tests.integration.test_sessionizer import Clock, event, run

    port_of = {env: int(stack[env]) for env, _, _ in PROCESSED.values()}
    before = {stage: scrape(port_of[env]) for stage, (env, _, _) in PROCESSED.items()}
    t0 = Clock.start()
    events = [event(f"obs-{i}", t0 + i * MINUTE, f"obs-{i % 3}", event_type=kind)
              for i, kind in enumerate(["page_view", "cart_add", "purchase"] * 4)]
    # the collector path too: one event over HTTP
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack['KIZUNA_INGEST_PORT']}/v1/events",
        data=json.dumps(event("obs-http", t0, "obs-0")).encode(), method="POST",
        headers={"Authorization": "Bearer key-shop", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 202
    run(stack, events, t0 + 2 * DAY, tmp_path)
    for stage, (env, name, labels) in PROCESSED.items():
        after = scrape(port_of[env])
        moved = (series_total(after, name, labels) or 0) \
            - (series_total(before[stage], name, labels) or 0)
        assert moved > 0, (stage, name)
    # faust's own sensor is there too, under the stage's name
    sessionizer = scrape(port_of["KIZUNA_SESSIONIZER_PORT"])
    assert sessionizer["kizuna_sessionizer_faust_messages_received_total"][0][1] > 0
    # latency in both clocks, state size, event time reached
    clocks = {labels["clock"]: value for labels, value
              in sessionizer["kizuna_stage_latency_seconds_count"]}
    assert clocks["wall"] > 0 and clocks["event"] > 0
    assert sessionizer["kizuna_stage_state_keys"][0][1] > 0
    # the time given downstream moved, and never runs ahead of the partition's own
    reached_at = {labels["partition"]: value for labels, value
                  in sessionizer["kizuna_sessionizer_event_time_seconds"]}
    given = {labels["partition"]: value for labels, value
             in sessionizer["kizuna_sessionizer_output_time_seconds"]}
    assert max(given.values()) > 0
    assert all(value <= reached_at.get(partition, 0) for partition, value in given.items())
    # alerting's event time moved past these events, and never ahead of the sessionizer's
    alerting = scrape(port_of["KIZUNA_ALERTING_PORT"])
    judged = max(v for _, v in alerting["kizuna_alerting_event_time_seconds"])
    assert t0.timestamp() < judged <= max(reached_at.values())
    (pending,) = [v for _, v in alerting["kizuna_alerting_pending_decisions"]]
    assert pending >= 1 and pending == int(pending)  # at least these customers' churn timers
    warehouse = scrape(port_of["KIZUNA_WAREHOUSE_PORT"])
    assert [v for _, v in warehouse["kizuna_warehouse_consumer_lag"]] == [0]  # all loaded

    rows = json.loads(kizuna(stack, "status", "--json", "--sample", "1").stdout)
    by_name = {r["name"]: r for r in rows}
    for stage in ("sessionizer", "engagement_scorer", "alerting", "warehouse"):
        assert by_name[stage]["state"] == "RUNNING" and by_name[stage]["lag"] == 0, stage
    reached = by_name["sessionizer"]["event_time"]
    assert reached is not None and reached >= (t0 + 2 * DAY).strftime("%Y-%m-%d")
    for stage in ("sessionizer", "engagement_scorer", "alerting", "warehouse"):
        error = by_name[stage]["last_error"]  # the log's last error line, if any
        assert error is None or any(w in error for w in ("ERROR", "CRITICAL", "Traceback"))
    text = kizuna(stack, "status", "--sample", "0.5").stdout
    header, *lines = text.splitlines()
    assert header.split()[:6] == ["program", "state", "pid", "uptime", "lag", "events/s"]
    (line,) = [x for x in lines if x.startswith("sessionizer ")]
    assert line.split()[1:2] == ["RUNNING"] and line.split()[4] == "0"  # state, lag
    assert reached[:10] in line  # the event time reached, as --json gave it


def test_no_secret_or_raw_pii_in_any_log(stack):
    """After the collector's tests (wrong keys, signed webhooks, PII) have run on the session
    stack: no write key, webhook secret, PII salt or raw address of those tests in its logs."""
    from tests.conftest import WEBHOOK_SECRET, WRITE_KEYS

    logs = list((Path(stack["KIZUNA_HOME"]) / "logs").glob("*.log"))
    assert logs
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    for secret in (*WRITE_KEYS, WEBHOOK_SECRET, stack["KIZUNA_PII_SALT"]):
        assert secret not in text, f"{secret!r} is in a log"
    for address in ("Jane@Example.com", "Raw@Example.com", "Replay@Example.com"):
        assert address.lower() not in text.lower(), f"{address} is in a log"


def gone(process: psutil.Process) -> bool:
    """Dead, or a zombie nobody reaped yet."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
