"""deploy/ stays valid: every service, module, file and target it names exists."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.cli import build_parser
from services.localstack.apicurio import VERSION as APICURIO_VERSION
from services.localstack.kafka import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OFFICIAL_IMAGES = ("apache/kafka", "clickhouse/clickhouse-server", "prom/prometheus",
                   "grafana/grafana", "apicurio/apicurio-registry")


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
            entry = svc.get("entrypoint") or ["kizuna", *svc["command"]]
            argv = shlex.split(entry[-1]) if entry[0] == "sh" else entry
            text = " ".join(argv)
            for module in re.findall(r"-m (services\.[a-z_.]+)", text):
                path = ROOT / module.replace(".", "/")
                assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), \
                    f"{name}: module {module} does not exist"
            for sub in re.findall(r"(?:^|&& )kizuna ([a-z_]+)", text):
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
    # the registry the local stack runs, and the stages point at it
    assert services["schema-registry"]["image"].endswith(f":{APICURIO_VERSION}")
    assert services["warehouse"]["environment"]["KIZUNA_SCHEMA_REGISTRY_URL"].startswith(
        "http://schema-registry:8080/")


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
        # The daily rollups are small and recomputed from the Distributed tables by every
        # node: they stay plain per-node tables on a cluster.
        single.update({t: v for t, v in _storage_tables(sql).items()
                       if not t.startswith("daily_")})
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


FAUST_STAGES = ("sessionizer", "engagement_scorer", "alerting")


def exposed_metrics() -> set[str]:
    """Every series name the services expose: ours (prometheus-client) and faust's sensor's
    (prefixed kizuna_<stage>_faust_), with prometheus-client's suffixes."""
    kinds: dict[str, str] = {}
    for path in (ROOT / "services").rglob("*.py"):
        for kind, name in re.findall(r"\b(\w*Counter|Gauge|Histogram)\(\s*\"(kizuna_\w+)\"",
                                     path.read_text()):
            kinds[name] = kind
    import faust.sensors.prometheus as sensor

    source = Path(sensor.__file__).read_text()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*f\"\{app_name\}_(\w+)\"",
                                 source):
        for stage in FAUST_STAGES:
            kinds[f"kizuna_{stage}_faust_{name}"] = kind
    exposed = set()
    for name, kind in kinds.items():
        if kind.endswith("Counter"):
            exposed.add(f"{name}_total")
        elif kind == "Histogram":
            exposed.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
        else:
            exposed.add(name)
    return exposed


def test_alert_rules_are_complete_and_name_only_real_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]  # resolved beside prometheus.yml
    (group,) = rules["groups"]
    exposed = exposed_metrics()
    names = {r["alert"] for r in group["rules"]}
    for wanted in ("LagGrowing", "DeadLetterRate", "NoInput", "SinkFailing", "AlertRateAnomaly"):
        assert any(wanted in n for n in names), wanted
    for rule in group["rules"]:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["for"]
        used = set(re.findall(r"\bkizuna_\w+", rule["expr"]))
        assert used and used <= exposed, (rule["alert"], used - exposed)


def test_the_grafana_dashboard_is_provisioned_and_names_only_real_metrics():
    service = compose()["services"]["grafana"]
    mounts = " ".join(service["volumes"])
    assert "./grafana/provisioning:/etc/grafana/provisioning" in mounts
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/kizuna.yml").read_text())
    assert provider["providers"][0]["options"]["path"] in mounts
    dashboard = json.loads((DEPLOY / "grafana/dashboards/kizuna-overview.json").read_text())
    exposed = exposed_metrics()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("flow per stage", "lag", "latency", "rejected", "alerts"):
        assert wanted in titles, wanted
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\bkizuna_\w+", target["expr"]))
            assert used and used <= exposed, (panel["title"], used - exposed)


def podman_compose_config(name: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podman_compose", "-f", name, "config"],
                          cwd=DEPLOY, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("KIZUNA_")} | env)


@pytest.mark.parametrize("name", ["docker-compose.yml", "compose.local.yml"])
def test_podman_compose_accepts_each_compose_file_and_pins_its_images(name: str) -> None:
    result = podman_compose_config(name, KIZUNA_WRITE_KEYS="k=web:web", KIZUNA_PII_SALT="s")
    assert result.returncode == 0, result.stderr[-2000:]
    images = [s["image"] for s in yaml.safe_load(result.stdout)["services"].values()
              if "image" in s]
    assert images and all(re.fullmatch(r"[\w./-]+:[\w.-]+", i) and not i.endswith(":latest")
                          for i in images), images


def test_compose_without_write_keys_names_the_setting() -> None:
    result = podman_compose_config("docker-compose.yml")
    assert result.returncode != 0 and "KIZUNA_WRITE_KEYS" in result.stderr
