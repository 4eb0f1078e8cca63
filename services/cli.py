"""The `kizuna` command. Each stage adds its subcommands here; errors are one line, exit 1."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from services.common import logs
from services.common.errors import KizunaError
from services.common.settings import (
    ALL_SETTINGS,
    IngestSettings,
    Settings,
    WarehouseSettings,
    describe,
    load,
    mask_url,
    reveal,
)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from services.localstack import stack

    stack.up(settings)
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from services.localstack import stack

    stack.down(settings)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from services.localstack import stack
    from services.localstack.health import missing_source_topics, stage_health

    programs = stack.status(settings)
    if not programs:
        if args.json:
            print("[]")
            return 3
        orphans = len(stack.leftovers(settings))
        hint = f"; {orphans} orphaned process(es): run `kizuna down`" if orphans else ""
        print(f"not running (KIZUNA_HOME={settings.home}){hint}")
        return 3
    running = {p.name for p in programs if p.state == "RUNNING"}
    health = stage_health(settings, {p.name: p.log for p in programs}, args.sample) \
        if any(name.startswith("kafka") for name in running) or not settings.local_kafka else {}
    rows = [{**p.__dict__, **(health[p.name].__dict__ if p.name in health else {})}
            for p in programs]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'program':<18} {'state':<9} {'pid':>7} {'uptime':>8} {'lag':>7} "
              f"{'events/s':>9}  {'event time':<20}  last error")
        for r in rows:
            cell = {k: "-" if r.get(k) is None else str(r[k])
                    for k in ("lag", "events_per_s", "event_time", "last_error")}
            if r.get("not_ready"):  # what /readyz says first: stalled, and on what
                cell["last_error"] = f"NOT READY: {r['not_ready']}"
            print(f"{r['name']:<18} {r['state']:<9} {r['pid']:>7} {r['uptime_seconds']:>7}s "
                  f"{cell['lag']:>7} {cell['events_per_s']:>9}  {cell['event_time']:<20}  "
                  f"{cell['last_error'][:160]}")
        missing = missing_source_topics(settings) if health else None
        if missing:
            print(f"source topics not found (consumed once they exist): {', '.join(missing)}")
        late = health["sessionizer"].late if "sessionizer" in health else None
        if late is not None:
            by_channel = ", ".join(f"{c} {n}" for c, n in sorted(late.items(), key=lambda x: -x[1]))
            print(f"late touchpoints corrected: {sum(late.values())}"
                  + (f" ({by_channel})" if by_channel else "")
                  + " (behind the allowed lateness; see kizuna_sessionizer_lateness_seconds)")
        print(f"(events/s over {args.sample:g} s; logs: {settings.home / 'logs'})")
    return 0 if all(p.state == "RUNNING" for p in programs) else 1


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        from services.common.settings import markdown

        print(markdown(), end="")
        return 0
    seen: set[str] = set()
    rows = []
    for cls in ALL_SETTINGS:
        for env, value, origin, doc in describe(load(cls)):
            if env not in seen:
                seen.add(env)
                rows.append((env, value, origin, doc))
    width = max(len(r[0]) for r in rows)
    for env, value, origin, doc in rows:
        print(f"{env:<{width}}  {value}  [{origin}]")
        if args.verbose:
            print(f"{'':<{width}}  {doc}")
    if args.show_secrets:
        secrets = {env: v for cls in ALL_SETTINGS for env, v in reveal(load(cls))}
        secrets["KIZUNA_CLICKHOUSE_URL"] = settings.clickhouse_url
        from services.ingest.keys import write_keys_spec

        secrets["KIZUNA_WRITE_KEYS"] = write_keys_spec(load(IngestSettings))
        from services.common.analyst import analyst_password

        secrets["KIZUNA_ANALYST_PASSWORD"] = analyst_password(load(WarehouseSettings))
        print("\nsecrets (unmasked):")
        for env, value in secrets.items():
            print(f"{env}={value}")
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.kafka import ensure_topics
    from services.common.schema_registry import register, subjects
    from services.common.topics import PUBLIC_TOPICS, partitions_for

    if args.action == "check":
        from services.common.kafka import replication

        short = 0
        for r in replication(settings):
            below = r.below(settings)
            short += bool(below)
            print(f"{r.topic:<56} replicas={r.replicas} min.insync.replicas={r.min_insync} "
                  f"in sync={r.in_sync}" + (f"  BELOW: {'; '.join(below)}" if below else ""))
        print(f"{short} topic(s) below KIZUNA_REPLICATION_FACTOR={settings.replication_factor}"
              if short else f"every topic at KIZUNA_REPLICATION_FACTOR="
              f"{settings.replication_factor} or above")
        return 1 if short else 0
    if args.action == "create":
        if settings.schema_registry:  # first: a refused schema stops before any topic changes
            for r in register(settings):
                verb = "registered" if r.new_version else "exists"
                print(f"{r.subject.name:<56} {verb:<10} schema id {r.schema_id} "
                      f"(schemas/{r.subject.schema}.avsc)")
        for r in ensure_topics(settings):
            verb = "created" if r.created else "exists"
            print(f"{r.name:<40} {verb:<8} {r.partitions} partition(s) {r.note}".rstrip())
    else:
        for spec in PUBLIC_TOPICS:
            print(f"{spec.name(settings.topic_prefix):<40} key={spec.key:<12} "
                  f"partitions={partitions_for(spec, settings)} cleanup={spec.cleanup_policy}  "
                  f"{spec.doc}")
        if settings.schema_registry:
            print(f"schema registry {mask_url(settings.schema_registry_url)}:")
            for subject in subjects(settings):
                print(f"  {subject.name:<56} schemas/{subject.schema}.avsc")
        else:
            print("no schema registry (KIZUNA_SCHEMA_REGISTRY_URL=none): Avro single-object "
                  "encoding")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from services.common import clickhouse
    from services.warehouse.migrations import apply_migrations

    if settings.embedded_clickhouse and clickhouse.gateway_serves(settings):
        applied = clickhouse.gateway_migrate(settings)
    else:
        client = clickhouse.connect(settings)
        try:
            applied = [f"{m.version:04d}_{m.name}" for m in apply_migrations(client, settings)]
        finally:
            client.close()
    print(f"applied: {', '.join(applied)}" if applied else "up to date")
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.queries import OUTPUT_FORMATS, bind, run_query

    if args.file:
        sql = Path(args.file).read_text()
    elif args.sql:
        sql = args.sql
    else:
        raise KizunaError("give a query: kizuna query \"SELECT ...\" or kizuna query -f FILE")
    if args.param:
        sql = bind(sql, dict(parse_param(p) for p in args.param))
    out = run_query(settings, sql, OUTPUT_FORMATS[args.format])
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


def parse_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise KizunaError(f"--param {text!r}: expected NAME=VALUE")
    return name, value


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest.importer import import_paths
    from services.ingest.validation import parse_instant

    until_ms = None
    if args.until:
        try:
            until_ms = parse_instant(args.until, "--until")
        except ValueError as exc:
            raise KizunaError(str(exc)) from None
    report = import_paths(load(IngestSettings), [Path(p) for p in args.path], args.format,
                          Path(args.mapping) if args.mapping else None, until_ms,
                          batch=args.batch)
    print(report.summary())
    if report.failed:
        raise KizunaError(f"{report.failed} event(s) were not acknowledged by Kafka; "
                          "import the files again (events are deduplicated by event_id)")
    return 0


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from services.localstack.pipeline import wait_caught_up

    lags = wait_caught_up(settings, args.timeout)
    print("caught up: " + ", ".join(f"{group} lag 0" for group in lags))
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from services.generator.cli import write

    generated = write(args.customers, args.days, args.seed, Path(args.out), args.start)
    if args.live:
        from services.generator.live import local_key, send_live

        ingest = load(IngestSettings)
        host = "127.0.0.1" if ingest.common.bind_host in ("0.0.0.0", "::") else \
            ingest.common.bind_host
        report = send_live(generated.events, args.rate, host=host, port=ingest.port,
                           key=args.key or local_key(ingest), duration=args.duration)
        print(report.summary())
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from services.demo import run

    # The demo replays weeks of simulated traffic as if it were live: its alerts are sent as
    # they would have been then (a stack already running keeps its own clock).
    os.environ.setdefault("KIZUNA_ALERT_CLOCK", "event")

    run(settings, customers=args.customers, days=args.days, seed=args.seed,
        out_dir=Path(args.out), start=args.start)
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from benchmarks import suite
    except ImportError:
        raise KizunaError("kizuna bench runs from a clone of the repository (its benchmarks/ "
                          "directory): cd into it, or use `make bench`") from None
    suite.main(args.options)
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from services.alerting.tail import TYPES, tail

    types = [args.type] if args.type else list(TYPES)
    tail(settings, types, args.from_beginning, args.json, args.max, args.idle_timeout)
    return 0


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    from services.common import clickhouse
    from services.localstack.pipeline import wait_caught_up
    from services.warehouse.erase import erase_rows, send_erase

    customer = args.customer
    send_erase(settings, customer)
    print(f"erase record sent; waiting for every stage to forget {customer!r}...")
    wait_caught_up(settings, args.timeout)
    if settings.embedded_clickhouse and clickhouse.gateway_serves(settings):
        deleted = clickhouse.gateway_post(settings, "/v1/erase", {"customer": customer})
    else:
        client = clickhouse.connect(settings)
        try:
            deleted = erase_rows(client, settings.store_database, customer)
        finally:
            client.close()
    print("deleted: " + ", ".join(f"{table} {n}" for table, n in deleted.items()))
    return 0


def cmd_profile(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.queries import query_rows

    rows = query_rows(settings, "SELECT * FROM kizuna.customer_profiles "
                                "WHERE customer_id = {customer_id:String}",
                      {"customer_id": args.customer_id})
    if not rows:
        raise KizunaError(f"no profile for customer {args.customer_id!r} (yet): check the id, "
                          "or run `kizuna wait` after importing")
    p = rows[0]
    if args.json:
        print(json.dumps(p))
        return 0
    if args.html:
        from services.report.pages import customer_page_file

        path = customer_page_file(settings, args.customer_id, Path(args.html))
        print(f"customer view: {path.resolve()}")
        return 0
    print(f"customer {p['customer_id']}  (as of {p['as_of']} UTC, event time)")
    print(f"  engagement   {p['engagement_score']:.2f}  tier {p['tier']}")
    total = sum(abs(v) for v in p["channel_scores"].values()) or 1.0
    for channel, value in sorted(p["channel_scores"].items(), key=lambda x: -abs(x[1])):
        bar = "#" * round(20 * abs(value) / total)
        print(f"    {channel:<8} {value:>9.2f}  {bar}")
    print(f"  last event   {p['last_event_at']}")
    print(f"  purchases    {p['purchase_count']}  revenue {p['total_revenue']:.2f}  "
          f"first {p['first_purchase_at']}  last {p['last_purchase_at']}")
    print(f"  BTYD         frequency {p['frequency']}  recency {p['recency']:g}  T {p['T']:g}  "
          f"monetary_value {p['monetary_value']:.2f}")
    rhythm = p["median_interpurchase_days"]
    print(f"  rhythm       {'-' if rhythm is None else f'{rhythm:g} days between purchases'}")
    top = "  (top 20% by revenue)" if p["top_revenue_20"] else ""
    print(f"  RFM segment  {p['rfm_segment']}{top}")
    print(f"  reach        preferred {p['preferred_channel'] or '-'}; reachable "
          f"{', '.join(p['reachable_channels']) or 'none'}")
    return 0


def version() -> str:
    """The installed package's version (pyproject.toml's)."""
    try:
        return importlib.metadata.version("kizuna")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kizuna", description="Kizuna: streaming customer-engagement pipeline.")
    parser.add_argument("--version", action="version", version=f"kizuna {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    for stage in STAGES:
        add(stage, None, f"run the {stage} stage in the foreground (a container's command)")
    add("up", cmd_up, "start the local stack in the background (idempotent)")
    add("down", cmd_down, "stop everything the local stack runs (idempotent)")
    p = add("status", cmd_status,
            "each program: state, consumer lag, events/s, event time reached, last error")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--sample", type=float, default=2.0,
                   help="seconds between the two scrapes that give events/s (default 2)")
    p = add("config", cmd_config, "print the effective settings, secrets masked")
    p.add_argument("--show-secrets", action="store_true", help="also print secrets unmasked")
    p.add_argument("-v", "--verbose", action="store_true", help="document each setting")
    p.add_argument("--markdown", action="store_true",
                   help="every setting's documentation as a page (docs/configuration.md)")
    p = add("topics", cmd_topics, "create (idempotently), list, or check the replication of "
            "the Kafka topics")
    p.add_argument("action", choices=["create", "list", "check"])
    add("migrate", cmd_migrate, "apply pending ClickHouse migrations (idempotent)")
    p = add("query", cmd_query, "run a read-only SQL query against ClickHouse")
    p.add_argument("sql", nargs="?", help="the query")
    p.add_argument("-f", "--file", help="read the query from a file")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (default), csv with a header line, json (JSON Lines)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a value for the query's {NAME:Type} parameter (repeatable)")
    p = add("import", cmd_import, "validate files of events and send them to Kafka in event time")
    p.add_argument("path", nargs="+",
                   help="JSONL (one event a line) or CSV files, gzipped or not, or directories "
                        "of them; sorted by event time together before they are sent")
    p.add_argument("--format", choices=["jsonl", "csv"],
                   help="of every file (default: from each file's extension)")
    p.add_argument("--mapping", help="CSV column mapping (YAML: columns:, defaults:)")
    p.add_argument("--until", help="then move event time on to this RFC 3339 instant")
    p.add_argument("--batch", type=int, default=500,
                   help="touchpoints per Kafka message, per partition (default 500; 1: one "
                        "touchpoint per message, for consumers that cannot read batches)")
    p = add("alerts", cmd_alerts, "alerts tail: print alerts from the alert topics as they come")
    p.add_argument("action", choices=["tail"])
    p.add_argument("--type", choices=["cart_abandonment", "churn_risk"],
                   help="one alert type (default: both)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start with the oldest alert kept on the topics, not the next new one")
    p.add_argument("--json", action="store_true", help="one JSON object per alert")
    p.add_argument("--max", type=int, help="stop after this many alerts")
    p.add_argument("--idle-timeout", type=float,
                   help="stop after this many seconds without a new alert")
    p = add("erase", cmd_erase,
            "forget a customer: every stage drops their state, every table their rows")
    p.add_argument("--customer", required=True, help="the customer id")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds to wait for the stages (default 300)")
    p = add("profile", cmd_profile, "a customer's profile, with the score's breakdown")
    p.add_argument("customer_id")
    p.add_argument("--json", action="store_true", help="the profile row as JSON")
    p.add_argument("--html", metavar="FILE",
                   help="write the single customer view (every touchpoint, sessions, score "
                        "over time, consent, RFM, alerts) as one self-contained HTML file")
    p = add("generate", cmd_generate,
            "write realistic omnichannel customers' touchpoints (JSONL) and their ground truth")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", default="2026-01-05T00:00:00Z", help="first day (RFC 3339)")
    p.add_argument("--out", default="out/events.jsonl",
                   help="events file; the truth goes beside it (.truth.json)")
    p.add_argument("--live", action="store_true",
                   help="then send the events through the collector's HTTP API, live: "
                        "occurred_at is the moment each leaves")
    p.add_argument("--rate", type=float, default=200, help="with --live: events/s (200)")
    p.add_argument("--duration", type=float, help="with --live: stop after this many seconds")
    p.add_argument("--key", help="with --live: the write key (default: the local stack's)")
    p = add("demo", cmd_demo, "the whole pipeline on generated customers, with a report")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", default="2026-01-05T00:00:00Z", help="first day (RFC 3339)")
    p.add_argument("--out", default="out/demo", help="directory for events and reports")
    p = add("bench", cmd_bench, "measure every stage against the raw-Kafka and faust ceilings "
            "(make bench; options: kizuna bench -- --help)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of benchmarks/suite.py")
    p = add("wait", cmd_wait,
            "return when every stage has consumed everything and ClickHouse holds the results")
    p.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    return parser


#: The stages a container runs: `kizuna <stage>` runs it in the foreground (as
#: `python -m services.<stage>` does), configured from the environment alone.
STAGES = {
    "ingest": "services.ingest.service",
    "sessionizer": "services.sessionizer.app",
    "engagement_scorer": "services.engagement_scorer.app",
    "alerting": "services.alerting.app",
    "warehouse": "services.warehouse.service",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in STAGES:  # a stage: its own logging, its own settings, until stopped
        import importlib

        importlib.import_module(STAGES[args.command]).main()
        return 0
    try:
        settings = load(Settings)
        # The command speaks through its output and one-line errors, not library warnings.
        logs.configure("ERROR" if settings.log_level == "INFO" else settings.log_level,
                       settings.log_format)
        return args.func(args, settings)
    except KizunaError as exc:
        print(f"kizuna: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
