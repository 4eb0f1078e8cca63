"""`kizuna demo` end to end on its own stack: the report agrees with ClickHouse and the truth."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from services.common.queries import query_rows
from services.common.settings import Settings, load
from services.generator.cli import truth_path
from services.ingest.validation import Enrichment, Rejection, validate
from tests.conftest import kizuna, stack_env

pytestmark = pytest.mark.integration
QUERIES = Path(__file__).resolve().parents[2] / "queries"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):  # noqa: ANN201
    """A small demo on a stack of its own; the stack keeps running for the tests."""
    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    env = stack_env(home)
    out = tmp_path_factory.mktemp("demo")
    try:
        # across a month's end, so that month-on-month queries have two months
        result = kizuna(env, "demo", "--customers", "40", "--days", "6", "--seed", "3",
                        "--start", "2026-01-28T00:00:00Z", "--out", str(out), timeout=600)
        yield env, out, result
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_a_small_demo_reports_what_clickhouse_and_the_truth_say(demo) -> None:
    env, out, result = demo
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
    check_query_pack(env, valid, report)
    check_rollups(settings)
    pages = json.loads((out / "pages.json").read_text())["customers"]
    at_risk = [r["customer_id"] for r in pack(env, "report/most_at_risk")]
    assert at_risk and pages[:len(at_risk)] == at_risk  # every at-risk one, first
    assert all((out / "customers").glob("*.html"))
    assert len(list((out / "customers").glob("*.html"))) == len(pages) > len(at_risk)


def test_the_report_and_a_customer_page_render_in_a_browser_with_clickhouse_numbers(
        demo) -> None:
    """Headless Chromium opens the report and an at-risk customer's page: every chart draws,
    no console error, no request leaves the folder, and the numbers drawn are the queries'."""
    from tests.integration.browser import Browser

    env, out, _ = demo
    settings = load(Settings, env)
    shots = Path(__file__).resolve().parents[2] / "out"
    with Browser() as browser:
        charts = browser.open(out / "report.html")
        assert set(charts) == {"cohort-retention", "rfm-grid", "revenue-pareto", "funnel",
                               "alerts-over-time", "engagement-by-tier", "channel-mix"}
        assert all(chart["drawn"] for chart in charts.values()), charts
        browser.screenshot(shots / "report.png")
        funnel = {t["name"]: t["y"] for t in charts["funnel"]["traces"]}
        rows = pack(env, "report/funnel_by_channel")
        assert funnel["all"] == [int(r["profiles"]) for r in rows if r["channel"] == "all"]
        assert set(funnel) == {r["channel"] for r in rows}
        (heatmap,) = charts["cohort-retention"]["traces"]
        cells = {(r["cohort"], int(r["weeks_since"])): float(r["share"])
                 for r in pack(env, "report/cohort_retention_weeks")}
        shown = {(y.split(" ")[0], x): z for y, zs in zip(heatmap["y"], heatmap["z"],
                                                         strict=True)
                 for x, z in zip(heatmap["x"], zs, strict=True) if z is not None}
        assert shown == cells
        alerts = {t["name"]: sum(t["y"]) for t in charts["alerts-over-time"]["traces"]}
        sent = query_rows(settings, "SELECT countIf(alert_type = 'cart_abandonment') AS cart, "
                                    "countIf(alert_type = 'cart_abandonment' AND status = "
                                    "'resolved') AS recovered FROM kizuna.alerts WHERE status "
                                    "IN ('open', 'resolved')")[0]
        assert (alerts.get("cart: sent", 0), alerts.get("cart: recovered", 0)) == (
            sent["cart"], sent["recovered"])
        (curve, _, top20) = charts["revenue-pareto"]["traces"]
        share = query_rows(settings, "SELECT sumIf(total_revenue, top_revenue_20) / "
                                     "sum(total_revenue) AS s FROM kizuna.customer_profiles")
        assert abs(top20["y"][0] - share[0]["s"]) < 1e-5 and abs(curve["y"][-1] - 1) < 1e-5
        links = browser.links("#customer-pages a")
        at_risk = pack(env, "report/most_at_risk")
        assert links[:len(at_risk)] == [r["customer_id"] for r in at_risk]

        customer = at_risk[0]["customer_id"]
        page = browser.follow(customer)
        assert set(page) == {"timeline", "score"} and all(c["drawn"] for c in page.values())
        browser.screenshot(shots / "customer.png")
        params = {"customer_id": customer}
        touchpoints = query_rows(settings, (QUERIES / "customer/touchpoints.sql").read_text(),
                                 params)
        lanes = [t for t in page["timeline"]["traces"]
                 if t["name"] not in ("purchases", "sessions")]
        assert sorted(e for t in lanes for e in t["customdata"]) == sorted(
            t["event_id"] for t in touchpoints)
        (profile,) = query_rows(settings, (QUERIES / "customer/profile.sql").read_text(),
                                params)
        (final,) = [t["y"][-1] for t in page["score"]["traces"] if t["name"] == "score"]
        assert abs(final - profile["engagement_score"]) < 1e-3 * max(1, abs(final))
        alerts = query_rows(settings, (QUERIES / "customer/alerts.sql").read_text(), params)
        assert browser.column("#alerts", "alert_id") == [a["alert_id"] for a in alerts]
        assert any(a["alert_type"] == "churn_risk" for a in alerts)
        assert browser.fact("tier") == profile["tier"]
        # the same view for any customer, as one file: plotly.js inside, nothing beside it
        single = out / "single" / "view.html"
        kizuna(env, "profile", customer, "--html", str(single))
        assert [p.name for p in single.parent.iterdir()] == ["view.html"]
        alone = browser.open(single)
        assert set(alone) == {"timeline", "score"} and all(c["drawn"] for c in alone.values())
        assert browser.column("#alerts", "alert_id") == [a["alert_id"] for a in alerts]
    assert browser.errors == [] and browser.outside == []
    # an analyst runs the page's query again, with the customer as a parameter
    again = kizuna(env, "query", "-f", str(QUERIES / "customer/alerts.sql"), "--param",
                   f"customer_id={customer}", "--format", "json").stdout
    assert [json.loads(line)["alert_id"] for line in again.splitlines()] == [
        a["alert_id"] for a in alerts]


