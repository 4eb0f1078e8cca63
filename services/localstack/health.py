"""`kizuna status`: how each stage is doing, from its consumer group, its metrics and its log.

- lag: messages on the stage's input topics its consumer group has not committed;
- events/s: the stage's processed-events counter, scraped twice `sample` seconds apart;
- event time: how far event time has reached (the stages that keep it, from their gauge);
- last error: the newest ERROR line (or traceback) in the stage's log.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaException
from prometheus_client.parser import text_string_to_metric_families

from services.common.kafka import group_lag, list_topic_names
from services.common.settings import Settings
from services.localstack import registry
from services.localstack.pipeline import stage_inputs

#: stage -> (port env var, series counting what it processed, label filter)
PROCESSED = {
    "ingest": ("KIZUNA_INGEST_PORT", "kizuna_ingest_events_total", {}),
    "sessionizer": ("KIZUNA_SESSIONIZER_PORT", "kizuna_sessionizer_events_total",
                    {"outcome": "events"}),
    "engagement_scorer": ("KIZUNA_ENGAGEMENT_SCORER_PORT",
                          "kizuna_engagement_scorer_touches_total", {}),
    "alerting": ("KIZUNA_ALERTING_PORT", "kizuna_alerting_touches_total", {}),
    "warehouse": ("KIZUNA_WAREHOUSE_PORT", "kizuna_warehouse_rows_total", {}),
}
#: stage -> gauge of the event time it has reached (seconds)
EVENT_TIME = {"sessionizer": "kizuna_sessionizer_event_time_seconds",
              "alerting": "kizuna_alerting_event_time_seconds"}


@dataclass
class StageHealth:
    lag: int | None = None
    events_per_s: float | None = None
    event_time: str | None = None
    last_error: str | None = None
    #: sessionizer: touchpoints that came behind the allowed lateness and corrected their
    #: sessions, by channel
    late: dict[str, int] | None = None
    #: what its /readyz says when it is not ready: recovering, or stalled and why
    not_ready: str | None = None


def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def readiness(port: int) -> str | None:
    """None when the service's /readyz says ok; else its status and reason."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except ValueError:
            return f"HTTP {exc.code}"
    except (OSError, ValueError):
        return None  # not answering: the process state says more
    if body.get("status") == "ok":
        return None
    return f"{body.get('status')}: {body['reason']}" if body.get("reason") else body.get("status")


def series_total(metrics: dict, name: str, labels: dict) -> float | None:
    samples = metrics.get(name)
    if samples is None:
        return None
    return sum(v for have, v in samples if labels.items() <= have.items())


def last_error(log: str, tail_bytes: int = 200_000) -> str | None:
    path = Path(log)
    if not log or not path.exists():
        return None
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - tail_bytes))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if " ERROR " in line or '"level": "ERROR"' in line or " CRITICAL " in line \
                or line.startswith("Traceback"):
            return line.strip()[:200]
    return None


def missing_source_topics(settings: Settings) -> list[str] | None:
    """The source topics (KIZUNA_SOURCE_TOPICS) the cluster does not have yet; None when it
    cannot be asked."""
    if not settings.source_topic_names:
        return []
    try:
        have = list_topic_names(settings)
    except KafkaException:
        return None
    return [t for t in settings.source_topic_names if t not in have]


def stage_health(settings: Settings, logs: dict[str, str], sample: float) -> dict[str, StageHealth]:
    ports = registry.ports(settings)
    groups = stage_inputs(settings)
    out = {stage: StageHealth() for stage in PROCESSED}
    first = {stage: scrape(ports[env]) for stage, (env, _, _) in PROCESSED.items()}
    started = time.monotonic()
    for stage, health in out.items():
        group = f"{settings.topic_prefix}{stage}"
        if group in groups:
            try:
                health.lag = group_lag(settings, group, groups[group])
            except KafkaException:  # the broker away: lag unknown, shown as "-"
                health.lag = None
        health.last_error = last_error(logs.get(stage, ""))
        if stage != "ingest" or settings.source_topic_names:  # the collector: its source topics
            health.not_ready = readiness(ports[PROCESSED[stage][0]])
    time.sleep(max(0.0, sample - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    for stage, (env, name, labels) in PROCESSED.items():
        second = scrape(ports[env])
        before, after = series_total(first[stage], name, labels), series_total(second, name, labels)
        if before is not None and after is not None and elapsed > 0:
            out[stage].events_per_s = round((after - before) / elapsed, 1)
        if stage == "sessionizer":
            late = second.get("kizuna_sessionizer_late_touchpoints_total", [])
            out[stage].late = {labels["channel"]: int(v) for labels, v in late if v}
        if stage in EVENT_TIME:
            reached = [v for _, v in second.get(EVENT_TIME[stage], []) if v > 0]
            if reached:
                out[stage].event_time = datetime.fromtimestamp(max(reached), UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
    return out
