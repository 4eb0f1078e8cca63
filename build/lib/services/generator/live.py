"""`kizuna generate --live --rate R`: the generator's events through the collector's HTTP API,
at R events/s in wall-clock time.

Each event is sent with `occurred_at` set to the moment it leaves (the generated order kept),
so the pipeline sees live traffic: sessions, carts and alerts move with the clock (the
sessionizer's live tick closes them). Requests carry a tenth of a second's events; a `429` or
`503` is retried after its `Retry-After`, never dropped; rejected events are counted by reason.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from services.common.errors import KizunaError
from services.common.settings import IngestSettings
from services.ingest.keys import parse_write_keys, write_keys_spec
from services.ingest.validation import CHANNELS

TICK_S = 0.1


@dataclass
class LiveReport:
    sent: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    retries: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in self.rejected.most_common()) or "none"
        rate = self.sent / self.seconds if self.seconds else 0.0
        return (f"sent {self.sent} events live in {self.seconds:.1f} s ({rate:.0f} events/s): "
                f"{self.accepted} accepted, rejected: {reasons}; {self.retries} retried requests")


def local_key(settings: IngestSettings) -> str:
    """A configured write key that may send every channel (the local stack's one)."""
    keys = parse_write_keys(write_keys_spec(settings))
    for key, source in keys.items():
        if source.channels >= CHANNELS:
            return key
    raise KizunaError("no write key allows every channel: give one with --key, or start the "
                      "local stack (`kizuna up` generates one)")


def send_live(events: Iterable[dict], rate: float, *, host: str, port: int, key: str,
              duration: float | None = None, progress: TextIO | None = sys.stderr) -> LiveReport:
    if rate <= 0:
        raise KizunaError("--rate must be > 0 events/s")
    per_tick = max(1, round(rate * TICK_S))
    report = LiveReport()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.monotonic()
    next_tick, last_note = started, started
    batch: list[dict] = []
    iterator = iter(events)
    try:
        while True:
            if duration is not None and time.monotonic() - started >= duration:
                break
            batch = [e for _, e in zip(range(per_tick), iterator, strict=False)]
            if not batch:
                break
            now_ms = int(time.time() * 1000)
            body = json.dumps({"events": [{**e, "occurred_at": now_ms} for e in batch]})
            _post(conn, body, headers, report, host, port)
            report.sent += len(batch)
            next_tick += len(batch) / rate
            pause = next_tick - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if progress and time.monotonic() - last_note >= 5:
                last_note = time.monotonic()
                progress.write(f"\rlive: {report.sent} sent, {report.accepted} accepted, "
                               f"{sum(report.rejected.values())} rejected")
                progress.flush()
    finally:
        conn.close()
        report.seconds = time.monotonic() - started
        if progress:
            progress.write("\n")
    return report


def _post(conn: http.client.HTTPConnection, body: str, headers: dict, report: LiveReport,
          host: str, port: int) -> None:
    for attempt in range(60):
        try:
            conn.request("POST", "/v1/events", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            if attempt == 59:
                raise KizunaError(f"the collector at {host}:{port} is unreachable: {exc}") from None
            conn.close()
            report.retries += 1
            time.sleep(min(5.0, 0.2 * 2 ** attempt))
            continue
        if response.status in (429, 503):
            report.retries += 1
            time.sleep(float(response.getheader("Retry-After") or 1))
            continue
        if response.status != 202:
            raise KizunaError(f"the collector answered {response.status}: "
                              f"{payload[:300].decode(errors='replace')}")
        answer = json.loads(payload)
        report.accepted += answer.get("accepted", 0)
        for rejection in answer.get("rejected", []):
            report.rejected[rejection.get("reason", "unknown")] += 1
        return
    raise KizunaError("the collector kept refusing the events (429/503) for a minute")
