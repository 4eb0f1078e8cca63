"""`kizuna import`: files of touchpoints through the collector's validation into Kafka.

JSONL: one event per line. CSV: a header line, and a mapping from columns to event fields
(`--mapping FILE`, YAML), by default the columns' own names with dotted paths
(`commerce.value`, `properties.page`, `context.store_id`). Files may be gzipped; a directory
stands for the event files under it. The accepted events are sorted by event time before
they are produced (`sorting.py`), so an import's results do not depend on its files' order.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import yaml
from confluent_kafka import Producer

from services.common.errors import KizunaError
from services.common.kafka import check_reachable
from services.common.schema_registry import serde_for
from services.common.serde import DEAD_LETTER, TOUCHPOINT, TOUCHPOINT_BATCH, WATERMARK
from services.common.settings import IngestSettings
from services.common.topics import TOUCHPOINTS_RAW
from services.ingest.collector import MessageBuilder, PartitionBatcher, partition_of
from services.ingest.producer import producer_config
from services.ingest.sorting import Entry, ExternalSorter
from services.ingest.validation import Enrichment, PiiRedactor, Rejection, profile_id, validate

SOURCE = "import"
NUMERIC_FIELDS = frozenset({"commerce.value", "commerce.unit_price", "commerce.quantity"})
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
INTEGER = re.compile(r"^-?\d+$")
# A cell a spreadsheet would run as a formula (OWASP CSV injection); negative numbers are fine.
FORMULA = re.compile(r"^[=+@\t\r]|^-(?!\d)")


#: Rejected events listed one by one (file, line, reason) in the report; the rest are counted.
SHOWN_REJECTIONS = 20


@dataclass
class ImportReport:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: int = 0  # not acknowledged by Kafka
    #: The first rejections: (file:line, reason, detail).
    examples: list[tuple[str, str, str]] = field(default_factory=list)
    runs: int = 0  # sorted runs spilled to disk
    spilled_bytes: int = 0

    def reject(self, rejection: Rejection, where: str) -> None:
        self.rejected[rejection.reason] += 1
        if len(self.examples) < SHOWN_REJECTIONS:
            self.examples.append((where, rejection.reason, rejection.describe()))

    def summary(self) -> str:
        lines = [f"accepted: {self.accepted}", f"rejected: {sum(self.rejected.values())}"]
        lines += [f"  {reason}: {n}" for reason, n in self.rejected.most_common()]
        lines += [f"    {where}: {reason}: {detail}" for where, reason, detail in self.examples]
        if self.runs:
            lines.append(f"sorted in {self.runs} runs, {self.spilled_bytes / 2**20:.1f} MB "
                         "spilled (KIZUNA_IMPORT_SORT_MEMORY_MB)")
        if sum(self.rejected.values()) > len(self.examples):
            lines.append("    (the rest: kizuna query \"SELECT * FROM kizuna.dead_letters\")")
        if self.failed:
            lines.append(f"NOT delivered to Kafka: {self.failed}")
        return "\n".join(lines)


Row = tuple[int, bytes, object]  # line number, raw bytes, parsed event or Rejection


def read_jsonl(path: Path) -> Iterator[Row]:
    with _open(path) as f:
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
    with _open(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader, None)
            if not header:
                return
            columns = [mapping["columns"].get(name, name) for name in header]
            for number, cells in enumerate(reader, 2):
                raw = ",".join(cells).encode()
                if not any(cells):
                    continue
                yield number, raw, _row_to_event(columns, cells, mapping["defaults"], number)
        except UnicodeDecodeError:
            raise KizunaError(f"{path}: not UTF-8 (line {reader.line_num + 1}); re-export it "
                              "as UTF-8") from None


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


@dataclass
class ImportProgress:
    """The two phases on one line: reading (validate, sort, spill) then sending."""

    out: object = None  # a text stream, or None for silence
    shown: float = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is not None and (force or now - self.shown > 0.5):
            self.shown = now
            self.out.write(f"\r{text:<72}")
            self.out.flush()

    def done(self) -> None:
        if self.out is not None:
            self.out.write("\n")
            self.out.flush()


def input_files(paths: list[Path]) -> list[Path]:
    """The files to import: each file given, and every event file under each directory
    (`*.jsonl`, `*.ndjson`, `*.json`, `*.csv`, each optionally `.gz`), by name."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
            if not found:
                raise KizunaError(f"{path}: no event files (*.jsonl, *.csv, optionally .gz)")
            out += found
        elif path.exists():
            out.append(path)
        else:
            raise KizunaError(f"{path}: no such file")
    return out


