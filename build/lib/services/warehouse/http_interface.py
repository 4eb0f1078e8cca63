"""ClickHouse's HTTP interface on the embedded engine, for analysts' own tools.

clickhouse-connect, pandas (through it), SQLAlchemy (its `clickhousedb` dialect), Superset,
Metabase, Grafana's ClickHouse data source, DBeaver and curl speak ClickHouse's HTTP protocol
(https://clickhouse.com/docs/interfaces/http). In embedded mode the engine lives in the
warehouse process, so the warehouse answers that protocol on a port of its own
(KIZUNA_CLICKHOUSE_HTTP_PORT, loopback unless KIZUNA_CLICKHOUSE_HTTP_HOST says otherwise):

- `GET /`, `GET /ping`: `Ok.`; a query in the URL (`?query=`), in the body, or both (the URL's
  part first), as GET or POST;
- `database`, `default_format` (or `FORMAT` in the query), `query_id`; every other URL
  parameter is a setting (`ANALYST_SETTINGS` are applied, others refused by ClickHouse);
  `param_<name>` are query parameters (`{name:Type}` in the query);
- the analyst user (KIZUNA_ANALYST_USER) and password, as `user`/`password` parameters,
  `X-ClickHouse-User`/`X-ClickHouse-Key` headers or Basic authentication;
- a gzip or deflate request body; a gzip, deflate or zstd response when the client asks
  (`enable_http_compression=1` and Accept-Encoding);
- ClickHouse's errors: `Code: N. DB::Exception: ...`, the X-ClickHouse-Exception-Code header
  and the HTTP status a server gives for it; X-ClickHouse-Query-Id, -Format, -Timezone,
  -Summary on every answer.

Every query is an analyst query (`analyst.py`): read-only, enforced by ClickHouse.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hmac
import json
import logging
import threading
import uuid
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import Counter

from services.common.analyst import AnalystError, AnalystQueries

log = logging.getLogger("kizuna.warehouse.http")
QUERIES = Counter("kizuna_warehouse_http_queries", "Queries on the ClickHouse HTTP interface",
                  ["status"])
AUTHENTICATION_FAILED, UNKNOWN_USER = 516, 192
#: URL parameters of the protocol itself, not settings.
PROTOCOL = frozenset({
    "query", "database", "default_format", "user", "password", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression",
    "http_zlib_compression_level", "buffer_size", "wait_end_of_query", "quota_key",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms", "role",
    "cancel_http_readonly_queries_on_client_close", "http_response_buffer_size",
    "stacktrace", "client_protocol_version", "http_write_exception_in_output_format",
    "output_format_parallel_formatting", "http_wait_end_of_query",
})
CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values", "TSV": "text/tab-separated-values",
    "TabSeparatedWithNames": "text/tab-separated-values", "CSV": "text/csv",
    "CSVWithNames": "text/csv", "JSON": "application/json", "JSONEachRow":
    "application/x-ndjson", "JSONCompact": "application/json", "Native":
    "application/octet-stream", "RowBinary": "application/octet-stream", "Arrow":
    "application/octet-stream", "ArrowStream": "application/octet-stream", "Parquet":
    "application/octet-stream",
}
#: HTTP status for ClickHouse's error codes, as a server maps them
#: (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp).
STATUS = {**dict.fromkeys((516, 192, 193, 497, 191), 403), 194: 401, 62: 400, 36: 400,
          60: 404, 46: 404, 47: 404, 81: 404, 115: 404, 73: 404, 159: 408, 202: 503,
          265: 500, 164: 500}


def credentials(headers, params: dict[str, str]) -> tuple[str, str]:
    """(user, password) as ClickHouse takes them: parameters, headers, or Basic auth."""
    user = params.get("user") or headers.get("X-ClickHouse-User")
    password = params.get("password") or headers.get("X-ClickHouse-Key")
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("basic ") and user is None:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    return user or "default", password or ""


def make_handler(queries: AnalystQueries, user: str, password: Callable[[], str]
                 ) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # no per-request log lines
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            accepted = self.headers.get("Accept-Encoding", "")
            if self.compress and body:
                for name, pack in (("zstd", _zstd), ("gzip", gzip.compress),
                                   ("deflate", zlib.compress)):
                    if name in accepted and pack is not None:
                        body = pack(body)
                        headers["Content-Encoding"] = name
                        break
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, error: AnalystError, query_id: str) -> None:
            QUERIES.labels("error").inc()
            body = (str(error).removeprefix("ClickHouse: ") + "\n").encode()
            self._send(STATUS.get(error.code, 500), body, {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(error.code),
                "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC"})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            self._handle(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
            except (OSError, zlib.error) as exc:
                self.compress = False
                self._error(AnalystError(f"Code: 432. DB::Exception: cannot decompress the "
                                         f"request body: {exc} (UNKNOWN_CODEC)", 432), "")
                return
            self._handle(body)

        def _handle(self, body: bytes) -> None:
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            self.compress = params.get("enable_http_compression") in ("1", "true")
            query_id = params.get("query_id") or str(uuid.uuid4())
            sql = params.get("query", "")
            if body:
                sql = f"{sql}\n{body.decode(errors='replace')}" if sql else body.decode(
                    errors="replace")
            if url.path in ("/ping", "/replicas_status") or (url.path == "/" and not sql.strip()):
                self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
                return
            if url.path != "/":
                self._error(AnalystError(f"Code: 0. DB::Exception: there is no handler for "
                                         f"{url.path} (use / or /ping)", 0), query_id)
                return
            who, key = credentials(self.headers, params)
            if who != user or not hmac.compare_digest(key.encode(), password().encode()):
                self._error(AnalystError(
                    f"Code: {AUTHENTICATION_FAILED}. DB::Exception: {who}: Authentication "
                    "failed: password is incorrect, or there is no user with such name. "
                    "(AUTHENTICATION_FAILED)", AUTHENTICATION_FAILED), query_id)
                return
            fmt = params.get("default_format") or self.headers.get("X-ClickHouse-Format")
            database = params.get("database") or self.headers.get("X-ClickHouse-Database")
            settings = {k: v for k, v in params.items() if k not in PROTOCOL}
            try:
                result = queries.run(sql, fmt, database, settings)
            except AnalystError as error:
                self._error(error, query_id)
                return
            QUERIES.labels("ok").inc()
            shown = fmt or "TabSeparated"
            self._send(200, result, {
                "Content-Type": CONTENT_TYPES.get(shown, "text/plain") + "; charset=UTF-8",
                "X-ClickHouse-Format": shown, "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Server-Display-Name": "kizuna",
                "X-ClickHouse-Summary": json.dumps({
                    "read_rows": "0", "read_bytes": "0", "written_rows": "0",
                    "written_bytes": "0", "total_rows_to_read": "0", "result_rows": "0",
                    "result_bytes": str(len(result))})})

    return Handler


def _zstd_pack() -> Callable[[bytes], bytes] | None:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdCompressor().compress


_zstd = _zstd_pack()


def serve(queries: AnalystQueries, host: str, port: int, user: str,
          password: Callable[[], str]) -> ThreadingHTTPServer:
    """Start the interface in a thread of its own; `shutdown()` stops it."""
    server = ThreadingHTTPServer((host, port), make_handler(queries, user, password))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="clickhouse-http", daemon=True).start()
    log.info("ClickHouse HTTP interface on %s:%d (user %s)", host, port, user)
    return server
