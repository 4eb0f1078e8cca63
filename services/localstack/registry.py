"""What `kizuna up` runs: one entry per process of the local stack.

A stage joins the local stack by adding a `Program` here: its command line, whether it runs
with these settings, and how to tell it is ready. Programs start in this order, each once
the one before is ready.
"""

from __future__ import annotations

import functools
import json
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from services.common.analyst import ensure_local_password
from services.common.errors import UnreachableError
from services.common.kafka import check_reachable
from services.common.settings import (
    AlertingSettings,
    EngagementScorerSettings,
    IngestSettings,
    SessionizerSettings,
    Settings,
    WarehouseSettings,
    load,
)
from services.ingest.keys import ensure_local_key
from services.localstack import apicurio, kafka


@dataclass(frozen=True)
class Program:
    name: str
    command: Callable[[Settings], list[str]]
    enabled: Callable[[Settings], bool] = lambda s: True
    ready: Callable[[Settings], bool] = lambda s: True
    needs_topics: bool = False  # start only after `kizuna topics create`
    stop_wait_seconds: int = 20
    #: supervisord stops lower tiers last, and a tier's programs together: the stages before
    #: the warehouse, the registry and the broker they flush to on the way out
    tier: int = 400


def python_module(module: str) -> Callable[[Settings], list[str]]:
    return lambda s: [sys.executable, "-m", module]


def kafka_ready(settings: Settings) -> bool:
    """The local cluster answers, with every node registered as a broker."""
    try:
        return check_reachable(settings, timeout=2) >= settings.kafka_brokers
    except UnreachableError:
        return False


def readyz_ok(port: int) -> bool:
    """Whether the service on `port` answers `/readyz` with status ok (started, partitions
    held, state recovered)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200 and json.load(resp).get("status") == "ok"
    except (OSError, ValueError):
        return False


def http_ready(port_of: Callable[[Settings], int]) -> Callable[[Settings], bool]:
    return lambda settings: readyz_ok(port_of(settings))


def ingest_port(settings: Settings) -> int:
    return load(IngestSettings).port


def sessionizer_port(settings: Settings) -> int:
    return load(SessionizerSettings).port


def scorer_port(settings: Settings) -> int:
    return load(EngagementScorerSettings).port


def alerting_port(settings: Settings) -> int:
    return load(AlertingSettings).port


def ingest_command(settings: Settings) -> list[str]:
    ensure_local_key(load(IngestSettings))
    return python_module("services.ingest")(settings)


def kafka_programs(settings: Settings) -> list[Program]:
    """The local cluster's nodes: `kafka`, or `kafka-1`... `kafka-N` (KIZUNA_KAFKA_BROKERS).
    A quorum needs a majority of them, so they start together: only the last waits, until
    every node is a broker of the cluster."""
    n = settings.kafka_brokers
    if n == 1:
        return [Program("kafka", kafka.prepare, enabled=lambda s: s.local_kafka,
                        ready=kafka_ready, stop_wait_seconds=40, tier=100)]
    return [Program(f"kafka-{node}", functools.partial(kafka.prepare, node=node),
                    enabled=lambda s: s.local_kafka,
                    ready=kafka_ready if node == n else lambda s: True, stop_wait_seconds=40,
                    tier=100)
            for node in range(1, n + 1)]


SCHEMA_REGISTRY = Program(
    "schema_registry", apicurio.prepare, enabled=lambda s: s.local_schema_registry,
    ready=apicurio.ready, tier=200)


def warehouse_command(settings: Settings) -> list[str]:
    ensure_local_password(load(WarehouseSettings))
    return python_module("services.warehouse")(settings)


WAREHOUSE = Program(
    "warehouse", warehouse_command, ready=http_ready(lambda s: s.warehouse_port), tier=300)
INGEST = Program(
    "ingest", ingest_command, ready=http_ready(ingest_port), needs_topics=True)

SESSIONIZER = Program(
    "sessionizer", python_module("services.sessionizer"), ready=http_ready(sessionizer_port),
    needs_topics=True, stop_wait_seconds=30)

SCORER = Program(
    "engagement_scorer", python_module("services.engagement_scorer"),
    ready=http_ready(scorer_port), needs_topics=True, stop_wait_seconds=30)

ALERTING = Program(
    "alerting", python_module("services.alerting"), ready=http_ready(alerting_port),
    needs_topics=True, stop_wait_seconds=30)

SERVICES: tuple[Program, ...] = (SCHEMA_REGISTRY, WAREHOUSE, INGEST, SESSIONIZER, SCORER, ALERTING)


def programs(settings: Settings) -> list[Program]:
    """Every program of the stack, in start order (enabled or not)."""
    return [*kafka_programs(settings), *SERVICES]


def ports(settings: Settings) -> dict[str, int]:
    """Ports the enabled programs listen on, by environment variable (checked before start)."""
    found = {"KIZUNA_WAREHOUSE_PORT": settings.warehouse_port,
             "KIZUNA_INGEST_PORT": ingest_port(settings),
             "KIZUNA_SESSIONIZER_PORT": sessionizer_port(settings),
             "KIZUNA_ENGAGEMENT_SCORER_PORT": scorer_port(settings),
             "KIZUNA_ALERTING_PORT": alerting_port(settings)}
    if settings.embedded_clickhouse:
        found["KIZUNA_CLICKHOUSE_HTTP_PORT"] = load(WarehouseSettings).clickhouse_http_port
    if settings.local_schema_registry:
        found["KIZUNA_SCHEMA_REGISTRY_PORT"] = settings.schema_registry_port
    if settings.local_kafka:
        for i, (port, controller) in enumerate(zip(settings.local_kafka_ports,
                                                   settings.local_controller_ports, strict=True)):
            found[f"KIZUNA_KAFKA_PORT (node {i + 1})" if i else "KIZUNA_KAFKA_PORT"] = port
            found[f"KIZUNA_KAFKA_CONTROLLER_PORT (node {i + 1})" if i
                  else "KIZUNA_KAFKA_CONTROLLER_PORT"] = controller
    return found
