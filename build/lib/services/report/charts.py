"""Plotly figures from query rows, pure: rows in (as `kizuna query --format json` gives them),
a figure out. Each figure carries the numbers it shows in its traces, so a test can read them
back from the page and compare them with the query."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable

import plotly.graph_objects as go
import plotly.io as pio

from services.domain.engagement import CONSENT
from services.domain.weights import Weights

# The white template as the default, applied when a figure is written: setting it on each
# figure deep-copies it (about 20 ms a figure).
pio.templates.default = "plotly_white"
LAYOUT = {"margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "height": 420,
          "font": {"family": "system-ui, sans-serif", "size": 12}}
FUNNEL_STEPS = ["product_view", "cart_add", "checkout_start", "purchase"]


def _figure(title: str, **layout: object) -> go.Figure:
    return go.Figure(layout={**LAYOUT, **layout, "title": {"text": title, "x": 0}})


def cohort_heatmap(rows: list[dict]) -> go.Figure:
    cohorts = sorted({r["cohort"] for r in rows})
    weeks = sorted({int(r["weeks_since"]) for r in rows})
    share = {(r["cohort"], int(r["weeks_since"])): float(r["share"]) for r in rows}
    size = {r["cohort"]: int(r["cohort_customers"]) for r in rows}
    figure = _figure("Cohort retention: share of each first-seen week active again",
                     xaxis_title="weeks since the first touchpoint",
                     yaxis_title="cohort (week of the first touchpoint)")
    figure.add_trace(go.Heatmap(
        x=weeks, y=[f"{c} ({size[c]})" for c in cohorts],
        z=[[share.get((c, w)) for w in weeks] for c in cohorts],
        colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "share", "tickformat": ".0%"},
        hovertemplate="cohort %{y}<br>week %{x}: %{z:.1%} active<extra></extra>",
        texttemplate="%{z:.0%}", name="retention"))
    figure.update_yaxes(autorange="reversed", type="category")
    return figure


def rfm_grid(rows: list[dict]) -> go.Figure:
    cell = {(int(r["r"]), int(r["f"])): r for r in rows}
    quintiles = [1, 2, 3, 4, 5]
    figure = _figure("RFM grid: purchasers by recency and frequency quintile (5 = best)",
                     xaxis_title="frequency quintile", yaxis_title="recency quintile")
    figure.add_trace(go.Heatmap(
        x=quintiles, y=quintiles,
        z=[[int(cell[(r, f)]["customers"]) if (r, f) in cell else None for f in quintiles]
           for r in quintiles],
        customdata=[[[float(cell[(r, f)]["revenue"]), cell[(r, f)]["segment"]]
                     if (r, f) in cell else [None, None] for f in quintiles]
                    for r in quintiles],
        text=[[f"{cell[(r, f)]['segment']}<br>{cell[(r, f)]['customers']}"
               if (r, f) in cell else "" for f in quintiles] for r in quintiles],
        texttemplate="%{text}", colorscale="Purples", colorbar={"title": "customers"},
        hovertemplate="R %{y}, F %{x}: %{z} customers, revenue %{customdata[0]:,.2f}"
                      "<br>segment %{customdata[1]}<extra></extra>", name="customers"))
    return figure


def pareto(rows: list[dict], top20_share: float | None) -> go.Figure:
    figure = _figure("Revenue concentration (Pareto): share of revenue by share of purchasers",
                     xaxis={"title": "purchasers, highest revenue first", "tickformat": ".0%"},
                     yaxis={"title": "share of revenue", "tickformat": ".0%"})
    figure.add_trace(go.Scatter(
        x=[0.0] + [float(r["customer_share"]) for r in rows],
        y=[0.0] + [float(r["revenue_share"]) for r in rows], mode="lines", name="revenue",
        hovertemplate="top %{x:.1%} of purchasers: %{y:.1%} of revenue<extra></extra>"))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="even",
                                line={"dash": "dot", "color": "#999"}, hoverinfo="skip"))
    if top20_share is not None:
        figure.add_trace(go.Scatter(
            x=[0.2], y=[top20_share], mode="markers+text", name="top 20 %",
            marker={"size": 12, "color": "#d62728"}, textposition="bottom right",
            text=[f"top 20 %: {top20_share:.0%} of revenue"],
            hovertemplate="the top 20 %% of purchasers: %{y:.1%} of revenue<extra></extra>"))
    return figure


def funnel(rows: list[dict]) -> go.Figure:
    figure = _figure("Purchase funnel: profiles reaching each step within 24 h, and step "
                     "conversion", yaxis_title="profiles", barmode="group")
    for channel, steps in _by(rows, "channel").items():
        steps.sort(key=lambda r: int(r["step"]))
        figure.add_trace(go.Bar(
            x=[r["event_type"] for r in steps], y=[int(r["profiles"]) for r in steps],
            name=channel, visible=True if channel == "all" else "legendonly",
            customdata=[float(r["step_conversion"]) for r in steps],
            text=[f"{float(r['step_conversion']):.0%}" if int(r["step"]) > 1 else ""
                  for r in steps], textposition="outside",
            hovertemplate=channel + ": %{y} profiles at %{x}<br>%{customdata:.1%} of the step "
                                    "before<extra></extra>"))
    return figure


def _by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    """Rows grouped by one column, in their order: one trace each."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r)
    return groups


