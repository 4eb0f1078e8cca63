"""Read-only queries of the `kizuna` command, the report and the tests: `kizuna query`, with
ClickHouse's own query parameters, against this stack's ClickHouse however it is reached: the
running warehouse's gateway (it owns the embedded engine), the engine opened here when no
stack runs, or a server as the analyst user (analyst.py says what an analyst may do)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from services.common.analyst import AnalystError, AnalystQueries, analyst_client
from services.common.clickhouse import QueryError, connect, gateway_serves, gateway_url, raw_query
from services.common.settings import Settings

#: `kizuna query --format` names mapped to ClickHouse output formats.
OUTPUT_FORMATS = {"table": "PrettyCompactMonoBlock", "csv": "CSVWithNames", "json": "JSONEachRow"}


def run_query(settings: Settings, sql: str, fmt: str = "JSONEachRow") -> bytes:
    """Read-only query against this stack's ClickHouse, however it is reached."""
    if settings.embedded_clickhouse and gateway_serves(settings):
        query = urllib.parse.urlencode({"format": fmt})
        request = urllib.request.Request(
            f"{gateway_url(settings)}/v1/query?{query}", data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=600) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise QueryError(exc.read().decode(errors="replace").strip()) from None
    if settings.embedded_clickhouse:  # no stack running: this process opens the engine
        try:
            return AnalystQueries(lambda: connect(settings), 600, 1).run(sql, fmt)
        except AnalystError as exc:
            raise QueryError("ClickHouse: " + str(exc)) from None
    client = analyst_client(settings)  # a server: as the analyst user, its grants
    try:
        return raw_query(client, sql, fmt)
    finally:
        client.close()


_PARAMETER = re.compile(r"\{(\w+):\s*(\w+)\}")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def bind(sql: str, parameters: dict[str, str]) -> str:
    """Fill a query's parameters, written as ClickHouse's own (`{customer_id:String}`, the
    syntax clickhouse-client's `--param_customer_id` and the HTTP interface's
    `param_customer_id` fill too): strings as quoted literals, numbers checked."""
    def literal(match: re.Match) -> str:
        name, kind = match[1], match[2]
        if name not in parameters:
            raise QueryError(f"the query needs a value for {{{name}:{kind}}}: give "
                             f"--param {name}=VALUE")
        value = parameters[name]
        if kind == "String":
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        if re.fullmatch(r"U?Int\d+|Float\d+|Decimal\w*", kind) and _NUMBER.fullmatch(value):
            return value
        raise QueryError(f"parameter {name}: {value!r} is not a {kind}")
    return _PARAMETER.sub(literal, sql)


def query_rows(settings: Settings, sql: str,
               parameters: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Convenience for tools and tests: rows as dicts (JSON types)."""
    out = run_query(settings, sql if parameters is None else bind(sql, parameters),
                    "JSONEachRow")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


