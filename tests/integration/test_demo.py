"""`kizuna demo` end to end on its own stack: the report agrees with ClickHouse and the truth."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from services.common.clickhouse import query_rows
from services.common.settings import Settings, load
from services.generator.cli import truth_path
from services.ingest.validation import Enrichment, Rejection, validate
from tests.conftest import kizuna, stack_env

pytestmark = pytest.mark.integration


def test_a_small_demo_reports_what_clickhouse_and_the_truth_say(tmp_path) -> None:
    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    env = stack_env(home)
    out = tmp_path / "demo"
    try:
        result = kizuna(env, "demo", "--customers", "40", "--days", "4", "--seed", "3",
                        "--out", str(out), timeout=600)
        assert "Kizuna demo report" in result.stdout and "kizuna down" in result.stdout
        report = json.loads((out / "report.json").read_text())
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        truth = json.loads(truth_path(out / "events.jsonl").read_text())
        enrich = Enrichment("demo", 2**62)
        valid = [e for e in events if not isinstance(validate(e, enrich), Rejection)]

        assert report["sent"] == len(events)
        assert report["touchpoints"] == len(valid)
        rejected = sum(r["n"] for r in report["rejected"] if r["stage"] == "ingest")
        assert rejected == len(events) - len(valid) > 0
        assert not [r for r in report["rejected"] if r["stage"] == "sessionizer"]
        settings = load(Settings, env)
        (counts,) = query_rows(settings, "SELECT (SELECT count() FROM kizuna.touchpoints) AS t, "
                                         "(SELECT count() FROM kizuna.sessions) AS s, "
                                         "(SELECT count() FROM kizuna.customer_profiles) AS p")
        assert (counts["t"], counts["s"]) == (report["touchpoints"],
                                              report["sessions"]["sessions"])
        identified = {e["customer_id"] for e in valid if e.get("customer_id")}
        assert counts["p"] == len(identified) == report["customers"]
        assert sum(x["n"] for x in report["tiers"]) == len(identified)
        assert report["abandoned_carts_truth"] == len(truth["abandoned_carts"])
        funnel = dict(report["funnel"])
        assert funnel["product_view"] >= funnel["cart_add"] >= funnel["purchase"] > 0
        quality = report["cart_alerts"]
        alerted = query_rows(settings, "SELECT count() AS n FROM kizuna.alerts")[0]["n"]
        churn = report["churn_alerts"]
        assert quality["alerts"] + churn["alerts"] == alerted
        risky = set(truth["churners"]) | set(truth["explicit_risk"])
        assert churn["customers"] > 0 and churn["precision"] is not None
        # every explicit signal in the log raises a churn alert for its customer
        assert churn["recall_explicit"] == 1.0 or not truth["explicit_risk"]
        assert 0 < churn["precision"] <= 1 and risky
        if truth["abandoned_carts"] and quality["alerts"]:
            assert quality["precision"] >= 0.9  # every alert is a cart the rule abandons
        page = (out / "report.html").read_text()
        assert page.count("<svg") >= 6 and "Engagement score distribution" in page
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)
