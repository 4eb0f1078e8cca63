"""Churn risk (contract section 2), pure: a customer's signals, rhythm and engagement.

Four kinds of reasons, each with a severity (1 low .. 3 high):

- explicit signals, detected at the touch itself: `email_unsubscribe`, `email_spam_report`,
  `complaint`, `nps_detractor` (an `nps_response` scoring 0-6), `credit_application_abandoned`,
  `subscription_cancel_request`, `app_uninstall`;
- `engagement_drop`: the engagement score decays below a fraction (default 0.25) of its peak
  over the 90 days before the customer's latest touch (peaks under a minimum do not count);
- `purchase_silence`: no purchase for longer than k (default 3) times the customer's own median
  interval between purchase days, and at least a minimum (default 14 days); customers with
  purchases on two days or more;
- `dormant`: no touchpoint of the customer's own doing (a campaign send is not one) for N days
  (default 21).

The time-based reasons fire once per episode (per latest touch, or per latest purchase), at the
exact event time their deadline passes. A cool-down per customer (default 7 days) holds back
further alerts unless the severity rises; held-back alerts are counted. A purchase within the
resolution window (default 30 days) after an alert resolves it (same `alert_id`).

Touches come here in event-time order (the processor releases them once the allowed lateness
has passed), so every decision depends on the events only: replays, batch sizes and partition
counts give the same alerts. A device's history handed over at a later login comes in at the
login's time (`touch.counts_at`), and its signals count from then. State is JSON-ready.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from services.domain import engagement
from services.domain.eventtime import DAY_MS
from services.domain.touch import AT, EVENT_ID, EVENT_TYPE, EXTRA, PURCHASE, counts_at
from services.domain.weights import Weights

#: Explicit signals: event type -> (reason, severity, recommended action).
SIGNALS = {
    "email_unsubscribe": ("email_unsubscribe", 2, "win_back_offer"),
    "email_spam_report": ("email_spam_report", 3, "service_call"),
    "complaint": ("complaint", 2, "service_call"),
    "credit_application_abandoned": ("credit_application_abandoned", 1, "credit_follow_up"),
    "subscription_cancel_request": ("subscription_cancel_request", 3, "retention_call"),
    "app_uninstall": ("app_uninstall", 2, "win_back_offer"),
}
#: Time-based reasons: reason -> (severity, recommended action).
TIMED = {"engagement_drop": (2, "win_back_offer"), "purchase_silence": (2, "win_back_offer"),
         "dormant": (1, "win_back_offer")}
#: Touches the brand makes, not the customer: they do not end dormancy.
NOT_ACTIVITY = frozenset({"email_send", "email_bounce"})


@dataclass(frozen=True)
class ChurnRules:
    engagement_fraction: float = 0.25
    peak_window_ms: int = 90 * DAY_MS
    min_peak: float = 10.0
    silence_factor: float = 3.0
    silence_min_ms: int = 14 * DAY_MS
    dormancy_ms: int = 21 * DAY_MS
    cooldown_ms: int = 7 * DAY_MS
    resolve_within_ms: int = 30 * DAY_MS


def new_state() -> dict:
    """`at`: when the latest touch counts for the customer (`touch.counts_at`)."""
    return {"peaks": {}, "last": None, "last_purchase": None, "fired": {}, "sent": None,
            "open": [], "held": 0, "at": None}


def alert_id(customer: str, at: int, reason: str) -> str:
    digest = hashlib.sha256(f"churn\0{customer}\0{at}\0{reason}".encode()).hexdigest()
    return "c-" + digest[:24]


def signal_of(touch: list) -> tuple[str, int, str] | None:
    kind = touch[EVENT_TYPE]
    if kind == "nps_response":
        score = (touch[EXTRA] or {}).get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool) and score <= 6:
            return ("nps_detractor", 3 if score <= 3 else 2, "service_call")
        return None
    return SIGNALS.get(kind)


def observe(state: dict, prof: dict, touch: list, customer: str, rules: ChurnRules,
            weights: Weights) -> list[dict]:
    """One touch, newer than or equal to every touch before it, already applied to `prof`
    (the scorer's profile state). Returns alerts to emit: an explicit signal's alert, and
    resolutions of alerts this purchase answers."""
    t, kind = touch[AT], touch[EVENT_TYPE]
    state["at"] = max(state.get("at") or t, counts_at(touch))
    out = []
    if kind == PURCHASE:
        state["last_purchase"] = _latest(state["last_purchase"], t, touch[EVENT_ID])
        answered = []
        for alert in state["open"]:
            if alert["detected_at"] < t <= alert["detected_at"] + rules.resolve_within_ms:
                why = "purchased_after_alert"
            elif alert.get("since") is not None and alert["since"] < t <= alert["detected_at"]:
                # Bought before the alert, after what its time-based reasons counted from,
                # and only heard of now: the alert would not have been raised.
                why = "late_purchase"
            else:
                continue
            answered.append(alert)
            out.append({**alert, "status": "resolved" if alert["status"] == "open"
                        else alert["status"], "resolved_at": t,
                        "reasons": alert["reasons"] + [why]})
        state["open"] = [a for a in state["open"] if all(a is not x for x in answered)]
    if kind not in NOT_ACTIVITY:
        state["last"] = _latest(state["last"], t, touch[EVENT_ID])
    # The score just after this touch. A touch older than the latest one (a device's history
    # moved at login) counts at the latest touch's time: valued at its own time, it would
    # read the later score backwards and inflate the peak.
    at = max(t, prof["score"][1])
    score = engagement.decayed_value(prof["score"], at, weights.half_life_ms)
    day = str(at // DAY_MS)
    peaks = state["peaks"]
    if score > peaks.get(day, -math.inf):
        peaks[day] = score
        first_day = (at - rules.peak_window_ms) // DAY_MS
        for old in [d for d in peaks if int(d) < first_day]:
            del peaks[old]
    signal = signal_of(touch)
    if signal is not None:
        reason, severity, action = signal
        # A signal in a device's history counts from the login that made it the customer's.
        out += _raise(state, prof, customer, counts_at(touch), [(reason, severity, action)],
                      [touch[EVENT_ID]], rules, weights)
    state["open"] = [a for a in state["open"]
                     if a["detected_at"] + rules.resolve_within_ms >= t]
    return out


def _latest(have: list | None, t: int, event_id: str) -> list:
    # A device's history moved at login can be older than what came before it.
    return [t, event_id] if have is None or [t, event_id] > have else have


def _peak(state: dict, rules: ChurnRules) -> float:
    if state["last"] is None or not state["peaks"]:
        return 0.0
    first_day = (state["last"][0] - rules.peak_window_ms) // DAY_MS
    return max((v for d, v in state["peaks"].items() if int(d) >= first_day), default=0.0)


def deadlines(state: dict, prof: dict, rules: ChurnRules, weights: Weights) -> dict[str, tuple]:
    """reason -> (event time it becomes true, the episode key, evidence event id), for the
    time-based reasons not yet fired in their episode."""
    out: dict[str, tuple] = {}
    fired = state["fired"]
    last = state["last"]
    if last is not None:
        if fired.get("dormant") != last[0]:
            out["dormant"] = (last[0] + rules.dormancy_ms, last[0], last[1])
        peak = _peak(state, rules)
        anchor = prof["score"]
        if peak >= rules.min_peak and anchor is not None and fired.get(
                "engagement_drop") != last[0]:
            target = rules.engagement_fraction * peak
            value, at = anchor
            when = at if value <= target else at + math.ceil(
                weights.half_life_ms * math.log2(value / target))
            out["engagement_drop"] = (max(when, last[0]), last[0], last[1])
    bought = state["last_purchase"]
    if bought is not None and fired.get("purchase_silence") != bought[0]:
        rhythm = engagement.btyd(prof["days"], bought[0])["median_interpurchase_days"]
        if rhythm is not None:
            wait = max(rules.silence_factor * rhythm * DAY_MS, rules.silence_min_ms)
            out["purchase_silence"] = (bought[0] + int(wait), bought[0], bought[1])
    # A reason a device's history made true (claimed at a login, counted from there) is
    # true from that login on, not before: the customer's time never runs backwards.
    now = state.get("at")
    if now is not None:
        for reason, (when, key, evidence) in out.items():
            if when < now:
                out[reason] = (now, key, evidence)
    return out


def due_at(state: dict, prof: dict, rules: ChurnRules, weights: Weights) -> int | None:
    times = [when for when, _, _ in deadlines(state, prof, rules, weights).values()]
    return min(times) if times else None


def check(state: dict, prof: dict, customer: str, at: int, rules: ChurnRules,
          weights: Weights) -> list[dict]:
    """Fire the time-based reasons due at or before `at` (no touch comes between)."""
    due = sorted((when, reason, key, evidence) for reason, (when, key, evidence)
                 in deadlines(state, prof, rules, weights).items() if when <= at)
    if not due:
        return []
    when = due[0][0]  # the earliest first; the caller calls again for the rest
    now = [d for d in due if d[0] == when]
    for _, reason, key, _ in now:
        state["fired"][reason] = key
    reasons = [(reason, *TIMED[reason]) for _, reason, _, _ in now]
    return _raise(state, prof, customer, when, reasons, sorted({d[3] for d in now}), rules,
                  weights, since=max(d[2] for d in now))


def _raise(state: dict, prof: dict, customer: str, at: int, reasons: list[tuple],
           evidence: list[str], rules: ChurnRules, weights: Weights,
           since: int | None = None) -> list[dict]:
    """An alert, unless cooling down. `since`: for time-based reasons, the time they count
    from (a purchase between it and the alert, heard of later, would have prevented it)."""
    reasons = sorted(reasons, key=lambda r: (-r[1], r[0]))
    severity = min(3, reasons[0][1] + (len(reasons) >= 3))
    sent = state["sent"]
    if sent is not None and at < sent[0] + rules.cooldown_ms and severity <= sent[1]:
        state["held"] += 1  # cooling down: counted, not sent
        return []
    state["sent"] = [at, severity]
    alert = {"alert_id": alert_id(customer, at, reasons[0][0]), "status": "open",
             "detected_at": at, "reasons": [r[0] for r in reasons], "severity": severity,
             "evidence": evidence, "action": reasons[0][2], "since": since,
             "score": round(engagement.decayed_value(prof["score"], at, weights.half_life_ms), 6)}
    state["open"].append(alert)
    return [alert]
