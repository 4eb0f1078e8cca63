"""`kizuna import`: files of touchpoints through the collector's validation into Kafka.

JSONL: one event per line. CSV: a header line, and a mapping from columns to event fields
(`--mapping FILE`, YAML), by default the columns' own names with dotted paths
(`commerce.value`, `properties.page`, `context.store_id`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from confluent_kafka import Producer

from services.common.errors import KizunaError
from services.common.kafka import check_reachable
from services.common.serde import WATERMARK, default_serde
from services.common.settings import IngestSettings
from services.common.topics import TOUCHPOINTS_RAW
from services.ingest.collector import MessageBuilder, PartitionBatcher
from services.ingest.producer import producer_config
from services.ingest.validation import Enrichment, PiiRedactor, Rejection, validate

SOURCE = "import"
NUMERIC_FIELDS = frozenset({"commerce.value", "commerce.unit_price", "commerce.quantity"})
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
INTEGER = re.compile(r"^-?\d+$")
# A cell a spreadsheet would run as a formula (OWASP CSV injection); negative numbers are fine.
FORMULA = re.compile(r"^[=+@\t\r]|^-(?!\d)")


@dataclass
class ImportReport:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: int = 0  # not acknowledged by Kafka

    def summary(self) -> str:
        lines = [f"accepted: {self.accepted}", f"rejected: {sum(self.rejected.values())}"]
        lines += [f"  {reason}: {n}" for reason, n in self.rejected.most_common()]
        if self.failed:
            lines.append(f"NOT delivered to Kafka: {self.failed}")
        return "\n".join(lines)


Row = tuple[int, bytes, object]  # line number, raw bytes, parsed event or Rejection


def read_jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, line.rstrip(b"\r\n"), json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                yield number, line.rstrip(b"\r\n"), Rejection(
                    "invalid_json", f"line {number}", str(exc)[:200])


def load_mapping(path: Path | None) -> dict:
    if path is None:
        return {"columns": {}, "defaults": {}}
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KizunaError(f"--mapping {path}: {exc}") from None
    if not isinstance(mapping.get("columns", {}), dict) \
            or not isinstance(mapping.get("defaults", {}), dict):
        raise KizunaError(f"--mapping {path}: expected `columns:` and `defaults:` maps")
    return {"columns": mapping.get("columns") or {}, "defaults": mapping.get("defaults") or {}}


def read_csv(path: Path, mapping: dict) -> Iterator[Row]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KizunaError(f"{path}: not UTF-8 (byte {exc.start}); re-export it as UTF-8") \
            from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        return
    columns = [mapping["columns"].get(name, name) for name in header]
    for number, cells in enumerate(reader, 2):
        raw = ",".join(cells).encode()
        if not any(cells):
            continue
        yield number, raw, _row_to_event(columns, cells, mapping["defaults"], number)


def _row_to_event(columns: list[str], cells: list[str], defaults: dict, number: int) -> object:
    if len(cells) != len(columns):
        return Rejection("invalid_row", f"line {number}",
                         f"{len(cells)} cells, the header has {len(columns)}")
    event: dict = {}
    for path, value in defaults.items():
        _put(event, path, value)
    for path, cell in zip(columns, cells, strict=True):
        if path is None or cell == "":
            continue
        if FORMULA.match(cell):
            return Rejection("formula_injection", path,
                             f"line {number}: cell starts like a spreadsheet formula")
        value: object = cell
        if path in NUMERIC_FIELDS or _numeric_text(path) and NUMBER.match(cell):
            try:  # as written: validation judges the type (a fractional quantity is refused)
                value = int(cell) if INTEGER.match(cell) else float(cell)
            except ValueError:
                return Rejection("invalid_type", path, f"line {number}: {cell!r} is not a number")
        _put(event, path, value)
    return event


def _numeric_text(path: str) -> bool:
    """Fields where a numeric-looking cell means a number: epoch ms, properties, context."""
    return path == "occurred_at" or path.startswith(("properties.", "context."))


def _put(event: dict, path: str, value: object) -> None:
    head, _, rest = path.partition(".")
    if rest:
        event.setdefault(head, {})[rest] = value
    else:
        event[head] = value


def import_file(settings: IngestSettings, path: Path, fmt: str, mapping_path: Path | None,
                until_ms: int | None, progress=sys.stderr, batch: int = 500) -> ImportReport:
    if not path.exists():
        raise KizunaError(f"{path}: no such file")
    check_reachable(settings.common)
    rows = read_jsonl(path) if fmt == "jsonl" else read_csv(path, load_mapping(mapping_path))
    messages = MessageBuilder(default_serde(), settings.common.topic_prefix,
                              PiiRedactor(settings.pii_names, settings.pii_salt))
    pii = settings.pii_names
    producer = Producer({**producer_config(settings), "message.timeout.ms": 60000})
    report = ImportReport()
    sent = acknowledged = 0

    def send(topic: str, value: bytes, key: bytes | None, events: int, **kwargs) -> None:
        nonlocal sent

        def delivered(err, _msg) -> None:
            nonlocal acknowledged
            if err is None:
                acknowledged += events

        sent += events
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered, **kwargs)
                return
            except BufferError:
                producer.poll(0.1)

    raw = TOUCHPOINTS_RAW.name(settings.common.topic_prefix)
    partitions = len(producer.list_topics(raw, timeout=10).topics[raw].partitions)
    batcher = PartitionBatcher(raw, partitions, send, size=max(1, batch))
    last_shown = 0.0
    for count, (_, raw, parsed) in enumerate(rows, 1):
        received_at = int(time.time() * 1000)
        result = parsed if isinstance(parsed, Rejection) else validate(
            parsed, Enrichment(SOURCE, received_at, None, pii, settings.pii_salt))
        if isinstance(result, Rejection):
            report.rejected[result.reason] += 1
            topic, key, value, _, _ = messages.rejected(result, SOURCE, raw, received_at)
            send(topic, value, key, 1)
        else:
            report.accepted += 1
            batcher.add(result)
        producer.poll(0)
        now = time.monotonic()
        if progress and now - last_shown > 0.5:
            last_shown = now
            progress.write(f"\rimporting {path.name}: {count} events")
            progress.flush()
    batcher.flush()
    if progress:
        progress.write(f"\rimporting {path.name}: done{' ' * 20}\n")
    if until_ms is not None:
        advance_watermark(producer, settings, until_ms)
    producer.flush(120)
    report.failed = sent - acknowledged
    return report


def advance_watermark(producer: Producer, settings: IngestSettings, until_ms: int) -> None:
    """Move event time on to `until_ms` on every partition of the raw topic."""
    topic = TOUCHPOINTS_RAW.name(settings.common.topic_prefix)
    partitions = producer.list_topics(topic, timeout=10).topics[topic].partitions
    value = default_serde().encode(WATERMARK, {
        "watermark_time": until_ms, "source": SOURCE, "issued_at": int(time.time() * 1000)})
    for partition in partitions:
        producer.produce(topic, value, None, partition=partition,
                         headers={"kizuna-type": WATERMARK})
