"""Kizuna on a replicated cluster and on the previous Kafka line (contract section 4).

A local cluster of three KRaft nodes (`KIZUNA_KAFKA_BROKERS=3`): every topic, faust's
changelogs and assignor topics included, at replication factor 3 and min.insync.replicas
2 (`kizuna topics check`); and the row of `make chaos` that caught a lost partition: the
node leading the most partitions of the raw topic SIGKILLed during an import, started again
later: nothing lost or shown twice, every table equal to a clean run. `make chaos` runs all
four cluster rows on ~95,000 events each.

And the pipeline on Kafka 3.9 (`KIZUNA_KAFKA_VERSION`), whose jars the stack fetches too.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import Settings, load
from services.generator.cli import write
from tests.chaos import run as chaos
from tests.chaos import scenarios as sc
from tests.conftest import kizuna, services_stack, stack_env
from tests.integration.test_bounded_input import tables

pytestmark = pytest.mark.integration
SEED, CUSTOMERS, DAYS = 7, 80, 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    env = chaos.cluster_env(Path(tempfile.mkdtemp(prefix="kz-cl-", dir="/tmp")))
    try:
        kizuna(env, "up", timeout=600)
        yield env
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(env["KIZUNA_HOME"], ignore_errors=True)


def test_every_topic_is_replicated_three_times_with_two_in_sync_required(cluster) -> None:
    settings = load(Settings, cluster)
    assert settings.replication_factor == 3 and len(settings.kafka_bootstrap.split(",")) == 3
    out = kizuna(cluster, "topics", "check").stdout
    topics = [line for line in out.splitlines() if line.startswith("kizuna.")]
    names = {line.split()[0] for line in topics}
    assert {"kizuna.touchpoints.raw", "kizuna.sessionizer-profiles-changelog",
            "kizuna.alerting-customers-changelog", "kizuna.sessionizer-__assignor-__leader",
            "kizuna.sessionizer.handoff"} <= names
    assert all("replicas=3 min.insync.replicas=2 in sync=3" in line for line in topics), out


def test_the_leader_of_the_raw_topic_killed_during_an_import_changes_no_result(
        cluster, tmp_path) -> None:
    events = sc.dataset(SEED, CUSTOMERS, DAYS)
    _, expected = sc.run(cluster, kizuna, tmp_path, scenario="clean", events=events,
                         seed=SEED, days=DAYS, slot=1, fault=None)
    fault = sc.NodeKilled("leader", after=0.5, down=12)
    outcome, got = sc.run(cluster, kizuna, tmp_path, scenario="kill-leader", events=events,
                          seed=SEED, days=DAYS, slot=2, fault=fault, expected=expected)
    assert fault.killed is not None
    assert (outcome.lost, outcome.duplicates_visible) == (0, 0)
    assert outcome.equal, outcome.detail


def test_the_pipeline_on_kafka_3_9_gives_the_tables_of_kafka_4(stack, tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    write(25, 6, 31, events, "2026-01-10T00:00:00Z", progress=None)
    results = []
    with services_stack(stack, "k4") as env:  # the suite's broker: Kafka 4
        kizuna(env, "import", str(events), "--until", "2026-01-20T00:00:00Z")
        kizuna(env, "wait", "--timeout", "300")
        results.append(tables(load(Settings, env), full=True))
    env = stack_env(Path(tempfile.mkdtemp(prefix="kz-k3-", dir="/tmp")))
    env.update(KIZUNA_KAFKA_VERSION="3.9.1", KIZUNA_SCHEMA_REGISTRY_URL="none")
    try:
        kizuna(env, "up", timeout=900)  # fetches Kafka 3.9's jars on first use
        broker_log = (Path(env["KIZUNA_HOME"]) / "logs" / "kafka.log").read_text()
        assert "Kafka version: 3.9.1" in broker_log
        kizuna(env, "import", str(events), "--until", "2026-01-20T00:00:00Z")
        kizuna(env, "wait", "--timeout", "300")
        results.append(tables(load(Settings, env), full=True))
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(env["KIZUNA_HOME"], ignore_errors=True)
    assert results[0]["sessions"] and results[0] == results[1]
