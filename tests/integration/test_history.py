"""A public purchase log from the 1990s, nobody here made: CDNOW's 69,659 orders of 23,570
customers (January 1997 to June 1998), as the `lifetimes` package ships it. It imports whole,
and every customer's BTYD summary equals `lifetimes.utils.summary_data_from_transaction_data`
with day periods, the definition the contract names (section 2)."""

from __future__ import annotations

import json
from pathlib import Path

import lifetimes
import pandas as pd
import pytest
from lifetimes.utils import summary_data_from_transaction_data

from services.common.queries import query_rows
from services.common.settings import Settings, load
from tests.conftest import kizuna

pytestmark = pytest.mark.integration
CDNOW = Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt"
END = "1998-06-30"


def test_the_cdnow_purchase_log_imports_whole_with_lifetimes_btyd_summary(
        stack, tmp_path) -> None:
    rows = [line.split() for line in CDNOW.read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 69_659
    path = tmp_path / "cdnow.jsonl"
    with path.open("w") as f:
        for n, (customer, day, cds, dollars) in enumerate(rows):
            f.write(json.dumps({
                "event_id": f"cdnow-{n}", "event_type": "purchase", "channel": "other",
                "occurred_at": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z",
                "customer_id": f"cdnow-{customer}",
                "commerce": {"order_id": f"cdnow-{n}", "quantity": int(cds),
                             "value": float(dollars), "currency": "USD"}}) + "\n")
    out = kizuna(stack, "import", str(path), "--until", "1998-07-02T00:00:00Z",
                 timeout=900).stdout
    assert "accepted: 69659" in out and "rejected: 0" in out, out
    kizuna(stack, "wait", "--timeout", "900", timeout=1000)

    log = pd.DataFrame(rows, columns=["customer", "day", "cds", "dollars"])
    log["date"] = pd.to_datetime(log["day"], format="%Y%m%d")
    log["dollars"] = log["dollars"].astype(float)
    expected = summary_data_from_transaction_data(
        log, "customer", "date", monetary_value_col="dollars", observation_period_end=END)
    got = query_rows(load(Settings, stack), f"""
        SELECT substring(customer_id, 7) AS customer, frequency, recency, monetary_value,
            dateDiff('day', toDate(first_purchase_at), toDate('{END}')) AS T, purchase_count
        FROM kizuna.customer_profiles WHERE startsWith(customer_id, 'cdnow-')""")
    assert len(got) == len(expected) == 23_570
    assert sum(r["purchase_count"] for r in got) == 69_659
    by_customer = {r["customer"]: r for r in got}
    for customer, row in expected.iterrows():
        mine = by_customer[customer]
        assert (mine["frequency"], mine["recency"], mine["T"]) == (
            row["frequency"], row["recency"], row["T"]), customer
        assert mine["monetary_value"] == pytest.approx(row["monetary_value"], abs=1e-6), customer