def test_live_events_join_the_demo_through_the_collector(demo, tmp_path) -> None:
    env, out, _ = demo
    settings = load(Settings, env)
    (before,) = query_rows(settings, "SELECT count() AS n FROM kizuna.touchpoints")
    # Live: generated events through the collector's HTTP API at a fixed rate, stamped now.
    live = kizuna(env, "generate", "--customers", "200", "--days", "2", "--seed", "9",
                  "--out", str(tmp_path / "live.jsonl"), "--live", "--rate", "150",
                  "--duration", "4").stdout
    summary = re.search(r"sent (\d+) events live in ([\d.]+) s .* (\d+) accepted", live)
    assert summary, live
    sent, seconds, accepted = int(summary[1]), float(summary[2]), int(summary[3])
    assert 0.5 * 150 * 4 <= sent <= 1.2 * 150 * 4 and 3.5 <= seconds <= 8
    assert 0.98 * sent <= accepted <= sent  # the generator's malformed ones are rejected
    kizuna(env, "wait", "--timeout", "120")
    (now,) = query_rows(settings, "SELECT count() AS n, max(occurred_at) AS latest "
                                  "FROM kizuna.touchpoints")
    assert now["n"] == before["n"] + accepted
    assert now["latest"] >= time.strftime("%Y-%m-%d", time.gmtime())


