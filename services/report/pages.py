"""The demo's analytics report and the single customer view, as HTML pages in one folder.

Every chart is a Plotly figure computed from ClickHouse with a query of `queries/` (named
under the chart, so an analyst can run it again with `kizuna query -f`). The folder works
offline: the pages load `plotly.min.js` from beside them (written once, from the plotly
package), and nothing else.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import plotly.io as pio
from plotly.offline import get_plotlyjs

from services.common import resources
from services.common.queries import query_rows
from services.common.settings import EngagementScorerSettings, Settings, load
from services.common.weights_file import load_weights
from services.domain.weights import Weights
from services.report import charts

QUERIES = resources.directory("services.queries")
PLOTLY_JS = "plotly.min.js"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; }
.chart { border: 1px solid #e5e5e5; border-radius: 6px; margin: 0.8em 0 0.2em; }
.query { color: #777; font-size: 0.85em; margin-bottom: 1.2em; }
.query code { background: #f4f4f4; padding: 0 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.3em 0.8em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.facts { display: flex; flex-wrap: wrap; gap: 0.6em 2em; }
.facts div b { display: block; font-size: 1.4em; }
.wide { overflow-x: auto; }
"""

Query = Callable[[str, dict[str, str] | None], list[dict]]


def sql(name: str) -> str:
    return (QUERIES / f"{name}.sql").read_text()


class Page:
    """An HTML page of charts and tables; `html()` gives it whole."""

    def __init__(self, title: str, plotly_path: str | None = PLOTLY_JS) -> None:
        """`plotly_path`: where the page loads plotly.js from; None: inline, in the page."""
        self.title = title
        self.plotly_path = plotly_path
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.charts = 0

    def text(self, markup: str) -> None:
        self.parts.append(markup)

    def heading(self, title: str) -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>")

    def chart(self, figure: object, query: str, chart_id: str) -> None:
        """A figure, and the query it comes from."""
        self.charts += 1
        self.parts.append(pio.to_html(figure, include_plotlyjs=False, full_html=False,
                                      div_id=chart_id, config={"displaylogo": False}))
        self.parts.append(f"<div class='query'>from <code>{html.escape(query)}</code></div>")

    def table(self, rows: list[dict], columns: list[str], table_id: str,
              links: dict[str, Callable[[object], str]] | None = None) -> None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for c in columns:
                value = row.get(c)
                shown = "" if value is None else (
                    ", ".join(map(str, value)) if isinstance(value, list) else str(value))
                markup = html.escape(shown)
                if links and c in links and value is not None:
                    markup = f"<a href='{html.escape(links[c](value))}'>{markup}</a>"
                kind = " class='n'" if isinstance(value, int | float) else ""
                cells.append(f"<td data-column='{html.escape(c)}'{kind}>{markup}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        self.parts.append(f"<div class='wide'><table id='{table_id}'><thead><tr>{head}</tr>"
                          f"</thead><tbody>{''.join(body)}</tbody></table></div>")

    def html(self) -> str:
        return "\n".join([
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>",
            f"<script src='{self.plotly_path}'></script>" if self.plotly_path
            else f"<script>{get_plotlyjs()}</script>", "</head><body>",
            *self.parts, "</body></html>"])


def write_plotly(folder: Path) -> None:
    path = folder / PLOTLY_JS
    if not path.exists():
        path.write_text(get_plotlyjs())


