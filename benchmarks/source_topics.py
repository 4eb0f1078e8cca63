"""Users' own topics against `kizuna import`, same run (issue 31): the same generated events,
each a JSON message on a source topic, or lines of a file imported; each way into a fresh
stack of its own on one broker; timed from the moment the stack may take them to `kizuna wait`
returning (everything in ClickHouse): for the topic, creating it and producing the events (as a
user's producer would, one event a message) is inside the time, as reading the file and
producing its batches is for the import.

    python -m benchmarks.source_topics --customers 200 --days 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.generator.cli import write
from tests.conftest import kizuna, services_env, stack_env

ROOT = Path(__file__).resolve().parents[1]


def produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures need it alive
    for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        f.result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "enable.idempotence": True})
    for line in lines:  # one event a message, keyed by nothing, as a producer might
        while True:
            try:
                producer.produce(topic, line)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(120) == 0


def timed_way(broker: dict, tag: str, way: str, events_file: Path, topic: str) -> float:
    extra = {"KIZUNA_SOURCE_TOPICS": f"{topic}=bench:web|app|email|pos|support|social|other"} \
        if way == "topic" else {}
    env = {**services_env(broker, tag), **extra}
    try:
        kizuna(env, "up", timeout=600)
        started = time.monotonic()
        if way == "import":
            kizuna(env, "import", str(events_file), timeout=3600)
        else:
            produce(f"127.0.0.1:{broker['KIZUNA_KAFKA_PORT']}", topic,
                    events_file.read_bytes().splitlines())
        kizuna(env, "wait", "--timeout", "3600", timeout=3700)
        return time.monotonic() - started
    finally:
        kizuna(env, "down", check=False)
        shutil.rmtree(env["KIZUNA_HOME"], ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kz-src-", dir="/tmp"))
    broker = stack_env(home / "broker")
    work = home / "events.jsonl"
    write(args.customers, args.days, 11, work, "2025-03-03T00:00:00Z", progress=None)
    lines = work.read_bytes().splitlines()
    runs = []
    try:
        kizuna(broker, "up", timeout=600)
        for r in range(args.rounds):
            for way in ("topic", "import"):
                seconds = timed_way(broker, f"b{r}{way[0]}", way, work, f"bench-source-{r}")
                runs.append({"round": r, "way": way, "events": len(lines),
                             "seconds": round(seconds, 1),
                             "events_per_s": round(len(lines) / seconds)})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        kizuna(broker, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)
    out = ROOT / "out" / "bench-source-topics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