def pack(env: dict, name: str) -> list[dict]:
    out = kizuna(env, "query", "-f", str(QUERIES / f"{name}.sql"), "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines()]


def check_query_pack(env: dict, valid: list[dict], report: dict) -> None:
    """Every query of the pack runs on the demo's data and says what the data says."""
    names = sorted(p.stem for p in QUERIES.glob("*.sql"))
    page = (QUERIES.parent / "docs" / "warehouse.md").read_text()
    assert len(names) >= 9 and all(f"queries/{n}.sql" in page for n in names)
    results = {n: pack(env, n) for n in names}
    assert all(results[n] for n in names), [n for n in names if not results[n]]

    funnel = results["funnel"]
    reaching = [int(r["profiles_reaching"]) for r in funnel]
    assert reaching == sorted(reaching, reverse=True)
    profiles = {e.get("customer_id") or e.get("anonymous_id") for e in valid}
    assert reaching[0] <= len(profiles)

    for row in results["cohort_retention"]:
        weeks = [float(row[f"week_{k}"]) for k in range(1, 5)]
        assert all(0 <= w <= 1 for w in weeks) and int(row["customers"]) > 0
    (churn,) = results["churn_rate_by_month"]
    assert churn["month"] == "2026-01-01" and 0 <= float(churn["churn_rate"]) <= 1

    # NPS from the events themselves: each profile's latest answer in the month
    latest: dict[tuple, tuple] = {}
    for e in valid:
        if e["event_type"] == "nps_response":
            month = _month(e["occurred_at"])
            key = (month, e.get("customer_id") or e.get("anonymous_id"))
            latest[key] = max(latest.get(key, (0, 0)), (e["occurred_at"],
                                                         e["properties"]["score"]))
    for row in results["nps"]:
        scores = [s for (m, _), (_, s) in latest.items() if m == row["month"]]
        promoters = sum(s >= 9 for s in scores)
        detractors = sum(s <= 6 for s in scores)
        assert int(row["responses"]) == len(scores)
        assert float(row["nps"]) == round(100 * (promoters - detractors) / len(scores), 1)

    segments = [r for r in results["rfm_segments"] if r["segment"] != "top 20% by revenue"]
    (top,) = [r for r in results["rfm_segments"] if r["segment"] == "top 20% by revenue"]
    assert abs(sum(float(r["revenue_share"]) for r in segments) - 1) < 0.01
    assert 0.2 <= float(top["revenue_share"]) <= 1
    assert sum(int(r["customers"]) for r in segments) == report["customers"]

    tiers = results["engagement_by_tier"]
    assert sum(int(r["customers"]) for r in tiers) == report["customers"]
    for r in tiers:
        assert float(r["min"]) <= float(r["p25"]) <= float(r["median"]) <= float(r["p75"]) \
            <= float(r["max"])

    outcomes = results["alert_outcomes"]
    assert sum(int(r["alerts"]) for r in outcomes) == \
        report["cart_alerts"]["alerts"] + report["churn_alerts"]["alerts"]
    for r in results["cart_abandonment_by_channel"]:
        assert int(r["recovered"]) <= int(r["abandoned"]) <= int(r["carts"])

    btyd = results["btyd_export"]
    owner: dict[str, str] = {}  # a device's purchases count for the customer it logs in as
    for e in valid:
        if e.get("customer_id") and e.get("anonymous_id"):
            owner.setdefault(e["anonymous_id"], e["customer_id"])
    buyers = {e.get("customer_id") or owner.get(e.get("anonymous_id")) for e in valid
              if e["event_type"] == "purchase"} - {None}
    assert {r["customer_id"] for r in btyd} == buyers
    for r in btyd:
        assert int(r["frequency"]) <= float(r["recency"]) <= float(r["T"])
        assert (float(r["monetary_value"]) == 0) == (int(r["frequency"]) == 0)


def _month(occurred_at: object) -> str:
    import datetime as dt

    ms = occurred_at if isinstance(occurred_at, int) else int(
        dt.datetime.fromisoformat(str(occurred_at).replace("Z", "+00:00")).timestamp() * 1000)
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-01")


def check_rollups(settings: Settings) -> None:
    """The daily rollups (refreshed every 30 s) equal the aggregates of the tables."""
    direct = ("SELECT toString(toDate(event_time)) AS day, channel, event_type, "
              "count() AS events FROM kizuna.touchpoints GROUP BY ALL ORDER BY ALL")
    rollup = ("SELECT toString(day) AS day, channel, event_type, events "
              "FROM kizuna.daily_touchpoints ORDER BY ALL")
    deadline = time.monotonic() + 100
    while query_rows(settings, rollup) != query_rows(settings, direct):
        assert time.monotonic() < deadline, "daily_touchpoints never caught up"
        time.sleep(3)
    alerts = "SELECT alert_type, count() AS n FROM kizuna.alerts GROUP BY ALL ORDER BY ALL"
    rolled = ("SELECT alert_type, sum(alerts) AS n FROM kizuna.daily_alerts "
              "GROUP BY ALL ORDER BY ALL")
    while query_rows(settings, rolled) != query_rows(settings, alerts):
        assert time.monotonic() < deadline, "daily_alerts never caught up"
        time.sleep(3)
    funnel = query_rows(settings, "SELECT * FROM kizuna.daily_funnel ORDER BY day")
    assert funnel and all(int(r["viewed"]) >= int(r["added_to_cart"]) for r in funnel)
