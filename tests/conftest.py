"""Shared fixtures. Integration tests run against a real local stack: an Apache Kafka broker
from Maven Central and the embedded ClickHouse engine, started with `kizuna up` on free ports
in a temporary KIZUNA_HOME, with a schema registry (Apicurio Registry, also from Maven Central),
and stopped with `kizuna down` at the end of the session."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from services.common.schema_registry import serde_for
from services.common.serde import AvroSerde
from services.common.settings import Settings, load
from services.localstack import supervisor

KIZUNA = [sys.executable, "-m", "services.cli"]
ALL_CHANNELS = "web|app|email|pos|support|social|other"
WRITE_KEYS = {  # key -> source:channels; one source per test concern keeps rate buckets apart
    "key-shop": f"shop:{ALL_CHANNELS}",
    "key-stores": "stores:pos",
    "key-fuzz": f"fuzz:{ALL_CHANNELS}",
    "key-rate": f"ratetest:{ALL_CHANNELS}",
    "key-broker": f"brokertest:{ALL_CHANNELS}",
    "key-chaos": f"chaos:{ALL_CHANNELS}",
}
WEBHOOK_SECRET = "whsec-test"
#: Email providers' test keys: SendGrid's ECDSA P-256 pair (the collector holds the public
#: key), Mailgun's signing key, Postmark's Basic credentials.
SENDGRID_KEY = ec.derive_private_key(0x6B697A756E612D73656E6467726964, ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(SENDGRID_KEY.public_key().public_bytes(
    Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()
MAILGUN_KEY = "key-mailgun-test"
#: Amazon SNS's signing key for tests, and its certificate (the collector's `ses=` secret).
SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_SNS_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
SNS_CERTIFICATE = x509.CertificateBuilder().subject_name(_SNS_NAME).issuer_name(
    _SNS_NAME).public_key(SNS_KEY.public_key()).serial_number(1).not_valid_before(
    dt.datetime(2020, 1, 1)).not_valid_after(dt.datetime(2040, 1, 1)).sign(
    SNS_KEY, hashes.SHA256()).public_bytes(Encoding.PEM)
POSTMARK_LOGIN = "postmark:pm-secret"
#: (stage, marker): a touch whose event_id contains the marker makes that stage's logic raise
POISON_MARKERS = (("sessionizer", "poison~sessionizer"),
                  ("engagement_scorer", "poison~engagement_scorer"),
                  ("alerting", "poison~alerting"))
INGEST_RATE = 2000


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stack_env(home: Path, clock: str = "event") -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "sns-cert.pem").write_bytes(SNS_CERTIFICATE)
    kafka, controller, warehouse, ingest, sessionizer, scorer, alerting, http, registry = \
        free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIZUNA_")}
    env.update(
        KIZUNA_HOME=str(home),
        KIZUNA_KAFKA_PORT=str(kafka),
        KIZUNA_KAFKA_CONTROLLER_PORT=str(controller),
        KIZUNA_WAREHOUSE_PORT=str(warehouse),
        KIZUNA_CLICKHOUSE_HTTP_PORT=str(http),
        KIZUNA_SCHEMA_REGISTRY_PORT=str(registry),
        KIZUNA_INGEST_PORT=str(ingest),
        KIZUNA_SESSIONIZER_PORT=str(sessionizer),
        KIZUNA_ENGAGEMENT_SCORER_PORT=str(scorer),
        KIZUNA_ALERTING_PORT=str(alerting),
        KIZUNA_WRITE_KEYS=";".join(f"{k}={v}" for k, v in WRITE_KEYS.items()),
        KIZUNA_WEBHOOK_SECRETS=f"esp={WEBHOOK_SECRET};sendgrid={SENDGRID_PUBLIC};"
                               f"mailgun={MAILGUN_KEY};postmark={POSTMARK_LOGIN};"
                               f"ses={home / 'sns-cert.pem'}",
        KIZUNA_SNOWPLOW_APPS=f"sp-shop=shop:{ALL_CHANNELS};sp-stores=stores:pos",
        KIZUNA_INGEST_RATE=str(INGEST_RATE),
        KIZUNA_INGEST_PRODUCE_TIMEOUT_MS="4000",
        KIZUNA_PII_SALT="test-salt",
        KIZUNA_PARTITIONS="4",
        # The tests simulate live traffic in weeks of their own (2026): alerts are sent as
        # they would have been then. The backfill tests measure from the wall clock, as
        # shipped (`stack_env(home, clock="wall")`).
        KIZUNA_ALERT_CLOCK=clock,
        KIZUNA_WAREHOUSE_FAULT_INJECTION="true",
        # records whose id carries a marker make that stage raise (poison records)
        KIZUNA_FAULT_INJECTION=",".join(f"{stage}:{marker}" for stage, marker in POISON_MARKERS),
        TZ="UTC",
    )
    return env


def registry_url(env: dict[str, str]) -> str:
    return load(Settings, env).schema_registry_url


def stack_serde(env: dict[str, str]) -> AvroSerde:
    """The serde of `env`'s stack: values framed with its schema registry's ids."""
    return serde_for(load(Settings, env))


def services_env(broker: dict[str, str], tag: str, clock: str = "event") -> dict[str, str]:
    """A second stack's environment on the broker of `broker`'s stack: its own home (its own
    embedded ClickHouse), ports and topic prefix. `kizuna up` then starts no broker and no
    schema registry: it uses those of `broker`'s stack."""
    env = stack_env(Path(tempfile.mkdtemp(prefix=f"kz-{tag}-", dir="/tmp")), clock)
    env["KIZUNA_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{broker['KIZUNA_KAFKA_PORT']}"
    env["KIZUNA_SCHEMA_REGISTRY_URL"] = registry_url(broker)
    env["KIZUNA_TOPIC_PREFIX"] = f"kz{tag}."
    return env


@contextlib.contextmanager
def services_stack(broker: dict[str, str], tag: str, clock: str = "event",
                   **extra: str) -> Iterator[dict[str, str]]:
    """A running stack of every service on `broker`'s Kafka, stopped and removed after
    (`extra`: more settings)."""
    env = {**services_env(broker, tag, clock), **extra}
    try:
        kizuna(env, "up")
        yield env
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(env["KIZUNA_HOME"], ignore_errors=True)


def kizuna(env: dict[str, str], *args: str, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*KIZUNA, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"kizuna {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """Environment of a running local stack (broker, warehouse, topics, migrated ClickHouse)."""
    # A short path: the process runner's control socket must fit in 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    env = stack_env(home)
    try:
        kizuna(env, "up")
        yield env
    finally:
        kizuna(env, "down", check=False)
        left = supervisor.stack_processes(load(Settings, env))
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"kizuna down left processes behind: {left}"


@pytest.fixture(scope="session")
def stack_settings(stack: dict[str, str]) -> Settings:
    return load(Settings, stack)