def _kind(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return None


def _open(path: Path) -> BinaryIO:
    """The file's bytes, through gzip when it is compressed (by its magic bytes)."""
    f = path.open("rb")
    if f.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    return f  # type: ignore[return-value]


def import_file(settings: IngestSettings, path: Path, fmt: str | None, mapping_path: Path | None,
                until_ms: int | None, progress=sys.stderr, batch: int = 500) -> ImportReport:
    """One file or directory: see `import_paths`."""
    return import_paths(settings, [path], fmt, mapping_path, until_ms, progress, batch)


def import_paths(settings: IngestSettings, paths: list[Path], fmt: str | None,
                 mapping_path: Path | None, until_ms: int | None, progress=sys.stderr,
                 batch: int = 500) -> ImportReport:
    """Validate every event of the files, sort the accepted ones by event time (spilling
    sorted runs to disk past the memory setting), then produce them in that order.

    Bounded input has no lateness: whatever order the files hold the events in, the stages
    get them in event-time order, so the results are those of time-ordered data. Rejected
    events go to the dead-letter topic as they are read. An import has no receipt time of
    its own: every event gets the import's start as `received_at`, and its event time is
    `occurred_at` (the clock-skew correction needs the original receipt, which a file does
    not have)."""
    files = input_files(paths)
    check_reachable(settings.common)
    mapping = load_mapping(mapping_path)
    serde = serde_for(settings.common)
    serde.prepare((TOUCHPOINT, TOUCHPOINT_BATCH, WATERMARK, DEAD_LETTER))
    messages = MessageBuilder(serde, settings.common.topic_prefix,
                              PiiRedactor(settings.pii_names, settings.pii_salt))
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

    raw_topic = TOUCHPOINTS_RAW.name(settings.common.topic_prefix)
    partitions = len(producer.list_topics(raw_topic, timeout=10).topics[raw_topic].partitions)
    received_at = int(time.time() * 1000)
    enrich = Enrichment(SOURCE, received_at, None, settings.pii_names, settings.pii_salt,
                        skew_correction=False)
    sorter = ExternalSorter(int(settings.import_sort_memory_mb * 2**20),
                            settings.common.home / "import")
    bar = ImportProgress(progress)
    try:
        count = 0
        for path in files:
            kind = fmt or _kind(path) or "jsonl"
            rows = read_jsonl(path) if kind == "jsonl" else read_csv(path, mapping)
            for line, raw, parsed in rows:
                count += 1
                result = parsed if isinstance(parsed, Rejection) else validate(parsed, enrich)
                if isinstance(result, Rejection):
                    report.reject(result, f"{path.name}:{line}")
                    topic, key, value, _, _ = messages.rejected(result, SOURCE, raw, received_at)
                    send(topic, value, key, 1)
                    producer.poll(0)
                else:
                    report.accepted += 1
                    key = profile_id(result).encode()
                    sorter.add(Entry(result["event_time"], result["event_id"].encode(),
                                     serde.datum(TOUCHPOINT, result),
                                     partition_of(key, partitions), key))
                bar.show(f"reading {path.name}: {count} events, {len(sorter.runs)} runs "
                         "spilled")
        bar.show(f"read {count} events in {len(files)} file(s), {len(sorter.runs)} runs "
                 "spilled", force=True)
        report.spilled_bytes, report.runs = sorter.spilled_bytes, len(sorter.runs)
        batcher = PartitionBatcher(serde, raw_topic, partitions, send, size=max(1, batch))
        for done, entry in enumerate(sorter.sorted(), 1):
            batcher.add_encoded(entry.partition, entry.key, entry.datum)
            if done % 1000 == 0:
                producer.poll(0)
                bar.show(f"sending in event-time order: {done} / {report.accepted}")
        batcher.flush()
        bar.show(f"sent {report.accepted} events in event-time order", force=True)
    finally:
        sorter.close()
        bar.done()
    if until_ms is not None:
        advance_watermark(producer, settings, until_ms)
    producer.flush(120)
    report.failed = sent - acknowledged
    return report


def advance_watermark(producer: Producer, settings: IngestSettings, until_ms: int) -> None:
    """Move event time on to `until_ms` on every partition of the raw topic."""
    topic = TOUCHPOINTS_RAW.name(settings.common.topic_prefix)
    partitions = producer.list_topics(topic, timeout=10).topics[topic].partitions
    value = serde_for(settings.common).encode(WATERMARK, {
        "watermark_time": until_ms, "source": SOURCE, "issued_at": int(time.time() * 1000)})
    for partition in partitions:
        producer.produce(topic, value, None, partition=partition,
                         headers={"kizuna-type": WATERMARK})
