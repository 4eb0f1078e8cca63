"""The scorer's pure logic: decay math, RFM/BTYD, consent and the weights file."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.common.weights_file import load_weights
from services.domain.engagement import apply, new_state, snapshot
from services.domain.eventtime import DAY_MS

W = load_weights()
T0 = 1_710_000_000_000
CONTRACT_VOCABULARY = (
    "page_view", "screen_view", "app_open", "product_view", "search", "wishlist_add", "cart_add",
    "cart_remove", "cart_view", "checkout_start", "purchase", "refund", "identify", "email_send",
    "email_open", "email_click", "email_unsubscribe", "email_bounce", "email_spam_report",
    "push_open", "app_uninstall", "loyalty_points_earned", "loyalty_points_redeemed",
    "support_contact", "complaint", "nps_response", "survey_response", "credit_application_start",
    "credit_application_abandoned", "credit_application_complete", "subscription_start",
    "subscription_cancel_request", "subscription_cancel", "opt_in", "opt_out",
)


def touch(i: int, t: int, kind: str = "page_view", channel: str = "web", value: float = 0.0,
          extra: dict | None = None) -> list:
    return [t, f"e{i}", kind, channel, value, None, extra]


def profile_of(touches: list[list], customer: str = "C1") -> dict:
    state = new_state()
    for x in touches:
        apply(state, x, W)
    return snapshot(state, customer, W)


# -- the score -------------------------------------------------------------------------------

kinds = st.sampled_from(["page_view", "cart_add", "purchase", "email_open", "complaint",
                         "email_unsubscribe", "made_up_event"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120 * DAY_MS), kinds,
                          st.sampled_from(["web", "app", "email", "pos"])), min_size=1,
                max_size=50), st.randoms())
def test_the_incremental_score_equals_the_sum_recomputed_in_any_order(touches, rnd) -> None:
    items = [touch(i, T0 + t, k, c) for i, (t, k, c) in enumerate(touches)]
    rnd.shuffle(items)
    got = profile_of(items)
    as_of = max(x[0] for x in items)
    expected = sum(W.weight(x[2], x[3]) * 2 ** (-(as_of - x[0]) / W.half_life_ms) for x in items)
    assert math.isclose(got["engagement_score"], expected, rel_tol=1e-9, abs_tol=1e-5)
    by_channel = defaultdict(float)
    for x in items:
        by_channel[x[3]] += W.weight(x[2], x[3]) * 2 ** (-(as_of - x[0]) / W.half_life_ms)
    for channel, value in by_channel.items():
        assert math.isclose(got["channel_scores"][channel], value, rel_tol=1e-9, abs_tol=1e-5)


def test_a_touch_half_a_life_ago_counts_half_and_duplicates_count_once() -> None:
    half = int(W.half_life_ms)
    got = profile_of([touch(1, T0, "purchase", value=5.0), touch(2, T0 + half),
                      touch(2, T0 + half)])
    assert math.isclose(got["engagement_score"], 10 * 0.5 + 0.5)
    assert got["version"] == 2 and got["purchase_count"] == 1


def test_bad_signals_weigh_negative_and_set_the_tier() -> None:
    got = profile_of([touch(1, T0, "complaint", "support"),
                      touch(2, T0 + 1, "nps_response", extra={"score": 3})])
    assert got["engagement_score"] == pytest.approx(-18, abs=1e-3)
    assert got["tier"] == "negative"
    promoter = profile_of([touch(1, T0, "nps_response", extra={"score": 10})])
    assert promoter["engagement_score"] == 5


def test_tiers_follow_the_thresholds() -> None:
    names = [name for name, _ in W.tiers]
    assert names == ["champion", "engaged", "active", "dormant"]
    for (name, minimum), below in zip(W.tiers, [*names[1:], "negative"], strict=True):
        assert W.tier(minimum) == name and W.tier(minimum - 0.01) == below
    assert W.tier(1e9) == "champion"


# -- RFM and BTYD ----------------------------------------------------------------------------

def lifetimes_reference(transactions: list[tuple[int, float]], observation_end: int) -> dict:
    """summary_data_from_transaction_data with freq='D', written out step by step."""
    per_day: dict[dt.date, float] = defaultdict(float)
    for t, value in transactions:
        per_day[dt.datetime.fromtimestamp(t / 1000, dt.UTC).date()] += value
    days = sorted(per_day)
    end = dt.datetime.fromtimestamp(observation_end / 1000, dt.UTC).date()
    repeat = [per_day[d] for d in days[1:]]
    return {"frequency": len(days) - 1, "recency": float((days[-1] - days[0]).days),
            "T": float((end - days[0]).days),
            "monetary_value": sum(repeat) / len(repeat) if repeat else 0.0}


def test_btyd_matches_the_lifetimes_definition_on_a_generated_transaction_log() -> None:
    rnd = random.Random(3)
    for customer in range(200):
        touches, transactions = [], []
        for i in range(rnd.randint(1, 25)):
            t = T0 + rnd.randint(0, 400) * DAY_MS + rnd.randint(0, DAY_MS - 1)
            value = round(rnd.uniform(5, 300), 2)
            touches.append(touch(i, t, "purchase", "pos", value))
            transactions.append((t, value))
        touches.append(touch(999, T0 + 420 * DAY_MS, "email_open", "email"))
        got = profile_of(touches, f"C{customer}")
        ref = lifetimes_reference(transactions, T0 + 420 * DAY_MS)
        for name in ("frequency", "recency", "T"):
            assert got[name] == ref[name], (customer, name)
        assert got["monetary_value"] == pytest.approx(ref["monetary_value"])
        assert got["purchase_count"] == len(transactions)
        assert got["total_revenue"] == pytest.approx(sum(v for _, v in transactions))


def test_rfm_fields_for_one_purchase_and_the_purchase_rhythm() -> None:
    one = profile_of([touch(1, T0, "purchase", value=50.0)])
    assert (one["frequency"], one["recency"], one["monetary_value"]) == (0, 0.0, 0.0)
    assert one["median_interpurchase_days"] is None
    days = [0, 10, 30, 40]
    rhythm = profile_of([touch(i, T0 + d * DAY_MS, "purchase", value=10.0)
                         for i, d in enumerate(days)])
    assert rhythm["median_interpurchase_days"] == 10.0


def test_refunds_reduce_revenue_not_the_btyd_inputs() -> None:
    got = profile_of([touch(1, T0, "purchase", value=100.0),
                      touch(2, T0 + 2 * DAY_MS, "purchase", value=40.0),
                      touch(3, T0 + 3 * DAY_MS, "refund", value=40.0)])
    assert got["total_revenue"] == 100.0
    assert (got["frequency"], got["monetary_value"]) == (1, 40.0)


# -- consent and the preferred channel -------------------------------------------------------

def test_an_unsubscribed_customer_is_not_reachable_by_email() -> None:
    touches = [touch(i, T0 + i, "email_click", "email") for i in range(5)]
    touches.append(touch(9, T0 + 10, "page_view", "web"))
    assert profile_of(touches)["preferred_channel"] == "email"
    unsubscribed = profile_of([*touches, touch(10, T0 + 11, "email_unsubscribe", "email")])
    assert "email" not in unsubscribed["reachable_channels"]
    assert unsubscribed["preferred_channel"] == "web"
    # A later opt-in counts, in event time, whatever the arrival order.
    opt_in = touch(11, T0 + 12, "opt_in", "web", extra={"channel": "email"})
    back = profile_of([opt_in, *touches, touch(10, T0 + 11, "email_unsubscribe", "email")])
    assert "email" in back["reachable_channels"]


def test_a_store_is_not_a_channel_to_reach_anyone_on() -> None:
    got = profile_of([touch(1, T0, "purchase", "pos", 20.0)])
    assert got["reachable_channels"] == [] and got["preferred_channel"] is None


# -- the weights file ------------------------------------------------------------------------

def test_the_shipped_weights_cover_the_contract_vocabulary() -> None:
    assert set(CONTRACT_VOCABULARY) <= set(W.by_type)
    for bad in ("email_unsubscribe", "complaint", "credit_application_abandoned",
                "subscription_cancel_request"):
        assert W.weight(bad, "web") < 0
    assert W.weight("purchase", "pos") > W.weight("page_view", "web")


@pytest.mark.parametrize("text, message", [
    ("half_life_days: 0\ntiers: {a: 1}\nweights: {x: 1}", "half_life_days must be > 0"),
    ("tiers: {a: 1}\nweights: {x: high}", "weights.x: expected a number, got 'high'"),
    ("tiers: {a: 1}\nweights: {nps_response: {bad: 1}}", "weights.nps_response: expected"),
    ("tiers: {a: 1}\nweights: {x: 1}\nhalflife: 3", "unknown key 'halflife'"),
    ("weights: {x: 1}", "tiers must be a map"),
    ("tiers: {a: 1}\nweights: [1, 2", "not valid YAML"),
])
def test_weights_file_errors_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_weights(path)


def test_a_missing_weights_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KIZUNA_WEIGHTS_FILE"):
        load_weights(tmp_path / "nope.yaml")


def test_an_erased_customer_is_forgotten_and_starts_again() -> None:
    from services.engagement_scorer.batch import score_batch

    weights = load_weights()
    store: dict = {}
    buy = [1_710_000_000_000, "e1", "purchase", "web", 50.0, None, None]
    score_batch(store, weights, [{"t": 0, "c": {"C1": [buy], "C2": [buy]}}])
    scored = score_batch(store, weights, [
        {"t": 0, "c": {}, "e": ["C1"]},
        {"t": 0, "c": {"C1": [[*buy[:1], "e2", *buy[2:]]]}}])
    assert scored.erased == ["C1"] and "c:C2" in store
    (again,) = scored.profiles
    assert again["purchase_count"] == 1 and again["total_revenue"] == 50.0  # not 2, 100


def test_a_score_asked_for_long_before_its_anchor_does_not_overflow() -> None:
    # A decision about 1997 from a purchase log imported behind live touches of 2026.
    from services.domain.engagement import decayed_value

    anchor = [12.5, 1_790_000_000_000]  # 2026
    assert decayed_value(anchor, 852_076_800_000, 14 * 86_400_000) == 12.5  # 1997
    assert decayed_value(anchor, anchor[1] + 14 * 86_400_000, 14 * 86_400_000) == 6.25


def test_a_profile_stored_before_the_renames_is_upgraded() -> None:
    # A profile's ids were `recent` before 0.9, `recent_event_ids` before 0.10 and
    # `event_ids` (id -> time) before 0.11: still read, and still duplicates.
    from services.domain.engagement import applied_already
    from services.engagement_scorer.batch import score_batch

    weights = load_weights()
    buy = [1_710_000_000_000, "e1", "purchase", "web", 50.0, None, None]
    for old in ("recent", "recent_event_ids", "event_ids"):
        store: dict = {}
        score_batch(store, weights, [{"t": 0, "c": {"C1": [buy]}}])
        state = store["c:C1"]
        del state["seen"]
        state[old] = {"e1": buy[0]}  # as that version stored it
        scored = score_batch(store, weights, [{"t": 0, "c": {"C1": [buy]}}])
        assert (scored.applied, scored.duplicates, scored.corrupt) == (0, 1, [])
        assert old not in store["c:C1"] and applied_already(store["c:C1"], "e1")
        assert not applied_already(store["c:C1"], "e2")


def test_a_touch_delivered_again_a_year_later_counts_once() -> None:
    # The ids of applied touches are kept for good (not 60 days): a sessionizer batch redone
    # after a crash during a backfill sends touches from long ago again.
    from services.engagement_scorer.batch import score_batch

    weights = load_weights()
    old = [1_600_000_000_000, "e-old", "purchase", "web", 50.0, None, None]
    store: dict = {}
    score_batch(store, weights, [{"t": 0, "c": {"C1": [old]}}])
    for k in range(200):  # 200 days of visits, a year after
        visit = [1_632_000_000_000 + k * 86_400_000, f"e{k}", "page_view", "web", 0.0, None, None]
        score_batch(store, weights, [{"t": 0, "c": {"C1": [visit]}}])
    scored = score_batch(store, weights, [{"t": 0, "c": {"C1": [old]}}])
    assert (scored.applied, scored.duplicates) == (0, 1)
    assert scored.profiles[0]["purchase_count"] == 1


def test_applied_touches_are_remembered_as_digests_and_found_only_whole() -> None:
    from services.domain.engagement import DAY_CHARS, TOKEN_CHARS, applied_already, apply, new_state

    weights = load_weights()
    state = new_state()
    ids = [f"{i:08x}-uuid-like-{i}" for i in range(2000)]
    for i, e in enumerate(ids):
        apply(state, [1_700_000_000_000 + i * 3_600_000, e, "page_view", "web", 0.0, None,
                      None], weights)
    assert len(state["seen"]) == 2000 * TOKEN_CHARS
    assert all(applied_already(state, e) for e in ids[::97])
    assert not any(applied_already(state, f"other-{i}") for i in range(500))
    # 11 characters that occur only across two tokens (a day and a digest) are not a digest
    seen = state["seen"]
    straddling = seen[DAY_CHARS + 5: DAY_CHARS + 5 + 11]
    state["seen"] = seen + "AAA" + straddling  # a token whose digest would match it
    from services.domain import engagement
    assert engagement._find(seen, straddling) == -1
    assert engagement._find(state["seen"], straddling) == len(seen) + DAY_CHARS


def test_retention_forgets_whole_days_behind_the_latest_touch() -> None:
    from services.domain.engagement import applied_already, apply, new_state

    weights = load_weights()
    day = 86_400_000
    state = new_state()
    for i in range(128):  # two prunes, the latest touch on day 127
        apply(state, [1_700_000_000_000 + i * day, f"e{i}", "page_view", "web", 0.0, None,
                      None], weights, retention_ms=30 * day)
    assert applied_already(state, "e127") and applied_already(state, "e98")
    assert not applied_already(state, "e10")
    assert len(state["seen"]) <= (31 + 64) * 14


def test_the_days_of_seen_touches_compare_as_their_strings() -> None:
    import random

    from services.domain.engagement import _day

    rng = random.Random(7)
    days = sorted(rng.sample(range(0, 2**18), 2000))  # 1970 to year 2687
    assert [_day(d * 86_400_000) for d in days] == sorted(_day(d * 86_400_000) for d in days)
    assert len({_day(d * 86_400_000) for d in days}) == len(days)
