"""`make bench-import`: what sorting an import by event time costs.

The same generated events (about a million by default) in two files: in event-time order, and
ordered by customer (an `ORDER BY customer_id` export). Each is imported with `kizuna import`
against the local broker (its own stack, the stages stopped so that only the import and the
broker share the machine), alternately, several times: wall time, peak memory of the import
process, and the bytes its sort spilled to disk, with the sort's memory at its default and at
a quarter of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from services.common.settings import Settings, load
from services.generator.cli import write
from services.localstack import supervisor
from tests.conftest import stack_env

ROOT = Path(__file__).resolve().parents[1]
KIZUNA = [sys.executable, "-m", "services.cli"]


def timed_import(env: dict, path: Path, checkout: Path | None = None) -> dict:
    """Wall seconds, peak RSS (MB, sampled every 20 ms) and spill of one `kizuna import`
    (of another checkout's code, when given: `python -m` runs the one in its directory)."""
    started = time.perf_counter()
    proc = subprocess.Popen([*KIZUNA, "import", str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=checkout)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, ps.memory_info().rss)
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"kizuna import {path} failed:\n{out}")
    spilled = re.search(r"sorted in (\d+) runs?, ([\d.]+) MB spilled", out)
    return {"seconds": round(seconds, 2), "peak_mb": round(peak / 2**20, 1),
            "runs": int(spilled[1]) if spilled else 0,
            "spilled_mb": float(spilled[2]) if spilled else 0.0,
            "accepted": int(re.search(r"accepted: (\d+)", out)[1])}


def customer_order(lines: list[str], events: list) -> str:
    """The lines as an `ORDER BY customer_id` export has them (devices' own after)."""
    owner = [str(e.get("customer_id") or e.get("anonymous_id") or "")
             if isinstance(e, dict) else "" for e in events]
    return "".join(lines[i] for i in sorted(range(len(lines)), key=lambda i: (owner[i], i)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=8000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "out" / "bench" / "import.json"))
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also time this checkout's `kizuna import` of the time-ordered "
                             "file, alternately (a git worktree of an earlier commit)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kz-bench-import-", dir="/tmp"))
    by_time = work / "by_time.jsonl"
    generated = write(args.customers, args.days, 3, by_time, "2026-01-05T00:00:00Z",
                      progress=None)
    by_customer = work / "by_customer.jsonl"
    by_customer.write_text(customer_order(by_time.read_text().splitlines(keepends=True),
                                          generated.events))
    del generated

    env = stack_env(work / "home")
    subprocess.run([*KIZUNA, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    settings = load(Settings, env)
    rpc = supervisor.rpc(settings)
    for info in rpc.getAllProcessInfo():  # only the broker and the import on the machine
        if info["name"] != "kafka" and info["statename"] == "RUNNING":
            rpc.stopProcess(info["name"])
    results: dict[str, list[dict]] = {}
    try:
        default_mb = float(os.environ.get("KIZUNA_IMPORT_SORT_MEMORY_MB", "256"))
        for run in range(args.runs):
            plan = [("time_order", by_time, default_mb, None),
                    ("customer_order", by_customer, default_mb, None),
                    ("customer_order_quarter_memory", by_customer, default_mb / 4, None)]
            if args.against:
                plan.append(("time_order_against", by_time, default_mb, args.against))
            for name, path, memory, checkout in plan:
                result = timed_import({**env, "KIZUNA_IMPORT_SORT_MEMORY_MB": str(memory)}, path,
                                      checkout)
                results.setdefault(name, []).append(result)
                print(f"run {run + 1} {name:<32} {result}", flush=True)
    finally:
        subprocess.run([*KIZUNA, "down"], env=env, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    summary = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores", "events": results["time_order"][0]["accepted"],
        "runs": args.runs, "sort_memory_mb": default_mb,
        **{name: {key: median(name, key) for key in ("seconds", "peak_mb", "runs",
                                                     "spilled_mb")}
           for name in results},
        "customer_over_time_order": round(median("customer_order", "seconds")
                                          / median("time_order", "seconds"), 3),
        "all": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        if key != "all":
            print(f"{key:<32} {value}")


if __name__ == "__main__":
    main()
