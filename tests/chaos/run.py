"""`make chaos`: the fault matrix on stacks of its own; a summary table, out/chaos.json and
out/chaos.md.

Each row: one fault injected mid-stream into a copy of the same generated customers (at
least 100,000 events, so each fault lands in the middle of a backlog), compared row by row
with a clean copy: events lost, duplicates visible, time to catch up, and whether every
table came out the same. Two matrices: the stages and the warehouse on one broker, and the
cluster's faults on a local 3-node KRaft cluster (replication factor 3, min.insync.replicas 2).

    python -m tests.chaos.run                       # both matrices
    python -m tests.chaos.run --matrix cluster      # one of them
    python -m tests.chaos.run --matrix cluster --repeat kill-leader --times 20
    python -m tests.chaos.run --customers 150 --days 5 kill-sessionizer   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from services.localstack.stack import port_free
from tests.chaos import scenarios as sc
from tests.conftest import free_ports, kizuna, stack_env

SEED = 5
KEEP = "--keep" in sys.argv  # leave the stack running for a look at its logs

SINGLE = [
    ("kill-sessionizer", lambda: sc.sigkill("sessionizer"), False),
    ("kill-scorer", lambda: sc.sigkill("engagement_scorer"), False),
    ("kill-alerting", lambda: sc.sigkill("alerting"), False),
    ("kill-collector", sc.CollectorKilled, False),
    ("kill-warehouse", lambda: sc.sigkill("warehouse"), False),
    ("stop-start-sessionizer", lambda: sc.graceful_restart("sessionizer"), False),
    ("stop-start-alerting", lambda: sc.graceful_restart("alerting"), False),
    ("rebalance-sessionizer", lambda: sc.rebalance("sessionizer"), False),
    ("rebalance-scorer", lambda: sc.rebalance("engagement_scorer"), False),
    ("rebalance-alerting", lambda: sc.rebalance("alerting"), False),
    ("broker-restart", lambda: sc.broker_restart, False),
    ("clickhouse-failing", lambda: sc.failing_inserts, False),
    ("poison", lambda: sc.poison, False),
    ("poison-processing", sc.PoisonProcessing, False),
    ("delivered-twice", lambda: None, True),
]
CLUSTER = [
    ("kill-leader", lambda: sc.NodeKilled("leader"), False),
    ("kill-controller", lambda: sc.NodeKilled("controller"), False),
    ("rolling-restart", lambda: sc.rolling_restart, False),
    ("one-node-down", sc.NodeDown, False),
]


def consecutive_free_ports(n: int, avoid: range = range(0)) -> int:
    """The first of `n` consecutive free ports (none of them in `avoid`)."""
    while True:
        (base,) = free_ports(1)
        ports = range(base, base + n)
        if ports[-1] < 65000 and not set(ports) & set(avoid) and all(map(port_free, ports)):
            return base


def cluster_env(home: Path) -> dict[str, str]:
    env = stack_env(home)
    clients = consecutive_free_ports(3)
    controllers = consecutive_free_ports(3, avoid=range(clients, clients + 3))
    env.update(KIZUNA_KAFKA_BROKERS="3", KIZUNA_KAFKA_HEAP="256m",
               KIZUNA_KAFKA_PORT=str(clients), KIZUNA_KAFKA_CONTROLLER_PORT=str(controllers))
    return env


def run_matrix(name: str, matrix: list, events: list[dict], days: int, repeat: int,
               ) -> list[sc.Outcome]:
    home = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="kizuna-chaos-"))
    env = cluster_env(home) if name == "cluster" else stack_env(home)
    outcomes = []
    try:
        kizuna(env, "up", timeout=900)
        clean, expected = sc.run(env, kizuna, tmp, scenario=f"{name}-clean", events=events,
                                 seed=SEED, days=days, slot=1, fault=None)
        outcomes.append(clean)
        slot = 2
        failed = False
        for time in range(1, repeat + 1):
            if failed:
                break  # --keep: the stack as the first failure left it
            for row, make, doubled in matrix:
                scenario = f"{row}-{time}" if repeat > 1 else row  # each copy its own ids
                try:
                    outcome, _ = sc.run(env, kizuna, tmp, scenario=scenario, events=events,
                                        seed=SEED, days=days, slot=slot, fault=make(),
                                        doubled=doubled, expected=expected)
                except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a finding
                    outcome = sc.Outcome(scenario, "?", len(events), -1, -1, -1, False,
                                         f"{type(exc).__name__}: {str(exc)[:300]}")
                slot += 1
                outcomes.append(outcome)
                print(f"{name:<8} {outcome.scenario:<24} {'ok' if outcome.equal else 'FAIL'}"
                      f"  {outcome.recovery_s:>6} s  late {outcome.late}, replays "
                      f"{outcome.replays}  {outcome.faults}  {outcome.detail}", flush=True)
                if KEEP and not outcome.equal:
                    failed = True
                    break
    finally:
        if KEEP:
            print(f"kept for a look: KIZUNA_HOME={home}", flush=True)
        else:
            kizuna(env, "down", check=False)
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--matrix", choices=["single", "cluster", "both"], default="both")
    parser.add_argument("--customers", type=int, default=1650)  # 103,181 events a copy
    parser.add_argument("--days", type=int, default=15)
    parser.add_argument("--repeat", help="run only this row of the matrix, --times times")
    parser.add_argument("--times", type=int, default=20)
    parser.add_argument("rows", nargs="*", help="only these rows (default: all)")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    args = parser.parse_args()
    events = sc.dataset(SEED, args.customers, args.days)
    print(f"{len(events)} events per copy ({args.customers} customers, {args.days} days)",
          flush=True)
    outcomes = []
    for name, matrix in (("single", SINGLE), ("cluster", CLUSTER)):
        if args.matrix not in (name, "both"):
            continue
        wanted = {args.repeat} if args.repeat else set(args.rows)
        rows = [m for m in matrix if not wanted or m[0] in wanted]
        if rows:
            outcomes += run_matrix(name, rows, events, args.days,
                                   args.times if args.repeat else 1)
    table = ["| scenario | fault injected | events | lost | duplicates visible | "
             "recovery (s) | late touchpoints | alerting replays | same results as clean |",
             "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {o.scenario} | {o.faults} | {o.events} | {o.lost} | {o.duplicates_visible} "
              f"| {o.recovery_s} | {o.late} | {o.replays} | "
              f"{'yes' if o.equal else 'NO: ' + o.detail} |" for o in outcomes]
    print("\n".join(table))
    Path("out").mkdir(exist_ok=True)
    suffix = f"-{args.repeat}" if args.repeat else ""
    Path(f"out/chaos{suffix}.json").write_text(json.dumps([o.__dict__ for o in outcomes],
                                                         indent=1))
    Path(f"out/chaos{suffix}.md").write_text("\n".join(table) + "\n")
    return 0 if all(o.equal and o.lost == 0 and o.duplicates_visible == 0
                    for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
