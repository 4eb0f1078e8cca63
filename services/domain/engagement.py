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

import base64
import hashlib
import statistics

from services.domain.eventtime import DAY_MS
from services.domain.touch import AT, CHANNEL, EVENT_ID, EVENT_TYPE, EXTRA, PURCHASE, VALUE
from services.domain.weights import Weights

#: Channels a downstream system can reach a customer on (a store visit is not one).
CONTACTABLE = ("email", "app", "web", "support", "social")
#: Consent: event type -> (channel, reachable afterwards). opt_in / opt_out name theirs.
CONSENT = {"email_unsubscribe": ("email", False), "email_spam_report": ("email", False),
           "app_uninstall": ("app", False)}


def new_state() -> dict:
    return {"score": None, "channels": {}, "last_event_at": None, "days": {},
            "purchase_count": 0, "revenue": 0.0, "refunds": 0.0, "first_purchase_at": None,
            "last_purchase_at": None, "consent": {}, "seen": "", "applied": 0}


#: A touch applied is remembered in `seen` as 14 characters: its event-time day (3 characters
#: of 64 in ASCII order, so that days compare as strings) and 64 bits of BLAKE2b of its id (11,
#: base64url without padding).
DAY_CHARS, DIGEST_CHARS = 3, 11
TOKEN_CHARS = DAY_CHARS + DIGEST_CHARS
_DAY_DIGITS = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"


def digest(event_id: str) -> str:
    """A touch's id as 11 characters. Two ids of one customer share a digest with probability
    about n^2 / 2^65 (n: that customer's touches): 1 in 10^13 for 2,000 touches."""
    raw = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(raw)[:DIGEST_CHARS].decode()


def _day(t: int) -> str:
    day = t // DAY_MS
    return _DAY_DIGITS[day >> 12 & 63] + _DAY_DIGITS[day >> 6 & 63] + _DAY_DIGITS[day & 63]


def _find(seen: str, token: str) -> int:
    """Where the digest `token` is one of `seen`'s (not a match straddling two), or -1."""
    at = seen.find(token)
    while at != -1 and at % TOKEN_CHARS != DAY_CHARS:
        at = seen.find(token, at + 1)
    return at


def applied_already(state: dict, event_id: str) -> bool:
    """The touch `event_id` was applied to this state (delivered again, however old)."""
    return _find(state["seen"], digest(event_id)) != -1


def _expire_before(seen: str, t: int) -> str:
    horizon = _day(t)
    return "".join(seen[i:i + TOKEN_CHARS] for i in range(0, len(seen), TOKEN_CHARS)
                   if seen[i:i + DAY_CHARS] >= horizon)


def upgraded(state: dict) -> dict:
    """The touches applied are kept as digests with their days in `seen` since 0.10; they were
    ids with their times in `recent_event_ids` (60 days of them) and `recent` before (and in
    `event_ids` in 0.10's development)."""
    for old in ("event_ids", "recent_event_ids", "recent"):
        if old in state:
            ids = state.pop(old)
            if "seen" not in state:
                state["seen"] = "".join(_day(t) + digest(e) for e, t in ids.items())
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
    """Add one attributed touch; False when it was applied already. The touches applied are
    remembered as digests with their event-time days (with `retention_ms`, the days that far
    behind the latest touch only), so that a touch delivered again, however old, counts once."""
    t, event_id, kind, channel = touch[AT], touch[EVENT_ID], touch[EVENT_TYPE], touch[CHANNEL]
    token = digest(event_id)
    if _find(state["seen"], token) != -1:
        return False
    state["seen"] += _day(t) + token
    extra = touch[EXTRA] or {}
    w = weights.weight(kind, channel, extra.get("score"))
    h = weights.half_life_ms
    state["score"] = decayed_add(state["score"], w, t, h)
    state["channels"][channel] = decayed_add(state["channels"].get(channel), w, t, h)
    last = state["last_event_at"]
    state["last_event_at"] = t if last is None else max(last, t)
    if kind == PURCHASE:
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
    if retention_ms is not None and state["applied"] % 64 == 0:
        state["seen"] = _expire_before(state["seen"], state["last_event_at"] - retention_ms)
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
