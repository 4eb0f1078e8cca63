"""`make demo` / `kizuna demo`: the whole pipeline on generated customers, with a report.

Starts the local stack, generates customers (`services/generator`), imports them through the
collector's validation in event time, waits until every stage has caught up, then reports
from ClickHouse (and the generator's ground truth) as text and as an HTML page with charts.
The stack keeps running for `kizuna query`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.common.queries import query_rows
from services.common.settings import IngestSettings, Settings, load
from services.generator.cli import truth_path, write
from services.ingest.importer import import_file
from services.localstack import stack
from services.localstack.pipeline import wait_caught_up
from services.report.pages import configured_weights, sql, write_pages

DAY_MS = 24 * 3600 * 1000


def run(settings: Settings, *, customers: int, days: int, seed: int, out_dir: Path,
        start: str = "2026-01-05T00:00:00Z") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("1/4 starting the local stack (Kafka, ClickHouse, every stage)...", flush=True)
    stack.up(settings)
    print(f"2/4 generating {customers} customers over {days} days (seed {seed})...", flush=True)
    events_path = out_dir / "events.jsonl"
    generated = write(customers, days, seed, events_path, start)
    end_ms = max(e["occurred_at"] for e in generated.events
                 if isinstance(e.get("occurred_at"), int))
    print("3/4 importing in event time, then waiting for every stage...", flush=True)
    started = time.monotonic()
    imported = import_file(load(IngestSettings), events_path, "jsonl", None,
                           until_ms=end_ms + DAY_MS)
    wait_caught_up(settings, timeout=1800)
    elapsed = time.monotonic() - started
    print("4/4 reporting from ClickHouse", flush=True)
    truth = json.loads(truth_path(events_path).read_text())
    report = collect(settings, truth, imported.accepted + sum(imported.rejected.values()),
                     elapsed)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    text = render_text(report)
    (out_dir / "report.txt").write_text(text)
    pages = write_pages(out_dir, lambda sql, params: query_rows(settings, sql, params),
                        configured_weights(), report, quality_rows(report),
                        sampled_customers(settings))
    print(text)
    print(f"HTML report: {(out_dir / 'report.html').resolve()}, with {len(pages)} customer "
          f"pages ({out_dir / 'customers'})")
    print("The stack is still running. Next:\n"
          "  .venv/bin/kizuna query \"SELECT tier, count() FROM kizuna.customer_profiles "
          "GROUP BY tier\"\n"
          f"  .venv/bin/kizuna profile {generated.customers[0].customer_id}\n"
          "  .venv/bin/kizuna query -f queries/cohort_retention.sql   (the query pack: "
          "queries/)\n"
          "  .venv/bin/kizuna alerts tail --from-beginning --idle-timeout 5\n"
          "  .venv/bin/kizuna down")
    return report


def rows(settings: Settings, sql: str) -> list[dict]:
    return query_rows(settings, sql)


def collect(settings: Settings, truth: dict, sent: int, elapsed: float) -> dict:
    (totals,) = rows(settings, "SELECT count() AS touchpoints, uniqExact(customer_id) AS "
                               "customers FROM kizuna.touchpoints")
    (sessions,) = rows(settings, """
        SELECT count() AS sessions, round(avg(event_count), 1) AS events_per_session,
               round(avg(dateDiff('second', started_at, ended_at)) / 60, 1) AS minutes,
               round(countIf(length(channels) > 1) / count(), 3) AS cross_channel_share,
               countIf(customer_id IS NULL) AS anonymous
        FROM kizuna.sessions""")
    funnel_steps = ["product_view", "cart_add", "checkout_start", "purchase"]
    funnel = {r["event_type"]: r["customers"] for r in rows(settings, f"""
        SELECT event_type, uniqExact(ifNull(customer_id, anonymous_id)) AS customers
        FROM kizuna.touchpoints WHERE event_type IN {tuple(funnel_steps)}
        GROUP BY event_type""")}
    # The churn-risk alerts still open, most severe first, then the least engaged.
    at_risk = rows(settings, sql("report/most_at_risk"))
    carts = rows(settings, """
        SELECT uniqExact(ifNull(cart_id, '')) AS carts FROM kizuna.touchpoints
        WHERE event_type IN ('cart_add', 'cart_view', 'checkout_start')""")[0]["carts"]
    alerts = rows(settings, "SELECT customer_id, cart_id, status FROM kizuna.alerts "
                            "WHERE alert_type = 'cart_abandonment'")
    churn = rows(settings, "SELECT customer_id, status, reasons, "
                           "toUnixTimestamp64Milli(detected_at) AS detected_ms "
                           "FROM kizuna.alerts WHERE alert_type = 'churn_risk'")
    return {
        "cart_alerts": cart_alert_quality(alerts, truth["abandoned_carts"]),
        "churn_alerts": churn_alert_quality(churn, truth),
        "alerts_by_day": rows(settings, "SELECT toString(toDate(detected_at)) AS day, "
                                        "alert_type, count() AS n FROM kizuna.alerts "
                                        "GROUP BY day, alert_type ORDER BY day, alert_type"),
        "sent": sent, "elapsed_s": round(elapsed, 1),
        "events_per_s": round(sent / elapsed) if elapsed else None,
        "touchpoints": totals["touchpoints"], "customers": totals["customers"],
        "by_channel": rows(settings, "SELECT channel, count() AS n FROM kizuna.touchpoints "
                                     "GROUP BY channel ORDER BY n DESC"),
        "rejected": rows(settings, "SELECT stage, reason, count() AS n FROM "
                                   "kizuna.dead_letters GROUP BY stage, reason ORDER BY n DESC"),
        "sessions": sessions,
        "tiers": rows(settings, "SELECT tier, count() AS n, round(avg(engagement_score), 1) "
                                "AS avg_score FROM kizuna.customer_profiles GROUP BY tier "
                                "ORDER BY avg_score DESC"),
        "segments": rows(settings, """
            SELECT rfm_segment, count() AS customers, round(sum(total_revenue)) AS revenue,
                   round(sum(total_revenue) / (SELECT sum(total_revenue)
                                              FROM kizuna.customer_profiles), 3) AS share
            FROM kizuna.customer_profiles GROUP BY rfm_segment ORDER BY revenue DESC"""),
        "top20_revenue_share": rows(settings, """
            SELECT round(sumIf(total_revenue, top_revenue_20) / sum(total_revenue), 3) AS share
            FROM kizuna.customer_profiles""")[0]["share"],
        "scores": [r["s"] for r in rows(settings, "SELECT engagement_score AS s FROM "
                                                  "kizuna.customer_profiles")],
        "funnel": [(step, funnel.get(step, 0)) for step in funnel_steps],
        "at_risk": at_risk,
        "carts": carts,
        "abandoned_carts_truth": len(truth["abandoned_carts"]),
        "churners_truth": len(truth["churners"]),
    }


def sampled_customers(settings: Settings, n: int = 3) -> list[str]:
    """A few customers to show besides the most at risk: the most engaged, the best buyer,
    and one from the middle of the scores (deterministic)."""
    return [r["customer_id"] for r in query_rows(settings, f"""
        SELECT customer_id FROM
        (
            (SELECT customer_id, 1 AS k FROM kizuna.customer_profiles
             ORDER BY engagement_score DESC, customer_id LIMIT 1)
            UNION ALL
            (SELECT customer_id, 2 AS k FROM kizuna.customer_profiles
             ORDER BY total_revenue DESC, customer_id LIMIT 1)
            UNION ALL
            (SELECT customer_id, 3 AS k FROM kizuna.customer_profiles
             ORDER BY engagement_score, customer_id
             LIMIT 1 OFFSET (SELECT intDiv(count(), 2) FROM kizuna.customer_profiles))
        )
        ORDER BY k LIMIT {n}""")]


def quality_rows(r: dict) -> list[dict]:
    """The alerts against the generator's ground truth, as the report's table."""
    cart, churn = r["cart_alerts"], r["churn_alerts"]
    return [
        {"alerts": "cart abandonment", "sent": cart["alerts"], "resolved": cart["resolved"],
         "precision": cart["precision"], "recall": cart["recall"],
         "measured as": "carts the contract's rule abandons (the 24 h cap bounds recall: "
                        f"{cart['recall_customers']} of customers)"},
        {"alerts": "churn risk", "sent": churn["alerts"], "resolved": churn["resolved"],
         "precision": churn["precision"], "recall": churn["recall_churners"],
         "measured as": "customers at risk; churners alerted (median "
                        f"{churn['median_lead_days']} days after their churn day)"},
    ]


def cart_alert_quality(alerts: list[dict], truth: list[dict]) -> dict:
    """Alerts against the generator's abandoned carts. The 24 h cap bounds recall: a customer
    with several abandoned carts in a day gets one alert."""
    def key(customer: str, cart: str) -> tuple[str, str]:
        return customer, "implicit" if cart.startswith("implicit") else cart

    alerted = {key(a["customer_id"], a["cart_id"]) for a in alerts}
    abandoned = {key(c["customer_id"], c["cart_id"]) for c in truth}
    hits = len(alerted & abandoned)
    capped_customers = {c for c, _ in abandoned} & {c for c, _ in alerted}
    return {
        "alerts": len(alerts), "resolved": sum(a["status"] == "resolved" for a in alerts),
        "precision": round(hits / len(alerted), 3) if alerted else None,
        "recall": round(hits / len(abandoned), 3) if abandoned else None,
        "recall_customers": round(len(capped_customers) / len({c for c, _ in abandoned}), 3)
        if abandoned else None,
    }


def churn_alert_quality(alerts: list[dict], truth: dict) -> dict:
    """Churn alerts against the generator's truth. A customer is at risk when the generator
    made them a churner (from their churn day) or had them give an explicit signal
    (unsubscribe, complaint, NPS 0-6, abandoned credit application...). Precision: alerted
    customers who were at risk; recall: churners alerted on or after their churn day, and
    customers with an explicit signal alerted; lead: days from the churn day to the first
    alert."""
    churners = truth["churners"]
    risky = set(churners) | set(truth.get("explicit_risk", {}))
    alerted = {a["customer_id"] for a in alerts}
    first: dict[str, int] = {}
    for a in alerts:
        c = a["customer_id"]
        if c in churners and a["detected_ms"] >= churners[c] - 86_400_000:
            first[c] = min(first.get(c, a["detected_ms"]), a["detected_ms"])
    lead = sorted((t - churners[c]) / 86_400_000 for c, t in first.items())
    reasons: dict[str, int] = {}
    for a in alerts:
        for reason in a["reasons"]:
            if reason != "purchased_after_alert":
                reasons[reason] = reasons.get(reason, 0) + 1
    explicit = set(truth.get("explicit_risk", {}))
    return {
        "alerts": len(alerts), "resolved": sum(a["status"] == "resolved" for a in alerts),
        "customers": len(alerted),
        "precision": round(len(alerted & risky) / len(alerted), 3) if alerted else None,
        "recall_churners": round(len(first) / len(churners), 3) if churners else None,
        "recall_explicit": round(len(alerted & explicit) / len(explicit), 3)
        if explicit else None,
        "median_lead_days": round(lead[len(lead) // 2], 1) if lead else None,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    }


def render_text(r: dict) -> str:
    lines = [
        "", "Kizuna demo report", "==================",
        f"{r['sent']} events sent, {r['touchpoints']} touchpoints stored for "
        f"{r['customers']} identified customers; end to end {r['elapsed_s']} s "
        f"({r['events_per_s']} events/s, import to ClickHouse)",
        "", "Touchpoints by channel:",
        *(f"  {x['channel']:<8} {x['n']:>9}" for x in r["by_channel"]),
        "", "Rejected (dead-letter table):",
        *(f"  {x['stage']:<12} {x['reason']:<18} {x['n']:>6}" for x in r["rejected"]),
        "", f"Sessions: {r['sessions']['sessions']} ({r['sessions']['events_per_session']} "
        f"events, {r['sessions']['minutes']} min on average; "
        f"{r['sessions']['cross_channel_share']:.0%} cross-channel; "
        f"{r['sessions']['anonymous']} never identified)",
        "", "Engagement tiers:",
        *(f"  {x['tier']:<10} {x['n']:>6} customers, average score {x['avg_score']}"
          for x in r["tiers"]),
        "", "RFM segments (revenue share):",
        *(f"  {x['rfm_segment']:<20} {x['customers']:>6} customers  {x['share']:>6.1%}"
          for x in r["segments"]),
        f"  the top 20% of customers by revenue make {r['top20_revenue_share']:.0%} of it",
        "", "Funnel (distinct profiles):",
        *(f"  {step:<15} {n:>7}" for step, n in r["funnel"]),
        "", "Most at-risk customers (open churn-risk alerts: severity, engagement, reasons):",
        *(f"  {x['customer_id']:<18} severity {x['severity']}  {x['score']:>7} "
          f"{x['tier']:<9} {x['reasons']}" for x in r["at_risk"]),
        "", f"Carts: {r['carts']}; abandoned by the contract's rule (ground truth): "
        f"{r['abandoned_carts_truth']} ({r['abandoned_carts_truth'] / max(r['carts'], 1):.0%})",
        f"Cart alerts: {r['cart_alerts']['alerts']} "
        f"({r['cart_alerts']['resolved']} recovered by a later purchase); against the ground "
        f"truth: precision {r['cart_alerts']['precision']}, recall {r['cart_alerts']['recall']}"
        f" of carts (the 24 h cap sends one a day per customer), "
        f"{r['cart_alerts']['recall_customers']} of customers",
        f"Churn-risk alerts: {r['churn_alerts']['alerts']} for "
        f"{r['churn_alerts']['customers']} customers ({r['churn_alerts']['resolved']} "
        f"resolved by a later purchase); reasons: "
        + ", ".join(f"{k} {v}" for k, v in r["churn_alerts"]["reasons"].items()),
        f"  against the ground truth ({r['churners_truth']} churners): precision "
        f"{r['churn_alerts']['precision']}, recall {r['churn_alerts']['recall_churners']} "
        f"of churners (median {r['churn_alerts']['median_lead_days']} days after the churn "
        f"day), {r['churn_alerts']['recall_explicit']} of customers who gave an explicit "
        "signal", "",
    ]
    return "\n".join(lines)
