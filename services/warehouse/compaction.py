"""Merges that happen: a table partition that stopped changing is merged into one part.

The contract views read the ReplacingMergeTrees with `FINAL`, which merges a partition's parts
at read time, and ClickHouse's background merges leave several parts per partition for good.
A partition in one part is read with no merge at all (the views set
`do_not_merge_across_partitions_select_final`, exact because every version of a row is in one
partition). So once a partition has had no new part for `KIZUNA_WAREHOUSE_COMPACT_AFTER_SECONDS`
(a past month of touchpoints; every table after an import), the warehouse merges it with
`OPTIMIZE ... PARTITION ... FINAL`, once: reads of history then cost what reading the columns
costs. Partitions still written to are left to ClickHouse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from clickhouse_connect.driver.client import Client
from prometheus_client import Counter

from services.warehouse.loader import LOADS

log = logging.getLogger("kizuna.warehouse.compaction")

COMPACTED = Counter("kizuna_warehouse_partitions_compacted",
                    "Table partitions merged into one part once they stopped changing",
                    ["table"])
FAILURES = Counter("kizuna_warehouse_compaction_failures",
                   "Rounds of compaction that failed (logged; the next round tries again)")
TABLES = sorted({table for _, table, _, _ in LOADS.values()})

QUIET_PARTITIONS = """
SELECT table, partition_id, count() AS parts
FROM system.parts
WHERE database = {store:String} AND active AND table IN {tables:Array(String)}
GROUP BY table, partition_id
HAVING parts > 1 AND max(modification_time) <= now() - toIntervalSecond({quiet:UInt32})
ORDER BY table, partition_id
"""


def quiet_partitions(client: Client, store: str, quiet_seconds: int) -> list[tuple[str, str]]:
    """(table, partition id) of the partitions in several parts with no new part for
    quiet_seconds."""
    rows = client.query(QUIET_PARTITIONS, parameters={
        "store": store, "tables": TABLES, "quiet": quiet_seconds}).result_rows
    return [(table, partition) for table, partition, _ in rows]


def compact(client: Client, store: str, quiet_seconds: int) -> list[tuple[str, str]]:
    """Merge each quiet partition into one part; returns those merged."""
    done = []
    for table, partition in quiet_partitions(client, store, quiet_seconds):
        started = time.monotonic()
        client.command(f"OPTIMIZE TABLE {store}.{table} PARTITION ID "
                       f"{{partition:String}} FINAL", parameters={"partition": partition})
        COMPACTED.labels(table).inc()
        log.info("merged %s partition %s into one part in %.1f s", table, partition,
                 time.monotonic() - started)
        done.append((table, partition))
    return done


class Compactor:
    """Looks for quiet partitions every `every` seconds on a session of its own."""

    def __init__(self, connect: Callable[[], Client], store: str, quiet_seconds: int,
                 every: float = 60.0) -> None:
        self.connect = connect
        self.store = store
        self.quiet_seconds = quiet_seconds
        self.every = every
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="compaction", daemon=True)

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                client = self.connect()
                try:
                    compact(client, self.store, self.quiet_seconds)
                finally:
                    client.close()
            except Exception:  # noqa: BLE001 - the next round tries again; reads stay exact
                FAILURES.inc()
                log.exception("compaction failed; trying again in %.0f s", self.every)

    def start(self) -> Compactor:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
