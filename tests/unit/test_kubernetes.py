"""The Kubernetes manifests (deploy/k8s/base): accepted by the Kubernetes API's schemas, and
shaped the way a cluster needs them. `make deploy-check` also renders the production overlay
with kustomize and validates the result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from services.cli import STAGES
from services.common.settings import ALL_SETTINGS, describe, load

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
KUBERNETES = "1.31.0"  # the oldest version the manifests are checked against
STATEFUL = {"sessionizer", "engagement_scorer", "alerting"}


def documents() -> list[dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"]
            for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def workloads(docs: list[dict]) -> dict[str, dict]:
    """stage -> its Deployment or StatefulSet (by the stage its container runs)."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            (container,) = d["spec"]["template"]["spec"]["containers"]
            out[container["args"][0]] = d
    return out


def test_every_manifest_is_accepted_by_the_kubernetes_api_schemas() -> None:
    import kubernetes_validate

    for d in documents():
        kubernetes_validate.validate(d, KUBERNETES, strict=True)


def test_every_stage_runs_with_probes_limits_and_a_disruption_budget() -> None:
    docs = documents()
    stages = workloads(docs)
    assert set(stages) == set(STAGES)
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for stage, d in stages.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] >= 30, stage  # a batch finishes first
        (container,) = pod["containers"]
        port = container["ports"][0]["containerPort"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], stage
        assert resources["limits"]["memory"] == resources["requests"]["memory"], stage
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(b["spec"]["selector"]["matchLabels"].items() <= labels.items()
                   and b["spec"].get("maxUnavailable") == 1 for b in budgets), stage


def test_stateful_stages_keep_their_state_on_a_volume_of_their_own() -> None:
    docs = documents()
    settings = next(d for d in docs if d["metadata"]["name"] == "kizuna-settings")["data"]
    for stage, d in workloads(docs).items():
        mounts = {m["name"]: m["mountPath"]
                  for m in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["state"] == "/var/lib/kizuna"  # KIZUNA_HOME in the image
        if stage not in STATEFUL:
            continue
        assert d["kind"] == "StatefulSet" and d["spec"]["podManagementPolicy"] == "Parallel"
        assert [c["metadata"]["name"] for c in d["spec"]["volumeClaimTemplates"]] == ["state"]
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["KIZUNA_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        store = f"KIZUNA_{stage.upper()}_STORE"
        assert settings[store] == "rocksdb://", store


def test_no_secret_in_a_config_map_and_secrets_only_as_files() -> None:
    docs = documents()
    secret_settings = {f.metadata["env"] for cls in ALL_SETTINGS for f in dataclasses.fields(cls)
                       if f.init and f.metadata.get("secret")}
    known = {row[0] for cls in ALL_SETTINGS for row in describe(load(cls, {}))}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kizuna-settings":
            for key, value in d["data"].items():
                assert key not in secret_settings, f"{key}: a secret in a ConfigMap"
                assert key in known or key.removesuffix("_FILE") in secret_settings, key
                if key.removesuffix("_FILE") in secret_settings:  # a Secret's file
                    assert value.startswith("/etc/kizuna/secrets/"), key
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            for container in d["spec"]["template"]["spec"]["containers"]:
                sources = container.get("envFrom", []) + container.get("env", [])
                assert not any("secretRef" in s or "secretKeyRef" in s.get("valueFrom", {})
                               for s in sources), d["metadata"]["name"]
    weights = next(d for d in docs if d["metadata"]["name"] == "kizuna-weights")
    assert weights["data"]["weights.yaml"] == (ROOT / "services/domain/weights.yaml").read_text()


@pytest.mark.parametrize("mutation", ["readiness", "limits", "budget", "volume"])
def test_the_checks_fail_when_a_safeguard_is_removed(mutation, monkeypatch) -> None:
    docs = documents()
    sessionizer = workloads(docs)["sessionizer"]
    container = sessionizer["spec"]["template"]["spec"]["containers"][0]
    if mutation == "readiness":
        del container["readinessProbe"]
    elif mutation == "limits":
        del container["resources"]["limits"]
    elif mutation == "budget":
        docs = [d for d in docs if not (d["kind"] == "PodDisruptionBudget"
                                        and d["metadata"]["name"] == "kizuna-sessionizer")]
    else:
        del sessionizer["spec"]["volumeClaimTemplates"]
    monkeypatch.setitem(globals(), "documents", lambda: docs)
    check = test_every_stage_runs_with_probes_limits_and_a_disruption_budget
    if mutation == "volume":
        check = test_stateful_stages_keep_their_state_on_a_volume_of_their_own
    with pytest.raises((AssertionError, KeyError)):
        check()