def _daily(title: str, rows: list[dict], key: str, value: str, names: list[str],
           style: Callable[[str], dict] = lambda name: {}) -> go.Figure:
    """A time series per value of `key`: `value` per day; `style(name)`: the trace's look."""
    figure = _figure(title, yaxis_title=value, xaxis={"type": "date", "title": "day"})
    series = _by(rows, key)
    for name in names:
        figure.add_trace(go.Scatter(
            x=[r["day"] for r in series[name]], y=[int(r[value]) for r in series[name]],
            name=name, hovertemplate=name + ": %{y} on %{x|%Y-%m-%d}<extra></extra>",
            **style(name)))
    return figure


def alerts_over_time(rows: list[dict]) -> go.Figure:
    names = sorted({r["series"] for r in rows}, key=lambda s: (not s.startswith("cart"), s))
    return _daily("Alerts over time (by day of detection)", rows, "series", "alerts", names,
                  lambda name: {"mode": "lines+markers", "line": {
                      "dash": "solid" if name.startswith("cart") else "dot"}})


def engagement_by_tier(rows: list[dict], weights: Weights) -> go.Figure:
    figure = _figure("Engagement score by tier (each point a customer)",
                     yaxis_title="engagement score", xaxis_title="tier")
    order = [name for name, _ in weights.tiers] + ["negative"]
    scores: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        scores[r["tier"]].append(float(r["engagement_score"]))
    for tier in [t for t in order if t in scores] + sorted(set(scores) - set(order)):
        figure.add_trace(go.Box(y=scores[tier], name=tier, boxpoints="all", jitter=0.4,
                                pointpos=0, marker={"size": 3},
                                hovertemplate=tier + ": %{y:.1f}<extra></extra>"))
    return figure


def channel_mix(rows: list[dict]) -> go.Figure:
    return _daily("Channel mix over time: touchpoints per day", rows, "channel", "touchpoints",
                  sorted({r["channel"] for r in rows}),
                  lambda name: {"stackgroup": "mix", "mode": "lines"})


# -- one customer ----------------------------------------------------------------------------

def _ms(value: str) -> int:
    """A DateTime64 as ClickHouse's JSON gives it ("2026-01-05 10:00:00.000"), in epoch ms."""
    moment = dt.datetime.fromisoformat(value.replace(" ", "T"))
    return int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _hover(t: dict) -> str:
    parts = [f"<b>{t['event_type']}</b> ({t['channel']})", t["event_time"][:19]]
    for key in ("cart_id", "order_id", "product_id", "quantity", "unit_price", "value",
                "currency", "session_id", "anonymous_id"):
        if t.get(key) is not None:
            parts.append(f"{key}: {t[key]}")
    parts += [f"{k}: {v}" for k, v in sorted((t.get("properties") or {}).items())]
    return "<br>".join(parts)


