"""A customer's engagement, RFM and BTYD state: pure functions over a JSON-ready dict.

The scorer publishes it; alerting keeps the same state to judge churn risk.

Decayed sums are kept as an anchor `[value, at]`: the sum's value at event time `at`, the
latest touch seen. A touch at `t <= at` adds `w * 2^(-(at - t)/h)`; a later one moves the
anchor: `value * 2^(-(t - at)/h) + w`. Either way the anchor equals the sum recomputed from
scratch, whatever order the touches came in, in O(1) per touch.

RFM and the buy-till-you-die summary follow `lifetimes.utils.summary_data_from_transaction_data`
with day periods (UTC days): purchases are summed per day; `frequency` is the number of
purchase days after the first, `recency` the days from the first to the last purchase day,
`T` the days from the first purchase day to the profile's `as_of` day, and `monetary_value`
the mean of the repeat days' sums (0 when frequency is 0). Refunds do not change those
(they are not transactions in that model); `total_revenue` is net of refunds.
"""

from __future__ import annotations

import statistics

from services.domain.eventtime import DAY_MS
from services.domain.touch import AT, CHANNEL, EVENT_ID, EVENT_TYPE, EXTRA, VALUE
from services.domain.weights import Weights

#: Channels a downstream system can reach a customer on (a store visit is not one).
CONTACTABLE = ("email", "app", "web", "support", "social")
#: Consent: event type -> (channel, reachable afterwards). opt_in / opt_out name theirs.
CONSENT = {"email_unsubscribe": ("email", False), "email_spam_report": ("email", False),
           "app_uninstall": ("app", False)}


def new_state() -> dict:
    return {"score": None, "channels": {}, "last_event_at": None, "days": {},
            "purchase_count": 0, "revenue": 0.0, "refunds": 0.0, "first_purchase_at": None,
            "last_purchase_at": None, "consent": {}, "event_ids": {}, "applied": 0}


def upgraded(state: dict) -> dict:
    """The ids of the touches applied were `recent` before 0.9 and `recent_event_ids` before
    0.10 (when only 60 days of them were kept)."""
    for old in ("recent_event_ids", "recent"):
        if old in state and "event_ids" not in state:
            state["event_ids"] = state.pop(old)
    return state


def decayed_add(anchor: list | None, w: float, t: int, half_life_ms: float) -> list:
    if anchor is None:
        return [w, t]
    value, at = anchor
    if t <= at:
        return [value + w * 2.0 ** (-(at - t) / half_life_ms), at]
    return [value * 2.0 ** (-(t - at) / half_life_ms) + w, t]


def decayed_value(anchor: list | None, at: int, half_life_ms: float) -> float:
    """The sum at `at`, from its anchor. Before the anchor (a decision about the past, from
    touches that came late) it is the anchor's value: the sum does not grow backwards (over
    decades it would overflow a float)."""
    if anchor is None:
        return 0.0
    return anchor[0] * 2.0 ** (-max(0, at - anchor[1]) / half_life_ms)


def apply(state: dict, touch: list, weights: Weights, retention_ms: int | None = None) -> bool:
    """Add one attributed touch; False when it was applied already. The ids of the touches
    applied are kept (with `retention_ms`, that far behind the latest touch only), so that a
    touch delivered again, however old, counts once."""
    t, event_id, kind, channel = touch[AT], touch[EVENT_ID], touch[EVENT_TYPE], touch[CHANNEL]
    seen = state["event_ids"]
    if event_id in seen:
        return False
    seen[event_id] = t
    extra = touch[EXTRA] or {}
    w = weights.weight(kind, channel, extra.get("score"))
    h = weights.half_life_ms
    state["score"] = decayed_add(state["score"], w, t, h)
    state["channels"][channel] = decayed_add(state["channels"].get(channel), w, t, h)
    last = state["last_event_at"]
    state["last_event_at"] = t if last is None else max(last, t)
    if kind == "purchase":
        value = touch[VALUE] or 0.0
        day = str(t // DAY_MS)  # a JSON key
        state["days"][day] = state["days"].get(day, 0.0) + value
        state["purchase_count"] += 1
        state["revenue"] += value
        first, latest = state["first_purchase_at"], state["last_purchase_at"]
        state["first_purchase_at"] = t if first is None else min(first, t)
        state["last_purchase_at"] = t if latest is None else max(latest, t)
    elif kind == "refund":
        state["refunds"] += touch[VALUE] or 0.0
    consent = CONSENT.get(kind)
    if kind in ("opt_in", "opt_out") and extra.get("channel"):
        consent = (str(extra["channel"]), kind == "opt_in")
    if consent:
        have = state["consent"].get(consent[0])
        if have is None or (have[0], have[1]) < (t, event_id):  # the latest decision counts
            state["consent"][consent[0]] = [t, event_id, consent[1]]
    state["applied"] += 1
    if retention_ms is not None and len(seen) > 64 and len(seen) % 64 == 0:
        horizon = state["last_event_at"] - retention_ms
        state["event_ids"] = {e: at for e, at in seen.items() if at >= horizon}
    return True


def btyd(days: dict[str, float], as_of: int) -> dict:
    if not days:
        return {"frequency": 0, "recency": 0.0, "T": 0.0, "monetary_value": 0.0,
                "median_interpurchase_days": None}
    ordered = sorted((int(d), v) for d, v in days.items())
    first, last = ordered[0][0], ordered[-1][0]
    repeat = [v for _, v in ordered[1:]]
    gaps = [b[0] - a[0] for a, b in zip(ordered, ordered[1:], strict=False)]
    return {
        "frequency": len(ordered) - 1,
        "recency": float(last - first),
        "T": float(as_of // DAY_MS - first),
        "monetary_value": sum(repeat) / len(repeat) if repeat else 0.0,
        "median_interpurchase_days": float(statistics.median(gaps)) if gaps else None,
    }


def reachable_channels(state: dict) -> list[str]:
    consent = state["consent"]
    return [c for c in CONTACTABLE
            if c in state["channels"] and (c not in consent or consent[c][2])]


def snapshot(state: dict, customer_id: str, weights: Weights) -> dict:
    """The EngagementProfile record (schemas/engagement_profile.avsc), as of the latest touch."""
    as_of = state["last_event_at"]
    h = weights.half_life_ms
    score = decayed_value(state["score"], as_of, h)
    channel_scores = {c: round(decayed_value(a, as_of, h), 6)
                      for c, a in sorted(state["channels"].items())}
    reachable = reachable_channels(state)
    positive = [(channel_scores[c], c) for c in reachable if channel_scores[c] > 0]
    return {
        "customer_id": customer_id,
        "engagement_score": round(score, 6),
        "tier": weights.tier(score),
        "channel_scores": channel_scores,
        "last_event_at": as_of,
        "purchase_count": state["purchase_count"],
        "total_revenue": round(state["revenue"] - state["refunds"], 6),
        "first_purchase_at": state["first_purchase_at"],
        "last_purchase_at": state["last_purchase_at"],
        **btyd(state["days"], as_of),
        "rfm_segment": None,  # relative to the whole customer base: computed in ClickHouse
        "top_revenue_20": False,  # idem
        "preferred_channel": max(positive)[1] if positive else None,
        "reachable_channels": reachable,
        "as_of": as_of,
        "version": state["applied"],
    }
