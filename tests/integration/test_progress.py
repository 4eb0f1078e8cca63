"""Health tells the truth (contract section 4): a stage that holds a partition with messages
waiting and makes no progress on it says so within KIZUNA_STALL_SECONDS, in its /readyz
(naming the partition), its metric and `kizuna status`; and is ready again once it moves.

The stall is made on purpose: the sessionizer's consumer stops fetching one partition of the
raw topic (what a consumer that lost track of a partition after a leader change looks like),
through its fault-injection page (KIZUNA_FAULT_INJECTION)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import kizuna, services_stack
from tests.integration.test_collector import post

pytestmark = pytest.mark.integration


def readyz(port: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def fault(port: str, action: str, topic: str, partition: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/faults/{action}?topic={topic}&partition={partition}"
    urllib.request.urlopen(url, timeout=5).close()


def test_a_stalled_partition_turns_the_stage_not_ready_naming_it(stack) -> None:
    with services_stack(stack, "stall", KIZUNA_STALL_SECONDS="5") as env:
        port, raw = env["KIZUNA_SESSIONIZER_PORT"], f"{env['KIZUNA_TOPIC_PREFIX']}touchpoints.raw"
        assert readyz(port)[0] == 200
        fault(port, "pause", raw, 0)
        events = [{"event_id": f"stall-{i}", "event_type": "page_view", "channel": "web",
                   "occurred_at": f"2026-02-02T10:{i % 60:02d}:00Z", "customer_id": f"C{i}"}
                  for i in range(40)]  # customers on every partition
        status, _, _ = post(env, "/v1/events", {"events": events})
        assert status == 202
        started, deadline = time.monotonic(), time.monotonic() + 60
        while (found := readyz(port))[0] == 200 and time.monotonic() < deadline:
            time.sleep(1)
        took = time.monotonic() - started
        code, body = found
        assert code == 503 and body["status"] == "stalled", body
        assert f"{raw}[0]" in body["reason"] and f"{raw}[1]" not in body["reason"], body
        assert took < 5 + 15  # the setting, plus a look every 5 s and the batch wait
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'kizuna_stage_stalled_partitions{stage="sessionizer"} 1.0' in metrics
        status_line = next(line for line in kizuna(env, "status", "--sample", "0.2")
                           .stdout.splitlines() if line.startswith("sessionizer"))
        assert "NOT READY: stalled" in status_line and f"{raw}[0]" in status_line
        fault(port, "resume", raw, 0)  # it moves again: ready again
        kizuna(env, "wait", "--timeout", "120")
        deadline = time.monotonic() + 30
        while readyz(port)[0] != 200 and time.monotonic() < deadline:
            time.sleep(1)
        assert readyz(port)[0] == 200
