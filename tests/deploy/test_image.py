"""The image built and run here, with podman (`make deploy-check`; not in `make test`).

- The production image (`deploy/Dockerfile`, no embedded ClickHouse) builds from a local base,
  runs as a non-root user, carries its OCI labels, and stays under 500 MB.
- The embedded variant runs every stage, the collector and the warehouse as containers on the
  host network (deploy/compose.local.yml through podman-compose) against this machine's
  `kizuna up` stack (its Kafka and registry); the demo generator's events go through the
  containerised collector, and every ClickHouse table equals the same events through the
  local stack.
- A container stopped with SIGTERM exits cleanly within its grace period; the restarted
  sessionizer resumes from its volume (its state is read from disk, not rebuilt), and what
  comes after it is processed as in the local stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.common.settings import Settings, load
from services.generator.cli import write
from tests.conftest import free_ports, kizuna, services_stack
from tests.deploy import podman as pm
from tests.integration.test_bounded_input import tables

pytestmark = pytest.mark.deploy
ROOT = Path(__file__).resolve().parents[2]
PRODUCTION, EMBEDDED = "localhost/kizuna:test", "localhost/kizuna:test-embedded"
KEY = "container-key"


@pytest.fixture(scope="module")
def images() -> dict:
    missing = pm.available()
    assert missing is None, f"make deploy-check needs podman: {missing}"
    built = {"production": pm.build(PRODUCTION), "embedded": pm.build(EMBEDDED, "embedded")}
    Path("out").mkdir(exist_ok=True)
    Path("out/image.json").write_text(json.dumps(built, indent=1))
    return built


def test_the_production_image_is_small_non_root_and_labelled(images) -> None:
    image = images["production"]
    assert image["size_mb"] < 500, image["size_mb"]
    labels = image["labels"]
    assert labels["org.opencontainers.image.version"] and labels[
        "org.opencontainers.image.revision"] != "unknown" and labels[
        "org.opencontainers.image.source"]
    who = pm.podman("run", "--rm", "--entrypoint", "id", PRODUCTION).stdout
    assert "uid=10001" in who
    out = pm.podman("run", "--rm", PRODUCTION, "--help").stdout
    for stage in ("ingest", "sessionizer", "engagement_scorer", "alerting", "warehouse"):
        assert stage in out
    # no embedded engine in the production image: a clear line, not a traceback
    run = pm.podman("run", "--rm", "-e", "KIZUNA_CLICKHOUSE_URL=chdb:///var/lib/kizuna/ch",
                    PRODUCTION, "migrate", check=False)
    assert run.returncode != 0 and "pip install 'kizuna[embedded]'" in run.stderr


def compose(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "podman_compose", "-f", str(ROOT / "deploy" / "compose.local.yml"),
         "-p", env["PROJECT"], *args], env={**pm.environment(), **env}, capture_output=True,
        text=True, timeout=timeout, cwd=ROOT / "deploy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def ready(port: int, timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if json.load(resp).get("status") == "ok":
                    return time.monotonic() - started
        except (OSError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"nothing ready on {port} within {timeout:g} s")


def post_events(port: int, key: str, events: list[dict]) -> None:
    for i in range(0, len(events), 500):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events", method="POST",
            data=json.dumps({"events": events[i:i + 500]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert resp.status == 202


def test_the_pipeline_in_containers_gives_the_tables_of_the_local_stack(
        images, stack, tmp_path) -> None:
    ports = dict(zip(["WAREHOUSE_PORT", "CLICKHOUSE_HTTP_PORT", "INGEST_PORT",
                      "SESSIONIZER_PORT", "SCORER_PORT", "ALERTING_PORT"], free_ports(6),
                     strict=True))
    keys = tmp_path / "write_keys"
    keys.write_text(f"{KEY}=containers:web|app|email|pos|support|social|other")
    settings = load(Settings, stack)
    env = {**{k: str(v) for k, v in ports.items()}, "PROJECT": f"kzct{os.getpid()}",
           "KIZUNA_IMAGE": EMBEDDED, "KAFKA": settings.kafka_bootstrap,
           "REGISTRY": settings.schema_registry_url, "TOPIC_PREFIX": "kizuna-ct.",
           "WRITE_KEYS_FILE": str(keys), "ALERT_CLOCK": "event"}
    events_path = tmp_path / "events.jsonl"
    generated = write(40, 6, 37, events_path, "2026-02-02T00:00:00Z", progress=None)
    # sent_at would date each event by its receipt (clock-skew correction): two runs differ
    events = [{k: v for k, v in e.items() if k != "sent_at"}
              for e in generated.events if isinstance(e, dict)]
    first, second = events[: len(events) * 2 // 3], events[len(events) * 2 // 3:]
    try:
        compose(env, "up", "-d", "kizuna-init")
        compose(env, "up", "-d")
        for name in ("WAREHOUSE_PORT", "INGEST_PORT", "SESSIONIZER_PORT", "SCORER_PORT",
                     "ALERTING_PORT"):
            ready(ports[name])
        post_events(ports["INGEST_PORT"], KEY, first)
        container = f"{env['PROJECT']}_sessionizer_1"
        # SIGTERM: the stage finishes the batch in hand and leaves, within its grace period
        started = time.monotonic()
        pm.podman("stop", "-t", "60", container)
        stopped_in = time.monotonic() - started
        (state,) = json.loads(pm.podman("inspect", container).stdout)
        assert state["State"]["ExitCode"] == 0 and stopped_in < 60, (state["State"], stopped_in)
        pm.podman("start", container)
        resumed_in = ready(ports["SESSIONIZER_PORT"])
        logs = pm.podman("logs", container).stdout + pm.podman("logs", container).stderr
        post_events(ports["INGEST_PORT"], KEY, second)
        container_env = {**os.environ, "KIZUNA_HOME": "/var/lib/kizuna",
                         "KIZUNA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                         "KIZUNA_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
                         "KIZUNA_TOPIC_PREFIX": "kizuna-ct.",
                         "KIZUNA_WAREHOUSE_PORT": str(ports["WAREHOUSE_PORT"])}
        kizuna(container_env, "wait", "--timeout", "300")
        got = tables(load(Settings, container_env), full=True)
        with services_stack(stack, "host",
                            KIZUNA_WRITE_KEYS=keys.read_text()) as host:  # the same source
            for part in (first, second):
                post_events(int(host["KIZUNA_INGEST_PORT"]), KEY, part)
            kizuna(host, "wait", "--timeout", "300")
            expected = tables(load(Settings, host), full=True)
        # the dead letters carry the source's name (the key's): compared by reason and stage
        for table in ("touchpoints", "sessions", "customer_profiles", "alerts"):
            assert got[table] == expected[table], f"{table} differs from the local stack"
        assert len(got["dead_letters"]) == len(expected["dead_letters"])
        assert resumed_in < 60, resumed_in
        assert "Restoring state from changelog" not in logs or "0 changelog" in logs
    finally:
        subprocess.run([sys.executable, "-m", "podman_compose", "-f",
                        str(ROOT / "deploy" / "compose.local.yml"), "-p", env["PROJECT"],
                        "down", "-v"], env={**pm.environment(), **env}, capture_output=True,
                       timeout=300, cwd=ROOT / "deploy")
