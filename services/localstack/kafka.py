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

from services.common.errors import StackError
from services.common.settings import Settings

LOCAL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "local"
POM = LOCAL_DIR / "pom.xml"
LOG4J = LOCAL_DIR / "log4j.properties"
KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)<", POM.read_text())[1]


def java_command() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError(
            "Java 17+ not found (no `java` on PATH or in JAVA_HOME): install OpenJDK 17, e.g. "
            "`apt-get install openjdk-17-jre-headless`, or use deploy/docker-compose.yml")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if match and int(match[1]) < 17:
        raise StackError(f"Java {match[1]} found at {java}; Kafka {KAFKA_VERSION} here needs 17+")
    return java


def jars_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(settings: Settings) -> Path:
    """Fetch the broker's jars with Maven once; later calls reuse the cache."""
    return maven_fetch(
        jars_dir(settings), ["-f", str(POM), "dependency:copy-dependencies",
                             "-DincludeScope=runtime"],
        f"Kafka {KAFKA_VERSION} jars",
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


def server_properties(settings: Settings) -> str:
    host = "127.0.0.1"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{settings.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},"
                     f"CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(kafka_dir(settings) / "data"),
        "num.partitions": str(settings.partitions),
        # Topics are code (services/common/topics.py); a typo must not create a topic.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
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


def prepare(settings: Settings) -> list[str]:
    """Write the config, format storage on first use; return the broker's command line."""
    java = java_command()
    libs = ensure_jars(settings)
    base = kafka_dir(settings)
    (base / "data").mkdir(parents=True, exist_ok=True)
    props = base / "server.properties"
    props.write_text(server_properties(settings))
    if not (base / "data" / "meta.properties").exists():
        cluster_id_file = base / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        cmd = [java, "-cp", f"{libs}/*", f"-Dlog4j.configuration=file:{LOG4J}",
               "kafka.tools.StorageTool", "format", "-t", cluster_id_file.read_text().strip(),
               "-c", str(props), "--ignore-formatted"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise StackError(f"formatting Kafka storage in {base / 'data'} failed: {last[0]}")
    return [java, f"-Xmx{settings.kafka_heap}", "-Xms128m", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{LOG4J}",
            "-cp", f"{libs}/*", "kafka.Kafka", str(props)]
