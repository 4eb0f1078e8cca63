"""Bounded input has no lateness, and a second import is only delivery (contract section 2):
one generated data set (every channel and persona over a year, identities, carts, churners,
malformed events) imported seven ways, each on a stack of its own: as one file in event-time
order (the reference), ordered by customer, shuffled, as three files of one import, and as
two or three imports one after the other (at random, by channel, by customer), each with
`--until`. Every ClickHouse table comes out identical, row for row.

The stacks run as shipped (`KIZUNA_ALERT_CLOCK=wall`): the year is history, its alert
decisions are recorded, not sent, and a second import corrects them.

`make test` runs three of the ways at a small size; `make order-check` all seven at full size
(KIZUNA_ORDER_ALL_WAYS, KIZUNA_ORDER_CUSTOMERS and KIZUNA_ORDER_DAYS set it).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import zlib
from pathlib import Path

import pytest

from services.common.queries import query_rows
from services.common.settings import Settings, load
from services.generator.cli import write
from tests.conftest import kizuna, services_stack

pytestmark = pytest.mark.integration
CUSTOMERS = int(os.environ.get("KIZUNA_ORDER_CUSTOMERS", "10"))
DAYS = int(os.environ.get("KIZUNA_ORDER_DAYS", "365"))
#: The ways `make test` runs (each a stack of its own); `make order-check` runs all seven.
QUICK_WAYS = ("time", "split", "three_imports_by_channel")
ALL_WAYS = os.environ.get("KIZUNA_ORDER_ALL_WAYS", "") == "1"
#: Each table's rows, without what records when they were processed (receipt, emission).
TABLES = {
    "touchpoints": "SELECT * EXCEPT (received_at) FROM kizuna.touchpoints",
    "sessions": "SELECT * FROM kizuna.sessions",
    "customer_profiles": "SELECT * FROM kizuna.customer_profiles",
    "alerts": "SELECT * EXCEPT (emitted_at) FROM kizuna.alerts",
    "dead_letters": "SELECT * EXCEPT (received_at) FROM kizuna.dead_letters",
}
ROWS_COMPARED = 200_000  # above that, each table's count and content digest


def orders(lines: list[str], events: list[dict], tmp: Path) -> dict[str, list[list[Path]]]:
    """Each way to deliver the same lines: its imports, one after the other, each a list of
    files."""
    rnd = random.Random(5)

    def profile(i: int) -> str:
        e = events[i]
        return str(e.get("customer_id") or e.get("anonymous_id") or "") \
            if isinstance(e, dict) else ""

    def channel(i: int) -> str:
        e = events[i]
        return str(e.get("channel")) if isinstance(e, dict) else ""

    def file(name: str, order: list[int], gzipped: bool = False) -> Path:
        path = tmp / name
        text = "".join(lines[i] for i in order)
        if gzipped:
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
        return path

    index = list(range(len(lines)))
    shuffled = index[:]
    rnd.shuffle(shuffled)
    thirds = [shuffled[k::3] for k in range(3)]
    channels = sorted({channel(i) for i in index})
    out = {
        "time": [[file("time.jsonl", index)]],  # the generator writes in event-time order
        "by_customer": [[file("by_customer.jsonl", sorted(index, key=lambda i: (profile(i), i)))]],
        "shuffled": [[file("shuffled.jsonl", shuffled)]],
        # one import of three files in mixed order, one of them gzipped
        "split": [[file("a.jsonl", sorted(thirds[0], key=lambda i: (profile(i), i))),
                   file("b.jsonl", sorted(thirds[1], reverse=True)),
                   file("c.jsonl.gz", thirds[2], gzipped=True)]],
        # imports one after the other: two at random, three by channel, two by customer
        "two_imports_at_random": [[file(f"random-{k}.jsonl", shuffled[k::2])]
                                  for k in range(2)],
        "three_imports_by_channel": [[file(f"channel-{k}.jsonl", [
            i for i in index if channels.index(channel(i)) % 3 == k])] for k in range(3)],
        "two_imports_by_customer": [[file(f"customer-{k}.jsonl", [
            i for i in index if zlib.crc32(profile(i).encode()) % 2 == k])] for k in range(2)],
    }
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


def test_any_order_and_any_number_of_imports_give_the_tables_of_one_import_in_time_order(
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
    ways = orders(lines, generated.events, tmp_path)
    for tag, (name, imports) in enumerate(ways.items()):
        if not ALL_WAYS and name not in QUICK_WAYS:
            continue
        with services_stack(stack, f"o{tag}", clock="wall") as env:
            accepted = 0
            for paths in imports:
                out = kizuna(env, "import", *map(str, paths), "--until", until,
                             timeout=3600).stdout
                accepted += int(re.search(r"accepted: (\d+)", out)[1])
                kizuna(env, "wait", "--timeout", "1800", timeout=1900)
            assert accepted == len(lines) - generated.malformed, (name, accepted)
            results[name] = tables(load(Settings, env), full)
    expected = results["time"]
    counts = {t: len(rows) if full else rows[0] for t, rows in expected.items()}
    assert counts["touchpoints"] == len(lines) - generated.malformed
    assert all(counts[t] > 0 for t in TABLES), counts
    alerts = [json.loads(r) for r in expected["alerts"]] if full else []
    assert not full or {a["alert_type"] for a in alerts} == {"cart_abandonment", "churn_risk"}
    assert not full or {a["status"] for a in alerts} <= {"historical"}  # a year ago: recorded
    for name, got in results.items():
        for table in TABLES:
            assert got[table] == expected[table], f"{name}: {table} differs from the time order"
