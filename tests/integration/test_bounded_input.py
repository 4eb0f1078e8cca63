"""Bounded input has no lateness (contract section 2): an import gives, in any order of its
files, the results of the same events in event-time order. One generated data set (every
channel and persona, identities, carts, churners, malformed events) is imported five ways,
each on a stack of its own: every ClickHouse table comes out identical, row for row.

`make test` runs it at a small size; `make order-check` at full size (5,000 customers over 90
days; KIZUNA_ORDER_CUSTOMERS and KIZUNA_ORDER_DAYS set it).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from services.common.clickhouse import query_rows
from services.common.settings import Settings, load
from services.generator.cli import write
from tests.conftest import kizuna, services_stack

pytestmark = pytest.mark.integration
CUSTOMERS = int(os.environ.get("KIZUNA_ORDER_CUSTOMERS", "60"))
DAYS = int(os.environ.get("KIZUNA_ORDER_DAYS", "21"))
#: Each table's rows, without what records when they were processed (receipt, emission).
TABLES = {
    "touchpoints": "SELECT * EXCEPT (received_at) FROM kizuna.touchpoints",
    "sessions": "SELECT * FROM kizuna.sessions",
    "customer_profiles": "SELECT * FROM kizuna.customer_profiles",
    "alerts": "SELECT * EXCEPT (emitted_at) FROM kizuna.alerts",
    "dead_letters": "SELECT * EXCEPT (received_at) FROM kizuna.dead_letters",
}
ROWS_COMPARED = 200_000  # above that, each table's count and content digest


def orders(lines: list[str], events: list[dict], tmp: Path) -> dict[str, list[Path]]:
    """The files of each way to deliver the same lines."""
    rnd = random.Random(5)

    def profile(i: int) -> str:
        e = events[i]
        return str(e.get("customer_id") or e.get("anonymous_id") or "") \
            if isinstance(e, dict) else ""

    index = list(range(len(lines)))
    shuffled = index[:]
    rnd.shuffle(shuffled)
    ways = {
        "time": index,  # the generator writes in event-time order
        "by_customer": sorted(index, key=lambda i: (profile(i), i)),
        "reversed": index[::-1],
        "shuffled": shuffled,
    }
    out: dict[str, list[Path]] = {}
    for name, order in ways.items():
        path = tmp / f"{name}.jsonl"
        path.write_text("".join(lines[i] for i in order))
        out[name] = [path]
    # three files of mixed order: by customer, reversed, shuffled; one of them gzipped
    thirds = [shuffled[k::3] for k in range(3)]
    split = tmp / "split"
    split.mkdir()
    (split / "a.jsonl").write_text("".join(lines[i] for i in sorted(
        thirds[0], key=lambda i: (profile(i), i))))
    (split / "b.jsonl").write_text("".join(lines[i] for i in sorted(thirds[1], reverse=True)))
    import gzip
    (split / "c.jsonl.gz").write_bytes(gzip.compress("".join(
        lines[i] for i in thirds[2]).encode()))
    out["split"] = [split]
    return out


def tables(settings: Settings, full: bool) -> dict[str, object]:
    out = {}
    for name, sql in TABLES.items():
        if full:
            rows = query_rows(settings, sql)
            out[name] = sorted(json.dumps(r, sort_keys=True) for r in rows)
        else:
            (row,) = query_rows(settings, f"SELECT count() AS n, sum(cityHash64(*)) AS digest "
                                          f"FROM ({sql})")
            out[name] = (row["n"], row["digest"])
    return out


def test_an_import_in_any_order_gives_the_tables_of_the_events_in_event_time_order(
        stack, tmp_path) -> None:
    events_path = tmp_path / "events.jsonl"
    generated = write(CUSTOMERS, DAYS, 17, events_path, "2025-03-03T00:00:00Z", progress=None)
    lines = events_path.read_text().splitlines(keepends=True)
    assert len(lines) == len(generated.events)
    end = max(e["occurred_at"] for e in generated.events if isinstance(e.get("occurred_at"), int))
    until = f"{(end // 86_400_000 + 2) * 86_400}"
    import datetime as dt
    until = dt.datetime.fromtimestamp(int(until), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    full = len(lines) <= ROWS_COMPARED
    results = {}
    for tag, (name, paths) in enumerate(orders(lines, generated.events, tmp_path).items()):
        with services_stack(stack, f"o{tag}") as env:
            out = kizuna(env, "import", *map(str, paths), "--until", until, timeout=3600).stdout
            assert f"accepted: {len(lines) - generated.malformed}" in out, out
            kizuna(env, "wait", "--timeout", "1800", timeout=1900)
            results[name] = tables(load(Settings, env), full)
    expected = results["time"]
    counts = {t: len(rows) if full else rows[0] for t, rows in expected.items()}
    assert counts["touchpoints"] == len(lines) - generated.malformed
    assert all(counts[t] > 0 for t in TABLES), counts
    alerts = [json.loads(r) for r in expected["alerts"]] if full else []
    assert not full or {a["alert_type"] for a in alerts} == {"cart_abandonment", "churn_risk"}
    for name, got in results.items():
        for table in TABLES:
            assert got[table] == expected[table], f"{name}: {table} differs from the time order"
