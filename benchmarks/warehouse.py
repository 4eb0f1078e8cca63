"""`make bench-warehouse`: rows/s the warehouse loads into embedded ClickHouse, per table.

Realistic rows: the demo generator's customers run through the pure sessionizer, scorer and
alerting, and every output is encoded as on Kafka (Avro). Per table, two figures:

1. decode: Avro messages -> rows, as the loader builds them (pure Python), in Confluent's wire
   format and in single-object encoding (median of 3 each);
2. insert: rows -> a fresh embedded ClickHouse (chdb via clickhouse-connect), in batches of
   20,000 like the loader's, median of 3 runs into fresh tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.stages import generated_records
from services.alerting.carts import CartRules
from services.alerting.processor import CART, AlertProcessor, alert_record, churn_record
from services.common.serde import ALERT, ENGAGEMENT_PROFILE, SESSION, TOUCHPOINT, default_serde
from services.common.weights_file import load_weights
from services.engagement_scorer.batch import score_batch
from services.sessionizer.processor import (
    PartitionProcessor,
    Touchpoint,
    Watermark,
    handoffs_by_partition,
)
from services.sessionizer.sessions import SessionRules
from services.warehouse import loader

BATCH = 20_000


def outputs(n: int) -> dict[str, tuple[str, list[dict]]]:
    """table -> (schema, records) of everything the pipeline writes for `n` events."""
    found = pipeline_outputs(generated_records(n))
    del found["attributed"]
    return found


def pipeline_outputs(records: list[dict]) -> dict[str, tuple[str | None, list[dict]]]:
    """What the pure stages make of `records`: table -> (schema, records), and "attributed"
    -> (None, the sessionizer's attributed-touches messages, 500 touchpoints each)."""
    sessionizer = PartitionProcessor(SessionRules(), {})
    sessions, attributed = [], []
    echo: list = []  # what the one partition sends itself through the handoff topic

    def process(items: list) -> list:
        out = sessionizer.process(0, echo + items)
        sessions.extend(out.sessions)
        attributed.append({"t": sessionizer.output_time(0), "c": out.attributed})
        return handoffs_by_partition(out, 0, 1, lambda _: 0).get(0, [])

    for i in range(0, len(records), 500):
        echo = process([Touchpoint(r) for r in records[i:i + 500]])
    echo = process([Watermark(2**62)])
    while echo:
        echo = process([])
    weights = load_weights()
    profiles = []
    store: dict = {}
    for message in attributed:
        profiles += score_batch(store, weights, [message]).profiles
    alerting = AlertProcessor(CartRules(), weights, {})
    alerts = []
    for message in attributed + [{"t": 2**61, "c": {}}]:
        for customer, kind, found, snapshot in alerting.process(0, [message]).alerts:
            alerts.append(alert_record(customer, found, snapshot, 0, CartRules())
                          if kind == CART else churn_record(customer, found, snapshot, 0))
    return {"touchpoints": (TOUCHPOINT, records), "sessions_by_id": (SESSION, sessions),
            "customer_profiles": (ENGAGEMENT_PROFILE, profiles), "alerts": (ALERT, alerts),
            "attributed": (None, attributed)}


def measure(n: int) -> dict:
    from benchmarks.memory_registry import MemoryRegistry
    from services.common.serde import SCHEMAS_DIR, AvroSerde, read_schema_files

    schemas = read_schema_files(SCHEMAS_DIR)
    # the loader's decode in both framings; the registry in memory (a real one is asked once
    # per schema id and process, never per value)
    serdes = {"confluent": AvroSerde(schemas, registry=MemoryRegistry()),
              "single-object": default_serde()}
    builders = {table: (build, columns) for _, table, build, columns in loader.LOADS.values()}
    results = {}
    home = Path(tempfile.mkdtemp(prefix="kz-bench-wh-"))
    os.environ["KIZUNA_HOME"] = str(home)
    from services.common.clickhouse import connect
    from services.common.settings import Settings, load
    from services.warehouse.migrations import apply_migrations

    settings = load(Settings)
    client = connect(settings)
    apply_migrations(client, settings)
    try:
        for table, (schema, records) in outputs(n).items():
            build, columns = builders[table]
            decode = {}
            for framing, serde in serdes.items():
                messages = [serde.encode(schema, r) for r in records]
                runs = []
                for _ in range(3):
                    started = time.perf_counter()
                    rows = [build(serde.decode(schema, m)) for m in messages]
                    runs.append(time.perf_counter() - started)
                decode[framing] = round(len(rows) / statistics.median(runs))
            runs = []
            for _ in range(3):
                client.command(f"TRUNCATE TABLE {settings.store_database}.{table}")
                started = time.perf_counter()
                for i in range(0, len(rows), BATCH):
                    client.insert(f"{settings.store_database}.{table}", rows[i:i + BATCH],
                                  column_names=columns)
                runs.append(time.perf_counter() - started)
            insert_s = statistics.median(runs)
            results[table] = {"rows": len(rows), "decode_rows_per_s": decode["confluent"],
                              "decode_rows_per_s_single_object": decode["single-object"],
                              "insert_rows_per_s": round(len(rows) / insert_s),
                              "insert_runs_s": [round(r, 3) for r in runs]}
            r = results[table]
            print(f"{table:<18} {len(rows):>8} rows  decode {decode['confluent']:>9} rows/s "
                  f"(single-object {decode['single-object']:>9})  insert "
                  f"{r['insert_rows_per_s']:>9} rows/s (medians of 3)", flush=True)
    finally:
        client.close()
        shutil.rmtree(home, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", default="out/bench-warehouse.json")
    args = parser.parse_args()
    results = measure(args.events)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
