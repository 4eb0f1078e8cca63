"""The local Apache Kafka broker: jars from Maven Central, one KRaft broker+controller.

Nothing here is used in production, where the stages talk to a real cluster.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from services.common import resources
from services.common.errors import StackError
from services.common.settings import Settings

LOCAL_DIR = resources.directory("services.localkafka")
#: Kafka 4.x: log4j2; 3.x: reload4j (log4j 1 API). Each line its own pom and logging config.
POMS = {"4": LOCAL_DIR / "pom.xml", "3": LOCAL_DIR / "pom-kafka3.xml"}
LOGGING = {"4": f"-Dlog4j2.configurationFile={LOCAL_DIR / 'log4j2.properties'}",
           "3": f"-Dlog4j.configuration=file:{LOCAL_DIR / 'log4j.properties'}"}
#: The version deploy/ ships (the compose file's image), the local broker's default.
KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)<", POMS["4"].read_text())[1]


def java_command(version: str = KAFKA_VERSION) -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError(
            "Java 17+ not found (no `java` on PATH or in JAVA_HOME): install OpenJDK 17, e.g. "
            "`apt-get install openjdk-17-jre-headless`, or use deploy/docker-compose.yml")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if match and int(match[1]) < 17:
        raise StackError(f"Java {match[1]} found at {java}; Kafka {version} here needs 17+")
    return java


def jars_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"


def ensure_jars(settings: Settings) -> Path:
    """Fetch the broker's jars with Maven once per version; later calls reuse the cache."""
    version = settings.kafka_version
    return maven_fetch(
        jars_dir(settings), ["-f", str(POMS[version[0]]), "dependency:copy-dependencies",
                             "-DincludeScope=runtime", f"-Dkafka.version={version}"],
        f"Kafka {version} jars",
        "Kafka's jars once: install it (`apt-get install maven`) or use "
        "deploy/docker-compose.yml")


def maven_fetch(target: Path, goal: list[str], what: str, needed_for: str,
                unpack: Callable[[Path], None] | None = None) -> Path:
    """`target`, filled once by Maven (`mvn <goal> -DoutputDirectory=...`) in a staging
    directory beside it, then `unpack(staging)`, then renamed into place: a stack that finds
    `target/.complete` reuses it, and two stacks fetching at once leave one complete copy.
    `needed_for` ends the error when Maven is missing ("it fetches ...").
    """
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(f"Maven not found on PATH; it fetches {needed_for}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=target.parent))
    try:
        result = subprocess.run([mvn, "-B", "-q", *goal, f"-DoutputDirectory={staging}"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            errors = [ln for ln in result.stdout.splitlines() if "ERROR" in ln] or ["(no output)"]
            raise StackError(
                f"fetching {what} with Maven failed: {errors[0].strip()}; "
                "check access to Maven Central and retry `kizuna up`")
        if unpack is not None:
            unpack(staging)
        (staging / ".complete").touch()
        staging.rename(target)
    except OSError:
        if not (target / ".complete").exists():  # not another stack finishing the same fetch
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def kafka_dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def node_dir(settings: Settings, node: int) -> Path:
    """A node's directory (one node: the stack's kafka/ itself, as before 0.10)."""
    return kafka_dir(settings) if settings.kafka_brokers == 1 else \
        kafka_dir(settings) / f"node-{node}"


def server_properties(settings: Settings, node: int = 1) -> str:
    """Node `node` (1-based) of the local cluster: broker and KRaft controller in one process,
    every node a voter, replication of Kafka's own topics as the cluster allows."""
    host = "127.0.0.1"
    n = settings.kafka_brokers
    port = settings.local_kafka_ports[node - 1]
    controller = settings.local_controller_ports[node - 1]
    voters = ",".join(f"{i + 1}@{host}:{p}" for i, p in enumerate(settings.local_controller_ports))
    replicas = min(3, n)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node_dir(settings, node) / "data"),
        "num.partitions": str(settings.partitions),
        # Topics are code (services/common/topics.py); a typo must not create a topic.
        "auto.create.topics.enable": "false",
        "default.replication.factor": str(replicas),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min(2, replicas)),
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64, as Kafka's Uuid.randomUuid()."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def prepare(settings: Settings, node: int = 1) -> list[str]:
    """Write node `node`'s config, format its storage on first use; its command line."""
    version = settings.kafka_version
    java = java_command(version)
    libs = ensure_jars(settings)
    logging = LOGGING[version[0]]
    base = node_dir(settings, node)
    (base / "data").mkdir(parents=True, exist_ok=True)
    props = base / "server.properties"
    props.write_text(server_properties(settings, node))
    if not (base / "data" / "meta.properties").exists():
        cluster_id_file = kafka_dir(settings) / "cluster.id"  # one id for every node
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        cmd = [java, "-cp", f"{libs}/*", logging, "kafka.tools.StorageTool", "format", "-t",
               cluster_id_file.read_text().strip(), "-c", str(props), "--ignore-formatted"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise StackError(f"formatting Kafka storage in {base / 'data'} failed: {last[0]}")
    return [java, f"-Xmx{settings.kafka_heap}", "-Xms128m", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", logging, "-cp", f"{libs}/*", "kafka.Kafka", str(props)]
