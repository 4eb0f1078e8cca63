"""`make bench-peers` at a small size: Kizuna, Quix Streams, Bytewax and ClickHouse SQL on
the same events, on a stack of its own, and every peer's sessions and totals equal Kizuna's.
The peers run from their own virtualenv (`make .venv-peers/.installed`, which `make test`
builds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def test_every_peer_computes_kizunas_sessions_and_the_table_has_every_engine(tmp_path) -> None:
    assert PEERS_PYTHON.exists(), "the peers' virtualenv is missing: make .venv-peers/.installed"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.run", "--events", "3000", "--peers-python",
         str(PEERS_PYTHON), "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads((tmp_path / "peers.json").read_text())
    checks = {c["engine"]: c for c in found["checks"]}
    assert set(checks) == {"quixstreams", "bytewax", "clickhouse_sql"}
    for check in checks.values():
        assert check["equal"], check
        assert check["sessions"] == check["kizuna_sessions"] > 500
        assert check["customers"] > 20
    results = found["results"]
    for name in ("kizuna", "kizuna_sessionizer", "kizuna_engagement_scorer",
                 "kizuna_sessionizer_batched", "quixstreams", "bytewax", "clickhouse_sql"):
        assert results[name]["events_per_s"] > 0 and results[name]["cpu_s_per_1000"] > 0
        assert results[name]["peak_mib"] > 0
    assert found["meta"]["versions"]["quixstreams"] == "3.28.1"
    assert found["meta"]["versions"]["bytewax"] == "0.21.1"
    table = (tmp_path / "peers.md").read_text()
    assert table.count("| yes (") == 3
