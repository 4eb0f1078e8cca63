"""deploy/ stays valid: every service, module, file and target it names exists."""

import re
import shlex
from pathlib import Path

import yaml

from services.cli import build_parser
from services.localstack.kafka import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OFFICIAL_IMAGES = ("apache/kafka", "clickhouse/clickhouse-server", "prom/prometheus",
                   "grafana/grafana")


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def kizuna_subcommands() -> set[str]:
    parser = build_parser()
    return set(parser._subparsers._group_actions[0].choices)


def test_every_compose_service_exists():
    services = compose()["services"]
    for name, svc in services.items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"].replace("..", ".") /
                    svc["build"]["dockerfile"]).exists(), name
            entry = svc["entrypoint"]
            argv = shlex.split(entry[-1]) if entry[0] == "sh" else entry
            text = " ".join(argv)
            for module in re.findall(r"-m (services\.[a-z_.]+)", text):
                path = ROOT / module.replace(".", "/")
                assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), \
                    f"{name}: module {module} does not exist"
            for sub in re.findall(r"(?:^|&& )kizuna ([a-z]+)", text):
                assert sub in kizuna_subcommands(), f"{name}: no `kizuna {sub}` command"
        else:
            assert svc["image"].startswith(OFFICIAL_IMAGES), f"{name}: {svc['image']}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_prometheus_scrapes_compose_services_on_their_ports():
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert host in services, f"scrape target {target} is not a compose service"
        assert any(p.split(":")[-1] == port for p in services[host].get("ports", [])), target


def test_dockerfile_copies_what_exists_and_runs_as_non_root():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), src
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)


def _storage_tables(sql: str) -> dict[str, tuple[str, str]]:
    """table -> (engine kind, ORDER BY) of the MergeTree tables a migration creates."""
    out = {}
    for m in re.finditer(r"CREATE TABLE IF NOT EXISTS \{store\}\.(\w+)(.*?);", sql, re.S):
        engine = re.search(r"ENGINE = (\w+)", m[2])
        order = re.search(r"ORDER BY ([^\n;]+)", m[2])
        if engine and order and "MergeTree" in engine[1]:
            out[m[1]] = (engine[1], order[1].strip())
    return out


def test_the_cluster_variant_follows_the_single_node_tables():
    single: dict[str, tuple[str, str]] = {}
    for path in sorted((ROOT / "deploy/clickhouse/migrations").glob("*.sql")):
        sql = path.read_text()
        single.update(_storage_tables(sql))
        for dropped in re.findall(r"DROP TABLE IF EXISTS \{store\}\.(\w+)", sql):
            single.pop(dropped, None)
    cluster_sql = (ROOT / "deploy/clickhouse/cluster/cluster.sql").read_text()
    cluster = _storage_tables(cluster_sql.replace(" ON CLUSTER '{cluster}'", ""))
    assert set(single) == {"touchpoints", "sessions_by_id", "customer_profiles", "alerts",
                           "dead_letters"}
    for table, (engine, order) in single.items():
        assert cluster[f"{table}_local"] == (f"Replicated{engine}", order), table
        distributed = re.search(
            rf"CREATE TABLE IF NOT EXISTS \{{store\}}\.{table} ON CLUSTER '\{{cluster\}}'\s+"
            rf"AS \{{store\}}\.{table}_local\s+ENGINE = Distributed\('\{{cluster\}}', \{{store\}}, "
            rf"{table}_local, cityHash64\(", cluster_sql)
        assert distributed, table
