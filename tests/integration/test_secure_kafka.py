"""Kizuna against a secured broker configured the way a user configures their own
(tests/secure_kafka.py): only a client properties file, as a managed cluster hands it out
(KIZUNA_KAFKA_CONFIG_FILE), with SASL_SSL and SCRAM-SHA-512, with mutual TLS, and with SASL
PLAIN from a Java `sasl.jaas.config` line. Every stage, the collector, the importer, the
warehouse, `kizuna wait` and `kizuna alerts tail` run over it, and every ClickHouse table
equals the same events over plaintext. A wrong password, an untrusted CA, a certificate
for another name and a plaintext client against TLS each give one clear line, in seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import Settings, load
from services.generator.cli import write
from tests import secure_kafka
from tests.conftest import free_ports, kizuna, registry_url, services_env, stack_env
from tests.integration.test_bounded_input import tables

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(stack) -> Iterator[secure_kafka.SecureBroker]:
    where = Path(tempfile.mkdtemp(prefix="kz-secure-", dir="/tmp"))
    sasl_ssl, mtls, plaintext, controller = free_ports(4)
    started = secure_kafka.start(where, load(Settings, stack), dict(
        sasl_ssl=sasl_ssl, mtls=mtls, plaintext=plaintext, controller=controller))
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(where, ignore_errors=True)


def secured_env(stack: dict[str, str], properties: Path, tag: str) -> dict[str, str]:
    """A stack's environment whose only Kafka setting is the client properties file."""
    env = stack_env(Path(tempfile.mkdtemp(prefix=f"kz-{tag}-", dir="/tmp")))
    for name in ("KIZUNA_KAFKA_PORT", "KIZUNA_KAFKA_CONTROLLER_PORT"):
        env.pop(name)
    env.update(KIZUNA_KAFKA_CONFIG_FILE=str(properties), KIZUNA_TOPIC_PREFIX=f"kz{tag}.",
               KIZUNA_SCHEMA_REGISTRY_URL=registry_url(stack))
    return env


@contextlib.contextmanager
def running(env: dict[str, str]) -> Iterator[dict[str, str]]:
    try:
        kizuna(env, "up")
        yield env
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(env["KIZUNA_HOME"], ignore_errors=True)


def run_pipeline(env: dict[str, str], events: Path) -> tuple[dict, list[str]]:
    """Import, wait, and read back every table and the alerts `kizuna alerts tail` prints."""
    out = kizuna(env, "import", str(events), "--until", "2026-01-25T00:00:00Z").stdout
    assert "accepted: " in out and "NOT delivered" not in out, out
    kizuna(env, "wait", "--timeout", "300")
    settings = load(Settings, env)
    tail = kizuna(env, "alerts", "tail", "--from-beginning", "--json", "--idle-timeout", "5",
                  timeout=120).stdout
    return tables(settings, full=True), sorted(line for line in tail.splitlines() if line)


def test_the_pipeline_over_sasl_ssl_mutual_tls_and_plain_gives_the_tables_of_plaintext(
        stack, broker, tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    write(30, 12, 29, events, "2026-01-10T00:00:00Z", progress=None)
    with running(services_env(stack, "plain0")) as env:
        expected, expected_tail = run_pipeline(env, events)
    assert expected["alerts"] and expected_tail  # something to compare
    for mode in ("scram", "mtls", "plain"):
        properties = secure_kafka.client_properties(tmp_path / f"{mode}.properties", broker,
                                                    mode)
        with running(secured_env(stack, properties, mode)) as env:
            assert load(Settings, env).kafka.tls and not load(Settings, env).local_kafka
            got, tail = run_pipeline(env, events)
            for table, rows in expected.items():
                assert got[table] == rows, f"{mode}: {table} differs from plaintext"
            assert len(tail) == len(expected_tail), mode
            check = kizuna(env, "topics", "check").stdout
            assert "every topic at KIZUNA_REPLICATION_FACTOR=1" in check, check


@pytest.mark.parametrize("case, overrides, expected", [
    ("wrong password", {"sasl.password": "not-it"},
     "Kafka authentication failed for user 'kizuna' (SCRAM-SHA-512) at localhost:"),
    ("untrusted CA", {"ssl.ca.location": "OTHER_CA"},
     "presents a certificate no CA Kizuna trusts signed"),
    ("another name", {"bootstrap.servers": "127.0.0.2:SASL_SSL_PORT"},
     "presents a certificate that is not for that address"),
    ("plaintext against TLS", {"security.protocol": "PLAINTEXT", "sasl.mechanisms": "",
                               "sasl.username": "", "sasl.password": "",
                               "ssl.ca.location": ""},
     "expects TLS, but security.protocol is PLAINTEXT"),
])
def test_a_wrong_setting_gives_one_clear_line_within_a_minute(
        stack, broker, tmp_path, case, overrides, expected) -> None:
    values = {k: v.replace("OTHER_CA", str(broker.pki.other_ca))
              .replace("SASL_SSL_PORT", str(broker.sasl_ssl)) for k, v in overrides.items()}
    properties = secure_kafka.client_properties(tmp_path / "client.properties", broker,
                                                "scram", **values)
    env = secured_env(stack, properties, "bad")
    commands = [["topics", "check"]] + ([["up"]] if case == "wrong password" else [])
    try:
        for command in commands:
            started = time.monotonic()
            result = kizuna(env, *command, check=False, timeout=120)
            lines = result.stderr.strip().splitlines()
            assert result.returncode != 0 and len(lines) == 1, (case, result.stderr)
            assert lines[0].startswith("kizuna: error: ") and expected in lines[0], lines
            assert time.monotonic() - started < 60
        assert kizuna(env, "status", check=False).returncode != 0  # nothing started
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(env["KIZUNA_HOME"], ignore_errors=True)
