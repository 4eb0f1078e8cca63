"""make soak's verdict: it fails on memory that keeps growing and on unbounded lag, and
passes a steady run (benchmarks/soak.py)."""

from __future__ import annotations

from benchmarks.soak import again, verdict


def run(rss, lag) -> list[dict]:
    return [{"t": 10 * i, "rss_mib": {"sessionizer": rss(i), "alerting": 300.0},
             "lag": {"sessionizer": lag(i)}} for i in range(100)]


def test_a_steady_run_passes() -> None:
    assert verdict(run(lambda i: 400 + (i % 7), lambda i: 200 + (i % 50)), 50_000) == []


def test_memory_that_keeps_growing_fails() -> None:
    (problem,) = verdict(run(lambda i: 400 + 3 * i, lambda i: 100), 50_000)
    assert problem.startswith("sessionizer: memory kept growing")


def test_warm_up_growth_alone_passes() -> None:
    assert verdict(run(lambda i: min(600, 100 + 25 * i), lambda i: 100), 50_000) == []


def test_lag_that_grows_or_passes_the_bound_fails() -> None:
    (grew,) = verdict(run(lambda i: 400, lambda i: 100 * i), 50_000)
    assert grew.startswith("sessionizer: lag grew")
    (bound,) = verdict(run(lambda i: 400, lambda i: 60_000), 50_000)
    assert bound == "sessionizer: lag 60000 > 50000"


def test_too_short_a_run_is_not_a_pass() -> None:
    assert verdict(run(lambda i: 400, lambda i: 0)[:5], 50_000) != []


def test_each_replay_of_the_days_has_new_ids_and_the_same_customers() -> None:
    event = {"event_id": "cust-1-00001-7", "customer_id": "cust-1-00001",
             "commerce": {"order_id": "cust-1-00001-9", "value": 5.0},
             "properties": {"cart_id": "cust-1-00001-8"}}
    assert again(event, 0) == event
    second = again(event, 1)
    assert second["event_id"] == "cust-1-00001-7-r1" and second["customer_id"] == \
        "cust-1-00001"
    assert second["commerce"] == {"order_id": "cust-1-00001-9-r1", "value": 5.0}
    assert second["properties"]["cart_id"] == "cust-1-00001-8-r1"
