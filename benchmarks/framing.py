"""What the framing costs per value: Confluent's wire format (with a schema registry) against
Avro single-object encoding, for touchpoints and alerts, encode and decode, on the serde the
stages use. The registry is in memory (ids are asked once per process, so a real one adds
nothing per value). Medians of several repeats:

    python -m benchmarks.framing [--events 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.memory_registry import MemoryRegistry
from services.common.serde import SCHEMAS_DIR, AvroSerde, read_schema_files


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    from benchmarks.warehouse import outputs
    from services.warehouse import loader

    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    schemas = read_schema_files(SCHEMAS_DIR)
    serdes = {"single-object": AvroSerde(schemas),
              "confluent": AvroSerde(schemas, registry=MemoryRegistry())}
    builders = {table: build for _, table, build, _ in loader.LOADS.values()}
    print(f"the pipeline's outputs for {args.events:,} generated events, median of "
          f"{args.repeats} runs: µs per value (decode: as the warehouse loader, into a row)")
    for table, (name, batch) in outputs(args.events).items():
        build = builders[table]
        for framing, serde in serdes.items():
            encoded = [serde.encode(name, r) for r in batch]
            enc = timed(lambda s=serde, n=name, b=batch: [s.encode(n, r) for r in b],
                        args.repeats)
            dec = timed(lambda s=serde, n=name, e=encoded, b=build: [b(s.decode(n, v))
                                                                     for v in e],
                        args.repeats)
            print(f"  {table:<17} {len(batch):>7} {framing:<14} encode "
                  f"{enc / len(batch) * 1e6:6.2f}  decode {dec / len(batch) * 1e6:6.2f}  "
                  f"bytes {sum(map(len, encoded)) / len(encoded):6.1f}", flush=True)


if __name__ == "__main__":
    main()
