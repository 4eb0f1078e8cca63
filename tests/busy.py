"""Keep this machine busy the way another team's stack beside ours would: a second local stack
(its own broker, registry and every stage, on free ports under its own home) taking live
generated traffic through its collector, until stopped (SIGTERM or Ctrl-C).

    python -m tests.busy --rate 300 &   # then run the tests that compare orders; kill %1

`make order-check` runs its repetitions with it beside them.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import KIZUNA, kizuna, stack_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=300, help="live events/s (300)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kz-busy-", dir="/tmp"))
    env = stack_env(home)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        kizuna(env, "up", timeout=600)
        print(f"busy: a second stack under {home}, {args.rate:g} live events/s", flush=True)
        while not stopping:  # the generator's customers over again, live
            traffic = subprocess.Popen(
                [*KIZUNA, "generate", "--customers", "500", "--days", "30", "--out",
                 str(home / "events.jsonl"), "--live", "--rate", str(args.rate),
                 "--duration", "600"], env=env, stdout=subprocess.DEVNULL)
            while traffic.poll() is None and not stopping:
                time.sleep(1)
            traffic.terminate()
            traffic.wait()
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
