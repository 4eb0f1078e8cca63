"""`kizuna generate`: the generator's events as JSONL, the truth beside them, with progress."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.common.errors import KizunaError
from services.generator.personas import Generated, generate
from services.ingest.validation import parse_instant


def truth_path(events_path: Path) -> Path:
    return events_path.with_suffix(".truth.json")


def write(customers: int, days: int, seed: int, out: Path, start: str,
          progress=sys.stderr) -> Generated:
    if customers < 1 or days < 1:
        raise KizunaError("--customers and --days must be at least 1")
    try:
        start_ms = parse_instant(start, "--start")
    except ValueError as exc:
        raise KizunaError(str(exc)) from None
    start_ms -= start_ms % (24 * 3600 * 1000)
    generated = generate(customers, days, seed, start_ms)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = len(generated.events)
    with out.open("w") as f:
        for n, event in enumerate(generated.events, 1):
            f.write(json.dumps(event, separators=(",", ":")) + "\n")
            if progress and (n % 20000 == 0 or n == total):
                done = n * 30 // total
                progress.write(f"\rgenerating [{'#' * done}{'.' * (30 - done)}] {n}/{total}")
                progress.flush()
    if progress:
        progress.write("\n")
    truth_path(out).write_text(json.dumps(generated.truth, indent=1, sort_keys=True))
    print(f"{total} events ({generated.malformed} malformed on purpose) for {customers} "
          f"customers over {days} days -> {out}; ground truth -> {truth_path(out)}")
    return generated
