"""The schema registry, with a stock client: values in Confluent's wire format that
confluent-kafka's own AvroDeserializer reads with nothing of Kizuna's (no code, no `schemas/`),
and schema changes checked by the registry before anything is produced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from services.common.settings import Settings, load
from tests.conftest import kizuna, services_stack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "consume_alerts.py"


def test_a_stock_deserializer_reads_every_alert_without_kizuna(stack, tmp_path) -> None:
    with services_stack(stack, "sr") as env:
        kizuna(env, "demo", "--customers", "40", "--days", "4", "--out", str(tmp_path),
               timeout=600)
        settings = load(Settings, env)
        # the README's consumer, isolated (-I: nothing from this checkout on its path)
        done = subprocess.run(
            [sys.executable, "-I", str(EXAMPLE), "--bootstrap", settings.kafka_bootstrap,
             "--registry", settings.schema_registry_url, "--prefix", settings.topic_prefix,
             "--group", "stock-reader", "--idle-timeout", "8", "--json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
        latest = {}
        for line in done.stdout.splitlines():
            alert = json.loads(line)
            latest[alert["alert_id"]] = alert
        stored = {r["alert_id"]: r for r in map(json.loads, kizuna(
            env, "query", "SELECT alert_id, alert_type, status, customer_id FROM kizuna.alerts",
            "--format", "json").stdout.splitlines())}
        sent = {k: r for k, r in stored.items() if r["status"] in ("open", "resolved")}
        assert len(sent) >= 10, stored
        # every alert on the topics, read by the stock client, is the one ClickHouse holds
        assert set(latest) <= set(stored)
        assert {k: (a["alert_type"], a["status"], a["customer_id"]) for k, a in latest.items()
                if k in sent} == {k: (r["alert_type"], r["status"], r["customer_id"])
                                  for k, r in sent.items()}
        # the values are Confluent-framed, with ids the registry gave the alert subjects
        topic = f"{settings.topic_prefix}alerts.churn_risk"
        first = _first_value(settings.kafka_bootstrap, topic)
        assert first[0] == 0
        create = kizuna(env, "topics", "create").stdout
        alert_ids = {int(line.split("schema id ")[1].split()[0]) for line in create.splitlines()
                     if "-value" in line and ".alerts." in line}
        assert alert_ids == {int.from_bytes(first[1:5], "big")}


def _first_value(bootstrap: str, topic: str) -> bytes:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "first-value",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        for _ in range(30):
            for msg in consumer.consume(100, timeout=1):
                if msg.error() is None:
                    return msg.value()
    finally:
        consumer.close()
    raise AssertionError(f"{topic} is empty")


def _schemas_with(tmp_path: Path, field: dict) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", copy)
    alert = json.loads((copy / "alert.avsc").read_text())
    alert["fields"].append(field)
    (copy / "alert.avsc").write_text(json.dumps(alert, indent=2))
    return copy


def test_the_registry_refuses_an_incompatible_schema_before_any_topic_changes(
        stack, tmp_path) -> None:
    env = dict(stack, KIZUNA_TOPIC_PREFIX="kzcompat.")
    kizuna(env, "topics", "create")
    subject = "kzcompat.alerts.churn_risk-value"
    # a new field without a default: data written before could not be read (BACKWARD)
    breaking = _schemas_with(tmp_path / "a", {"name": "priority", "type": "int"})
    refused = kizuna(dict(env, KIZUNA_SCHEMAS_DIR=str(breaking)), "topics", "create",
                     check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "refused schemas/alert.avsc" in line and "BACKWARD" in line, line
    # ... and a field with a default is a new version of the subject
    evolving = _schemas_with(tmp_path / "b", {"name": "priority", "type": "int", "default": 0})
    accepted = kizuna(dict(env, KIZUNA_SCHEMAS_DIR=str(evolving)), "topics", "create").stdout
    assert any(line.startswith(subject) and "registered" in line
               for line in accepted.splitlines()), accepted