def timeline(touchpoints: list[dict], sessions: list[dict]) -> go.Figure:
    """One lane per channel with every touchpoint, sessions as spans, purchases by value."""
    figure = _figure("Touchpoints by channel, sessions and purchases", height=460,
                     xaxis={"type": "date", "title": "event time"}, hovermode="closest")
    lanes = sorted({t["channel"] for t in touchpoints})
    for channel in lanes:
        mine = [t for t in touchpoints if t["channel"] == channel]
        figure.add_trace(go.Scatter(
            x=[t["event_time"] for t in mine], y=[channel] * len(mine), mode="markers",
            name=channel, marker={"size": 9, "symbol": "line-ns-open", "line": {"width": 2}},
            text=[_hover(t) for t in mine], hovertemplate="%{text}<extra></extra>",
            customdata=[t["event_id"] for t in mine]))
    buys = [t for t in touchpoints if t["event_type"] == "purchase"]
    if buys:
        values = [float(t["value"] or 0) for t in buys]
        figure.add_trace(go.Scatter(
            x=[t["event_time"] for t in buys], y=["purchases"] * len(buys),
            mode="markers+text", name="purchases", text=[f"{v:,.2f}" for v in values],
            textposition="top center", customdata=values,
            marker={"size": [10 + min(v, 500) / 25 for v in values], "color": "#2ca02c"},
            hovertemplate="purchase %{customdata:,.2f}<br>%{x}<extra></extra>"))
    if sessions:
        xs: list[str | None] = []
        for s in sessions:
            xs += [s["started_at"], s["ended_at"], None]
        figure.add_trace(go.Scatter(
            x=xs, y=["sessions" if x is not None else None for x in xs], mode="lines+markers",
            name="sessions", line={"width": 8, "color": "#9467bd"}, marker={"size": 4},
            connectgaps=False, hoverinfo="x+name"))
    figure.update_yaxes(type="category",
                        categoryarray=["sessions", "purchases", *reversed(lanes)])
    return figure


def consent_changes(touchpoints: list[dict]) -> list[dict]:
    """The touches that changed where the customer may be reached."""
    out = []
    for t in touchpoints:
        kind = t["event_type"]
        if kind in CONSENT:
            channel, reachable = CONSENT[kind]
        elif kind in ("opt_in", "opt_out") and (t.get("properties") or {}).get("channel"):
            channel, reachable = t["properties"]["channel"], kind == "opt_in"
        else:
            continue
        out.append({"at": t["event_time"], "event_type": kind, "channel": channel,
                    "reachable": reachable})
    return out


def score_over_time(touchpoints: list[dict], weights: Weights, points: int = 240
                    ) -> go.Figure:
    """The engagement score as the scorer computes it (decayed sums of the weights), between
    and at the touches: each channel's contribution and the score (their sum); consent
    changes marked."""
    touches = [(_ms(t["event_time"]), t["event_type"], t["channel"],
                (t.get("properties") or {}).get("score")) for t in touchpoints]
    figure = _figure("Engagement score over time, and each channel's part (decay: half-life "
                     f"{weights.half_life_ms / 86_400_000:g} days)", height=380,
                     xaxis={"type": "date", "title": "event time"},
                     yaxis_title="engagement score")
    if not touches:
        return figure
    start, end = min(t[0] for t in touches), max(t[0] for t in touches)
    grid = sorted({*(t[0] for t in touches),
                   *(start + (end - start) * i // points for i in range(points + 1))})
    half = weights.half_life_ms
    channels = sorted({t[2] for t in touches})
    xs = [dt.datetime.fromtimestamp(x / 1000, dt.UTC).isoformat() for x in grid]
    total = [0.0] * len(grid)
    for channel in channels:
        mine = [(at, weights.weight(kind, channel, _number(nps)))
                for at, kind, c, nps in touches if c == channel]
        ys = [sum(w * 2.0 ** (-(x - at) / half) for at, w in mine if at <= x) for x in grid]
        total = [a + b for a, b in zip(total, ys, strict=True)]
        figure.add_trace(go.Scatter(
            x=xs, y=[round(y, 4) for y in ys], name=channel, mode="lines",
            line={"width": 1.5}, hovertemplate=channel + ": %{y:.2f}<extra></extra>"))
    figure.add_trace(go.Scatter(
        x=xs, y=[round(y, 4) for y in total], name="score", mode="lines",
        line={"width": 3, "color": "#222"}, hovertemplate="score: %{y:.2f}<extra></extra>"))
    for change in consent_changes(touchpoints):
        figure.add_vline(x=_ms(change["at"]), line={"dash": "dash", "color": "#d62728"})
        figure.add_annotation(x=_ms(change["at"]), y=1, yref="paper", showarrow=False,
                              text=f"{change['event_type']} ({change['channel']})",
                              textangle=-90, xanchor="right", font={"color": "#d62728"})
    return figure


def _number(value: object) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
