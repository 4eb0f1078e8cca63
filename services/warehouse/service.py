"""The warehouse process: owner of the ClickHouse connection.

In embedded mode it is the only process that opens the chdb engine, so it also serves
read-only analyst queries for `kizuna query` on its gateway. Every request runs under one lock:
the embedded engine is not safe to share between threads.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from clickhouse_connect.driver.client import Client
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from services.common import logs
from services.common.analyst import (
    AnalystError,
    AnalystQueries,
    analyst_password,
    ensure_server_user,
)
from services.common.clickhouse import QueryError, connect, raw_query
from services.common.errors import KizunaError
from services.common.kafka import ensure_topics
from services.common.settings import WarehouseSettings, load
from services.common.topics import ALERTS_HISTORY
from services.warehouse.compaction import Compactor
from services.warehouse.erase import erase_rows
from services.warehouse.http_interface import serve
from services.warehouse.loader import Loader
from services.warehouse.loader import start as start_loader
from services.warehouse.migrations import apply_migrations

log = logging.getLogger("kizuna.warehouse")

QUERIES = Counter(
    "kizuna_warehouse_gateway_queries", "Analyst queries served by the gateway", ["status"])


class InjectedFault(RuntimeError):
    """A failure `POST /v1/faults` asked for."""


class Warehouse:
    def __init__(self, settings: WarehouseSettings, client: Client, reader: Client) -> None:
        self.settings = settings
        self.client = client  # writes: migrations, and the stage's inserts
        self.reader = reader  # analyst queries: a read-only session
        self.lock = threading.Lock()
        self.faults: list[str] = []  # chaos testing (KIZUNA_WAREHOUSE_FAULT_INJECTION)
        self.loader: Loader | None = None  # started once the HTTP side is up
        common = settings.common
        # embedded: each analyst query on a session of its own, beside the loader
        self.analysts = AnalystQueries(
            lambda: connect(common), settings.query_timeout, settings.analyst_queries,
        ) if common.embedded_clickhouse else None

    def query(self, sql: str, fmt: str) -> bytes:
        """An analyst query (`kizuna query`): on a read-only session of its own in embedded
        mode (`analyst.py`), through the read-only client against a server."""
        if self.analysts is not None:
            try:
                return self.analysts.run(sql, fmt)
            except AnalystError as exc:
                raise QueryError("ClickHouse: " + str(exc)) from None
        with self.lock:
            return raw_query(self.reader, sql, fmt, timeout=self.settings.query_timeout)

    def insert(self, table: str, rows: list, columns: list, token: str | None = None) -> None:
        name = f"{self.settings.common.store_database}.{table}"
        dedup = {"insert_deduplication_token": token} if token else None
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
            if fault == "half":  # an injected fault: half the batch stored, then an error
                if rows[:len(rows) // 2]:
                    self.client.insert(name, rows[:len(rows) // 2], column_names=columns)
                raise InjectedFault(f"injected failure after {len(rows) // 2} of {len(rows)} rows")
            self.client.insert(name, rows, column_names=columns, settings=dedup)
            if fault == "after":  # stored, but the acknowledgement is lost
                raise InjectedFault(f"injected failure after all {len(rows)} rows")

    def erase(self, customer: str) -> dict[str, int]:
        with self.lock:
            return erase_rows(self.client, self.settings.common.store_database, customer)

    def migrate(self) -> list[str]:
        with self.lock:
            applied = apply_migrations(self.client, self.settings.common)
        return [f"{m.version:04d}_{m.name}" for m in applied]

    def health(self) -> dict[str, object]:
        common = self.settings.common
        problem = self.loader.progress.problem() if self.loader is not None else None
        return {
            "stage": "warehouse",
            "status": "ok" if problem is None else "stalled",
            **({"reason": problem} if problem else {}),
            "chdb_path": str(common.chdb_path) if common.embedded_clickhouse else None,
        }


def make_handler(warehouse: Warehouse) -> type[BaseHTTPRequestHandler]:
    embedded = warehouse.settings.common.embedded_clickhouse

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # no per-request log lines
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path in ("/healthz", "/readyz"):
                health = warehouse.health()
                ready = path == "/healthz" or health["status"] == "ok"
                self._send(200 if ready else 503, json.dumps(health).encode())
            elif path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/v1/migrate" and embedded:
                try:
                    self._send(200, json.dumps(warehouse.migrate()).encode())
                except KizunaError as exc:
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc).encode(), "text/plain")
                return
            if url.path == "/v1/faults" and warehouse.settings.fault_injection:
                params = parse_qs(url.query)
                inserts = params.get("inserts", ["0"])[0]
                mode = params.get("mode", ["half"])[0]
                if not inserts.isdigit() or mode not in ("half", "after"):
                    self._send(HTTPStatus.BAD_REQUEST, b"inserts=N&mode=half|after",
                               "text/plain")
                    return
                with warehouse.lock:
                    warehouse.faults = [mode] * int(inserts)
                self._send(200, json.dumps({"failing_inserts": int(inserts),
                                            "mode": mode}).encode())
                return
            if url.path == "/v1/erase" and embedded:
                customer = parse_qs(url.query).get("customer", [""])[0]
                if not customer:
                    self._send(HTTPStatus.BAD_REQUEST, b"customer is required", "text/plain")
                    return
                try:
                    self._send(200, json.dumps(warehouse.erase(customer)).encode())
                except KizunaError as exc:
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc).encode(), "text/plain")
                return
            if url.path != "/v1/query" or not embedded:
                self._send(404, b'{"error": "not found"}')
                return
            fmt = parse_qs(url.query).get("format", ["JSONEachRow"])[0]
            length = int(self.headers.get("Content-Length") or 0)
            sql = self.rfile.read(length).decode("utf-8", errors="replace")
            try:
                body = warehouse.query(sql, fmt)
            except QueryError as exc:
                QUERIES.labels("error").inc()
                self._send(HTTPStatus.BAD_REQUEST, str(exc).encode(), "text/plain")
                return
            QUERIES.labels("ok").inc()
            self._send(200, body, "application/octet-stream")

    return Handler


def main() -> None:
    settings = load(WarehouseSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    client = connect(settings.common)
    applied = apply_migrations(client, settings.common)
    log.info("migrations applied: %s", [f"{m.version:04d}_{m.name}" for m in applied] or "none")
    warehouse = Warehouse(settings, client, connect(settings.common, readonly=True))
    common = settings.common
    # The query gateway exists only in embedded mode, and then only on loopback.
    host = "127.0.0.1" if common.embedded_clickhouse else common.bind_host
    server = ThreadingHTTPServer((host, common.warehouse_port), make_handler(warehouse))
    server.daemon_threads = True

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    if common.embedded_clickhouse:  # analysts' own tools: ClickHouse's HTTP protocol
        http = serve(warehouse.analysts, settings.clickhouse_http_host,
                     settings.clickhouse_http_port, settings.analyst_user,
                     lambda: analyst_password(settings))
    else:  # a server enforces the analyst user's grants itself
        http = None
        ensure_server_user(client, settings)
    # alerting writes this internal topic; the loader reads it from the start either way
    ensure_topics(common, (ALERTS_HISTORY,))
    loader = warehouse.loader = start_loader(common, warehouse.insert, settings.batch_seconds)
    compactor = Compactor(lambda: connect(common), common.store_database,
                          settings.compact_after_seconds).start() \
        if settings.compact_after_seconds else None
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("warehouse ready on %s:%d", host, common.warehouse_port)
    server.serve_forever()
    if http is not None:
        http.shutdown()
    loader.stop()
    if compactor is not None:
        compactor.stop()
    with warehouse.lock:
        warehouse.reader.close()
        client.close()
    log.info("stopped")