def customer_file(customer_id: str) -> str:
    """A customer page's file name: the id, made safe for a file name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in customer_id)
    return f"customers/{safe}.html"


def report_page(query: Query, weights: Weights, summary: dict, quality: list[dict],
                sampled: list[str]) -> tuple[Page, list[str]]:
    """The analytics report; also the customers it links a page to (the most at-risk first)."""
    page = Page("Kizuna demo report")
    facts = [("events sent", summary["sent"]), ("touchpoints", summary["touchpoints"]),
             ("customers", summary["customers"]), ("sessions", summary["sessions"]["sessions"]),
             ("end to end", f"{summary['elapsed_s']} s"),
             ("events/s", summary["events_per_s"])]
    page.text("<div class='facts' id='facts'>" + "".join(
        f"<div><b>{html.escape(str(v))}</b>{html.escape(k)}</div>" for k, v in facts)
        + "</div>")

    page.heading("Retention")
    page.chart(charts.cohort_heatmap(query(sql("report/cohort_retention_weeks"), None)),
               "queries/report/cohort_retention_weeks.sql", "cohort-retention")
    page.heading("Customers and revenue")
    page.chart(charts.rfm_grid(query(sql("report/rfm_grid"), None)),
               "queries/report/rfm_grid.sql", "rfm-grid")
    pareto_rows = query(sql("report/revenue_pareto"), None)
    top20 = [r for r in pareto_rows if r["top_20"]]
    share = float(top20[-1]["revenue_share"]) if top20 else None
    page.chart(charts.pareto(pareto_rows, share), "queries/report/revenue_pareto.sql",
               "revenue-pareto")
    page.heading("Funnel")
    page.chart(charts.funnel(query(sql("report/funnel_by_channel"), None)),
               "queries/report/funnel_by_channel.sql (click a channel in the legend)",
               "funnel")
    page.heading("Alerts")
    page.chart(charts.alerts_over_time(query(sql("report/alerts_over_time"), None)),
               "queries/report/alerts_over_time.sql", "alerts-over-time")
    page.table(quality, ["alerts", "sent", "resolved", "precision", "recall", "measured as"],
               "alert-quality")
    page.text("<div class='query'>alert quality: the alerts against the generator's ground "
              "truth (<code>out/demo/events.jsonl.truth.json</code>)</div>")
    page.heading("Engagement and channels")
    page.chart(charts.engagement_by_tier(query(sql("report/engagement_by_tier"), None),
                                         weights),
               "queries/report/engagement_by_tier.sql", "engagement-by-tier")
    page.chart(charts.channel_mix(query(sql("report/channel_mix_daily"), None)),
               "queries/report/channel_mix_daily.sql", "channel-mix")

    page.heading("Most at risk: open churn-risk alerts")
    at_risk = query(sql("report/most_at_risk"), None)
    page.table(at_risk, ["customer_id", "severity", "score", "tier", "reasons"], "at-risk",
               links={"customer_id": lambda c: customer_file(str(c))})
    linked = [r["customer_id"] for r in at_risk]
    others = [c for c in sampled if c not in linked]
    page.text("<ul id='customer-pages'>" + "".join(
        f"<li><a href='{html.escape(customer_file(c))}'>{html.escape(c)}</a>"
        f"{' (at risk)' if c in linked else ' (sampled)'}</li>" for c in linked + others)
        + "</ul>")
    return page, linked + others


def customer_page(query: Query, weights: Weights, customer_id: str,
                  in_report: bool = True) -> Page:
    """The single customer view, from ClickHouse only: in the report's folder, or alone."""
    params = {"customer_id": customer_id}
    page = Page(f"Customer {customer_id}", plotly_path=f"../{PLOTLY_JS}" if in_report else None)
    if in_report:
        page.text("<p><a href='../report.html'>back to the report</a></p>")
    (profile,) = query(sql("customer/profile"), params) or [{}]
    touchpoints = query(sql("customer/touchpoints"), params)
    sessions = query(sql("customer/sessions"), params)
    alerts = query(sql("customer/alerts"), params)
    if profile:
        facts = [("engagement score", round(profile["engagement_score"], 2)),
                 ("tier", profile["tier"]),
                 ("RFM segment", profile["rfm_segment"]),
                 ("purchases", profile["purchase_count"]),
                 ("total revenue", profile["total_revenue"]),
                 ("preferred channel", profile["preferred_channel"]),
                 ("as of", profile["as_of"])]
        page.text("<div class='facts' id='facts'>" + "".join(
            f"<div data-fact='{html.escape(k)}'><b>{html.escape(str(v))}</b>"
            f"{html.escape(k)}</div>" for k, v in facts) + "</div>")
    page.heading("Every touchpoint")
    page.chart(charts.timeline(touchpoints, sessions),
               "queries/customer/touchpoints.sql, queries/customer/sessions.sql "
               f"--param customer_id={customer_id}", "timeline")
    page.heading("Engagement")
    page.chart(charts.score_over_time(touchpoints, weights),
               f"queries/customer/touchpoints.sql --param customer_id={customer_id} "
               "with the weights file", "score")
    page.heading("Consent")
    changes = charts.consent_changes(touchpoints)
    page.table(changes, ["at", "event_type", "channel", "reachable"], "consent")
    if not changes:
        page.text("<p>No consent change: reachable on "
                  + html.escape(", ".join(profile.get("reachable_channels") or []) or "-")
                  + ".</p>")
    page.heading("RFM, BTYD inputs and purchase rhythm")
    page.table([profile] if profile else [],
               ["rfm_segment", "top_revenue_20", "frequency", "recency", "T", "monetary_value",
                "median_interpurchase_days", "first_purchase_at", "last_purchase_at",
                "reachable_channels"], "rfm")
    page.text(f"<div class='query'>from <code>queries/customer/profile.sql --param "
              f"customer_id={html.escape(customer_id)}</code></div>")
    page.heading("Alerts")
    page.table(alerts, ["alert_id", "alert_type", "status", "detected_at", "severity",
                        "reasons", "recommended_channel", "recommended_action", "cart_value"],
               "alerts")
    page.text(f"<div class='query'>from <code>queries/customer/alerts.sql --param "
              f"customer_id={html.escape(customer_id)}</code></div>")
    return page


def write_pages(folder: Path, query: Query, weights: Weights, summary: dict,
                quality: list[dict], sampled: list[str]) -> list[str]:
    """report.html and customers/<id>.html under `folder`; the customers given a page."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "customers").mkdir(exist_ok=True)
    write_plotly(folder)
    report, customers = report_page(query, weights, summary, quality, sampled)
    (folder / "report.html").write_text(report.html())

    def write(customer: str) -> None:
        (folder / customer_file(customer)).write_text(
            customer_page(query, weights, customer).html())

    with ThreadPoolExecutor(4) as pool:  # their queries wait on ClickHouse, not on Python
        list(pool.map(write, customers))
    (folder / "pages.json").write_text(json.dumps({"customers": customers}))
    return customers


def customer_page_file(settings: Settings, customer_id: str, path: Path) -> Path:
    """`kizuna profile ID --html FILE`: the customer view as one file, plotly.js inside."""
    def query(text: str, params: dict[str, str] | None) -> list[dict]:
        return query_rows(settings, text, params)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(customer_page(query, configured_weights(), customer_id,
                                  in_report=False).html())
    return path


def configured_weights() -> Weights:
    """The weights the scorer runs with (KIZUNA_WEIGHTS_FILE, else the shipped ones)."""
    configured = load(EngagementScorerSettings).weights_file
    return load_weights(Path(configured) if configured else None)
