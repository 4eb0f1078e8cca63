"""The report's pure parts: query parameters, the charts' numbers, the customer view's score."""

from __future__ import annotations

import datetime as dt

import pytest

from services.common.clickhouse import QueryError
from services.common.queries import bind
from services.common.weights_file import load_weights
from services.domain.engagement import apply, new_state, snapshot
from services.report import charts
from services.report.pages import Page, customer_file

W = load_weights()
T0 = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)


def at(hours: float) -> str:
    """An instant as ClickHouse's JSON gives a DateTime64."""
    return (T0 + dt.timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S.000")


def tp(i: int, hours: float, kind: str, channel: str = "web",
       properties: dict | None = None) -> dict:
    return {"event_id": f"e{i}", "event_type": kind, "channel": channel,
            "event_time": at(hours), "properties": properties or {}, "value": None}


def test_parameters_are_bound_as_literals_and_checked() -> None:
    sql = "SELECT * FROM t WHERE c = {customer_id:String} LIMIT {n:UInt32}"
    assert bind(sql, {"customer_id": "o'brien\\x", "n": "5"}) == \
        "SELECT * FROM t WHERE c = 'o\\'brien\\\\x' LIMIT 5"
    with pytest.raises(QueryError, match="needs a value for {customer_id:String}"):
        bind(sql, {"n": "5"})
    with pytest.raises(QueryError, match="not a UInt32"):
        bind(sql, {"customer_id": "c", "n": "5; DROP TABLE t"})


def test_the_score_drawn_ends_at_the_scorers_score() -> None:
    touches = [tp(1, 0, "product_view"), tp(2, 3, "cart_add"), tp(3, 30, "email_open", "email"),
               tp(4, 200, "purchase", "pos"), tp(5, 220, "nps_response", "email", {"score": "3"}),
               tp(6, 400, "email_unsubscribe", "email")]
    figure = charts.score_over_time(touches, W)
    *channels, score = figure.data
    drawn = score.y[-1]
    assert drawn == pytest.approx(sum(trace.y[-1] for trace in channels), abs=1e-3)
    state = new_state()
    for t in touches:
        score = t["properties"].get("score")
        apply(state, [int(dt.datetime.fromisoformat(t["event_time"]).replace(
            tzinfo=dt.UTC).timestamp() * 1000), t["event_id"], t["event_type"], t["channel"],
            0.0, None, {"score": float(score)} if score else None], W)
    assert drawn == pytest.approx(snapshot(state, "C1", W)["engagement_score"], abs=1e-3)
    assert [trace.name for trace in figure.data] == ["email", "pos", "web", "score"]
    marked = [a.text for a in figure.layout.annotations]
    assert marked == ["email_unsubscribe (email)"]  # the consent change, on its day


def test_consent_changes_name_the_channel_and_the_way() -> None:
    touches = [tp(1, 0, "opt_out", "web", {"channel": "sms"}), tp(2, 1, "page_view"),
               tp(3, 2, "app_uninstall", "app"), tp(4, 3, "opt_in", "email", {"channel": "email"})]
    assert [(c["event_type"], c["channel"], c["reachable"])
            for c in charts.consent_changes(touches)] == [
        ("opt_out", "sms", False), ("app_uninstall", "app", False), ("opt_in", "email", True)]


def test_charts_carry_the_query_rows_numbers() -> None:
    funnel = charts.funnel([
        {"channel": "all", "step": s, "event_type": e, "profiles": n, "step_conversion": c}
        for s, e, n, c in [(1, "product_view", 100, 1), (2, "cart_add", 40, 0.4),
                           (3, "checkout_start", 20, 0.5), (4, "purchase", 15, 0.75)]])
    (bars,) = funnel.data
    assert list(bars.y) == [100, 40, 20, 15] and list(bars.text) == ["", "40%", "50%", "75%"]
    heat = charts.cohort_heatmap([
        {"cohort": "2026-01-05", "weeks_since": 0, "cohort_customers": 10, "share": 1.0},
        {"cohort": "2026-01-05", "weeks_since": 1, "cohort_customers": 10, "share": 0.4},
        {"cohort": "2026-01-12", "weeks_since": 0, "cohort_customers": 5, "share": 1.0}])
    (cells,) = heat.data
    assert [list(row) for row in cells.z] == [[1.0, 0.4], [1.0, None]]
    assert list(cells.y) == ["2026-01-05 (10)", "2026-01-12 (5)"]


def test_customer_pages_have_safe_names_and_tables_escape() -> None:
    assert customer_file("cust-1") == "customers/cust-1.html"
    assert customer_file("../x y/<z>") == "customers/.._x_y__z_.html"
    page = Page("t")
    page.table([{"a": "<script>", "b": ["x", "y"], "n": 3}], ["a", "b", "n"], "t1")
    markup = page.html()
    assert "&lt;script&gt;" in markup and "<script>" not in markup.split("</head>")[1]
    assert "<td data-column='b'>x, y</td>" in markup and "class='n'>3<" in markup
