"""`make chaos`: the whole fault matrix on its own stack; a summary table and out/chaos.json.

Each row: one fault injected mid-stream into a copy of the same generated customers, compared
row by row with a clean copy: events lost, duplicates visible, time to catch up, and whether
every table came out the same.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tests.chaos import scenarios as sc
from tests.conftest import kizuna, stack_env

SEED, CUSTOMERS, DAYS = 5, 150, 5

MATRIX = [
    ("kill-sessionizer", sc.sigkill("sessionizer"), False),
    ("kill-scorer", sc.sigkill("engagement_scorer"), False),
    ("kill-alerting", sc.sigkill("alerting"), False),
    ("kill-collector", sc.CollectorKilled(), False),
    ("kill-warehouse", sc.sigkill("warehouse"), False),
    ("stop-start-sessionizer", sc.graceful_restart("sessionizer"), False),
    ("stop-start-alerting", sc.graceful_restart("alerting"), False),
    ("rebalance-sessionizer", sc.rebalance("sessionizer"), False),
    ("rebalance-scorer", sc.rebalance("engagement_scorer"), False),
    ("rebalance-alerting", sc.rebalance("alerting"), False),
    ("broker-restart", sc.broker_restart, False),
    ("clickhouse-failing", sc.failing_inserts, False),
    ("poison", sc.poison, False),
    ("poison-processing", sc.PoisonProcessing(), False),
    ("delivered-twice", None, True),
]


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="kizuna-chaos-"))
    env = stack_env(home)
    events = sc.dataset(SEED, CUSTOMERS, DAYS)
    outcomes = []
    try:
        kizuna(env, "up", timeout=600)
        clean, expected = sc.run(env, kizuna, tmp, scenario="clean", events=events, seed=SEED,
                                 days=DAYS, slot=1, fault=None)
        outcomes.append(clean)
        wanted = set(sys.argv[1:])  # scenario names; none: all of them
        matrix = [m for m in MATRIX if not wanted or m[0] in wanted]
        for slot, (name, fault, doubled) in enumerate(matrix, start=2):
            try:
                outcome, _ = sc.run(env, kizuna, tmp, scenario=name, events=events, seed=SEED,
                                    days=DAYS, slot=slot, fault=fault, doubled=doubled,
                                    expected=expected)
            except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a finding
                outcome = sc.Outcome(name, "?", len(events), -1, -1, -1, False,
                                     f"{type(exc).__name__}: {str(exc)[:300]}")
            outcomes.append(outcome)
            print(f"{outcome.scenario:<24} {'ok' if outcome.equal else 'FAIL'}  "
                  f"{outcome.detail}", flush=True)
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    table = ["| scenario | fault injected | events | lost | duplicates visible | "
             "recovery (s) | same results as clean |", "|---|---|---|---|---|---|---|"]
    table += [f"| {o.scenario} | {o.faults} | {o.events} | {o.lost} | {o.duplicates_visible} "
              f"| {o.recovery_s} | {'yes' if o.equal else 'NO: ' + o.detail} |"
              for o in outcomes]
    print("\n".join(table))
    Path("out").mkdir(exist_ok=True)
    Path("out/chaos.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    Path("out/chaos.md").write_text("\n".join(table) + "\n")
    return 0 if all(o.equal and o.lost == 0 and o.duplicates_visible == 0
                    for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
