"""Topics -> ClickHouse: batches of rows per table, offsets committed only after the insert.

Delivery is at-least-once; the tables are ReplacingMergeTrees read through `FINAL` views, so
a batch inserted twice (a crash between insert and commit, a retry) shows once. An insert
that fails is retried with the identical batch, with back-off, and nothing is committed
meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException
from prometheus_client import Counter, Gauge

from services.common.kafka import client_config
from services.common.progress import Progress
from services.common.schema_registry import serde_for
from services.common.serde import (
    ALERT,
    DEAD_LETTER,
    ENGAGEMENT_PROFILE,
    SESSION,
    TOUCHPOINT,
    TOUCHPOINT_BATCH,
    DecodeError,
    RegistryError,
)
from services.common.settings import Settings
from services.common.topics import (
    ALERTS_CART_ABANDONMENT,
    ALERTS_CHURN_RISK,
    ALERTS_HISTORY,
    ENGAGEMENT_SCORES,
    SESSIONS,
    TOUCHPOINTS_DLQ,
    TOUCHPOINTS_RAW,
)

log = logging.getLogger("kizuna.warehouse.loader")

ROWS = Counter("kizuna_warehouse_rows", "Rows inserted into ClickHouse", ["table"])
INSERT_FAILURES = Counter("kizuna_warehouse_insert_failures", "Failed inserts", ["table"])
SKIPPED = Counter("kizuna_warehouse_skipped", "Messages not loaded", ["reason"])
LAG = Gauge("kizuna_warehouse_consumer_lag",
            "Messages on the assigned partitions not loaded yet (from the last fetch)")
PAUSED = Gauge("kizuna_warehouse_paused",
               "1 while an insert fails and the loader retries it (nothing is committed)")


def _str_map(values: dict) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


def touchpoint_row(r: dict) -> list:
    c = r.get("commerce") or {}
    return [
        r["event_id"], r["event_type"], r["channel"], r["customer_id"] or r["anonymous_id"],
        r["customer_id"], r["anonymous_id"], r["occurred_at"], r["sent_at"], r["received_at"],
        r["event_time"], None, r["source"], c.get("cart_id"), c.get("order_id"),
        c.get("product_id"), c.get("quantity"), c.get("unit_price"), c.get("value"),
        c.get("currency"), _str_map(r["properties"]), _str_map(r["context"]), 0,
    ]


TOUCHPOINT_COLUMNS = [
    "event_id", "event_type", "channel", "profile_id", "customer_id", "anonymous_id",
    "occurred_at", "sent_at", "received_at", "event_time", "session_id", "source", "cart_id",
    "order_id", "product_id", "quantity", "unit_price", "value", "currency", "properties",
    "context", "version",
]


def session_row(r: dict) -> list:
    return [
        r["session_id"], r["profile_id"], r["customer_id"],
        r["anonymous_ids"][0] if r["anonymous_ids"] else None, r["anonymous_ids"],
        r["started_at"], r["ended_at"], r["event_count"], r["channels"], r["event_type_counts"],
        r["purchase_count"], r["revenue"], r["entry_event_type"], r["exit_event_type"],
        r["status"], r["merged_into"], r["version"],
    ]


SESSION_COLUMNS = [
    "session_id", "profile_id", "customer_id", "anonymous_id", "anonymous_ids", "started_at",
    "ended_at", "event_count", "channels", "event_type_counts", "purchase_count", "revenue",
    "entry_event_type", "exit_event_type", "status", "merged_into", "version",
]


def dead_letter_row(r: dict) -> list:
    return [r["dead_letter_id"], r["reason"], r["detail"], r["stage"], r["source"], r["payload"],
            r["received_at"], r["origin_topic"], r["origin_partition"], r["origin_offset"]]


DEAD_LETTER_COLUMNS = [
    "dead_letter_id", "reason", "detail", "stage", "source", "payload", "received_at",
    "origin_topic", "origin_partition", "origin_offset",
]

def profile_row(r: dict) -> list:
    return [
        r["customer_id"], r["engagement_score"], r["tier"], r["channel_scores"],
        r["last_event_at"], r["purchase_count"], r["total_revenue"], r["first_purchase_at"],
        r["last_purchase_at"], r["frequency"], r["recency"], r["T"], r["monetary_value"],
        r["rfm_segment"], r["top_revenue_20"], r["preferred_channel"],
        r["reachable_channels"], r["median_interpurchase_days"], r["as_of"], r["version"],
    ]


PROFILE_COLUMNS = [
    "customer_id", "engagement_score", "tier", "channel_scores", "last_event_at",
    "purchase_count", "total_revenue", "first_purchase_at", "last_purchase_at", "frequency",
    "recency", "T", "monetary_value", "rfm_segment", "top_revenue_20", "preferred_channel",
    "reachable_channels", "median_interpurchase_days", "as_of", "version",
]

def alert_row(r: dict) -> list:
    cart = r["cart"] or {}
    return [
        r["alert_id"], r["alert_type"], r["status"], r["customer_id"], r["anonymous_id"],
        r["detected_at"], r["emitted_at"], r["reasons"], r["severity"],
        r["evidence_event_ids"], cart.get("cart_id"), cart.get("value"),
        [(i["product_id"], i["quantity"], i["unit_price"]) for i in cart.get("items", [])],
        r["score_snapshot"], r["recommended_channel"], r["recommended_action"], r["version"],
    ]


ALERT_COLUMNS = [
    "alert_id", "alert_type", "status", "customer_id", "anonymous_id", "detected_at",
    "emitted_at", "reasons", "severity", "evidence_event_ids", "cart_id", "cart_value",
    "cart_items", "score_snapshot", "recommended_channel", "recommended_action", "version",
]

#: topic suffix -> (schema, table, row builder, columns)
LOADS = {
    TOUCHPOINTS_RAW.suffix: (TOUCHPOINT, "touchpoints", touchpoint_row, TOUCHPOINT_COLUMNS),
    SESSIONS.suffix: (SESSION, "sessions_by_id", session_row, SESSION_COLUMNS),
    TOUCHPOINTS_DLQ.suffix: (DEAD_LETTER, "dead_letters", dead_letter_row, DEAD_LETTER_COLUMNS),
    ENGAGEMENT_SCORES.suffix: (ENGAGEMENT_PROFILE, "customer_profiles", profile_row,
                               PROFILE_COLUMNS),
    ALERTS_CART_ABANDONMENT.suffix: (ALERT, "alerts", alert_row, ALERT_COLUMNS),
    ALERTS_CHURN_RISK.suffix: (ALERT, "alerts", alert_row, ALERT_COLUMNS),
    ALERTS_HISTORY.suffix: (ALERT, "alerts", alert_row, ALERT_COLUMNS),
}


def dedup_tokens(messages: list, prefix: str) -> dict[str, str]:
    """table -> its batch's insert deduplication token: the offset range of each
    topic-partition the batch's rows came from. A retry of the same batch has the same
    token, so ClickHouse drops it if the first attempt was stored after all."""
    ranges: dict[str, dict[tuple[str, int], list[int]]] = defaultdict(dict)
    for m in messages:
        if m.error() or m.topic()[len(prefix):] not in LOADS:
            continue
        table = LOADS[m.topic()[len(prefix):]][1]
        span = ranges[table].setdefault((m.topic(), m.partition()), [m.offset(), m.offset()])
        span[0], span[1] = min(span[0], m.offset()), max(span[1], m.offset())
    return {table: ";".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(spans.items()))
            for table, spans in ranges.items()}


class Loader:
    def __init__(self, settings: Settings,
                 insert: Callable[[str, list, list, str | None], None],
                 batch_seconds: float) -> None:
        self.settings = settings
        self.batch_seconds = batch_seconds  # a batch is full at 20,000 messages or this
        self.insert = insert  # (table, rows, columns, dedup token): the warehouse's insert
        self.prefix = settings.topic_prefix
        self.serde = serde_for(settings)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        config = {
            **client_config(settings),
            "group.id": f"{self.prefix}warehouse",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 2000,  # pick up topics created after start
        }
        instance = settings.group_instance_id("warehouse")
        if instance:  # a static member (KIZUNA_WORKER_ID)
            config["group.instance.id"] = instance
        self.progress = Progress("warehouse", client_config(settings), settings.stall_seconds)
        self.consumer = Consumer({**config, "error_cb": self.progress.client_error})
        self.taken: dict[tuple[str, int], int] = {}  # the last offset loaded, per partition
        self.next_look = 0.0

    def run(self) -> None:
        self.consumer.subscribe([self.prefix + suffix for suffix in LOADS])
        while not self.stopping.is_set():
            messages = self.consumer.consume(num_messages=20000, timeout=self.batch_seconds)
            self.watch()
            if not messages:
                self.report_lag()
                continue
            batches = self.rows_until_done(messages)
            if batches is None or not self.insert_until_done(
                    batches, dedup_tokens(messages, self.prefix)):
                break  # stopping while ClickHouse fails: commit nothing, redelivered later
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException as exc:  # rebalanced meanwhile: redelivered, absorbed
                if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing new to commit
                    log.warning("offset commit failed: %s", exc)
            for m in messages:
                if not m.error():
                    where = (m.topic(), m.partition())
                    self.taken[where] = max(self.taken.get(where, -1), m.offset())
            self.report_lag()
        self.consumer.close()

    def watch(self) -> None:
        """Every 5 s, the loader's progress on the partitions it holds (progress.py)."""
        if time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + 5
        try:
            held = self.consumer.assignment()
            new = [tp for tp in held if (tp.topic, tp.partition) not in self.taken]
            for tp in self.consumer.committed(new, timeout=5) if new else []:
                self.taken[(tp.topic, tp.partition)] = tp.offset - 1 if tp.offset >= 0 else -1
        except KafkaException:  # the broker away: look again next time
            return
        self.progress.check({(tp.topic, tp.partition): self.taken[(tp.topic, tp.partition)]
                             for tp in held if (tp.topic, tp.partition) in self.taken})

    def report_lag(self) -> None:
        """The lag gauge, from the watermarks of the last fetch (no broker round trip)."""
        try:
            positions = self.consumer.position(self.consumer.assignment())
            lag = 0
            for tp in positions:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    lag += max(0, high - tp.offset)
            LAG.set(lag)
        except KafkaException:
            pass

    def rows_until_done(self, messages: list) -> dict[str, list] | None:
        """The rows of `messages`, waiting with back-off while the schema registry cannot
        tell a writer schema (None when asked to stop meanwhile: nothing is committed)."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                return self.rows(messages)
            except RegistryError as exc:
                PAUSED.set(1)
                log.error("cannot decode without the schema registry, retrying in %.1f s: %s",
                          delay, exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        return None

    def rows(self, messages: list) -> dict[str, list]:
        batches: dict[str, list] = defaultdict(list)
        for m in messages:
            if m.error():
                SKIPPED.labels("kafka_error").inc()
                continue
            kind = next((v for k, v in (m.headers() or ()) if k == "kizuna-type"), None)
            if kind is not None and kind != TOUCHPOINT_BATCH.encode():
                continue  # control records (watermarks)
            if m.value() is None:  # a tombstone (kizuna erase): the rows go by the delete
                SKIPPED.labels("tombstone").inc()
                continue
            schema, table, build, _ = LOADS[m.topic()[len(self.prefix):]]
            try:
                if kind is None:
                    batches[table].append(build(self.serde.decode(schema, m.value())))
                else:  # several touchpoints in one message (bulk imports)
                    batches[table].extend(build(r) for r in self.serde.decode(
                        TOUCHPOINT_BATCH, m.value())["touchpoints"])
            except DecodeError as exc:
                # The raw topic's poison records reach the dead-letter table via the stages.
                SKIPPED.labels(exc.reason).inc()
                log.warning("%s[%d]@%d not loaded: %s", m.topic(), m.partition(), m.offset(), exc)
        return batches

    def insert_until_done(self, batches: dict[str, list],
                          tokens: dict[str, str] | None = None) -> bool:
        """Insert each table's rows, retrying the identical batch with back-off until
        ClickHouse acknowledges it. The batch's dedup token (its topic-partition-offset
        ranges) lets ClickHouse drop a retry of a batch it had in fact stored. False when
        asked to stop before every table took its rows: then nothing may be committed."""
        columns = {table: cols for _, table, _, cols in LOADS.values()}
        tokens = tokens or {}
        delay = 0.5
        pending = dict(batches)
        while pending and not self.stopping.is_set():
            for table in list(pending):
                try:
                    self.insert(table, pending[table], columns[table], tokens.get(table))
                except Exception as exc:  # noqa: BLE001 - any failure: retry the same rows
                    INSERT_FAILURES.labels(table).inc()
                    PAUSED.set(1)
                    log.error("insert into %s failed (%d rows), retrying in %.1f s: %s",
                              table, len(pending[table]), delay, str(exc).splitlines()[0][:300])
                    continue
                ROWS.labels(table).inc(len(pending[table]))
                del pending[table]
            if pending:
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        PAUSED.set(0)
        return not pending

    def stop(self, timeout: float = 30) -> None:
        """Finish the batch in hand, then leave the consumer group (a clean hand-over)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)


def start(settings: Settings, insert: Callable[[str, list, list, str | None], None],
          batch_seconds: float) -> Loader:
    loader = Loader(settings, insert, batch_seconds)
    loader.thread = threading.Thread(target=loader.run, name="loader", daemon=True)
    loader.thread.start()
    return loader
