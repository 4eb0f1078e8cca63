"""ClickHouse adapter: one client for the embedded engine (chdb) and for a server (HTTP).

The embedded engine can be opened by one process at a time. In a running local stack the
warehouse owns it and serves read-only queries on its gateway (`/v1/query` on
KIZUNA_WAREHOUSE_PORT); `queries.run_query` uses that gateway when it is up and opens the
engine itself otherwise. What analysts may do is enforced by ClickHouse (`analyst.py`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from services.common.errors import KizunaError, UnreachableError
from services.common.settings import Settings, mask_url

#: `kizuna query --format` names mapped to ClickHouse output formats.
# readonly=2: reads and per-query settings (a timeout) only; ClickHouse refuses writes, DDL and
# any attempt to lower `readonly` itself. It is a property of a reader connection, never passed
# per query: the chdb backend applies per-query settings with SET and restores them afterwards,
# and cannot restore `readonly`, which would leave a shared session read-only.
READONLY = {"readonly": 2}


class QueryError(KizunaError):
    """ClickHouse refused a query (syntax, unknown table, readonly...)."""


def url_user(url: str) -> str | None:
    """The user named in a server URL, if any."""
    return urllib.parse.urlsplit(url).username


def connect(settings: Settings, *, readonly: bool = False,
            user: tuple[str, str] | None = None) -> Client:
    """Open the configured ClickHouse, or raise one clear error line.

    A `readonly` client can only read, whatever SQL it is given: ClickHouse enforces it.
    `user` (name, password) logs in to a server as that user instead of the URL's.
    """
    url = settings.clickhouse_url
    # clickhouse-connect pins urllib3's logger to WARNING on import; its retry warnings repeat
    # what the one error line below says.
    logging.getLogger("urllib3").setLevel(max(logging.ERROR, logging.getLogger().level))
    try:
        if settings.embedded_clickhouse:
            if importlib.util.find_spec("chdb") is None:
                raise UnreachableError(
                    "the embedded ClickHouse (KIZUNA_CLICKHOUSE_URL=chdb://...) needs chdb: "
                    "pip install 'kizuna[embedded]', or set KIZUNA_CLICKHOUSE_URL to a "
                    "ClickHouse server (http(s)://host:8123)")
            settings.chdb_path.parent.mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=f"chdb://{settings.chdb_path}")
            if readonly:  # each chdb client is its own session
                client.command(f"SET readonly = {READONLY['readonly']}")
            return client
        if user is None and (settings.clickhouse_user or settings.clickhouse_password):
            user = (settings.clickhouse_user or url_user(url) or "default",
                    settings.clickhouse_password)
        credentials = dict(username=user[0], password=user[1]) if user else {}
        if settings.clickhouse_ca_location:  # a server over HTTPS with a private CA
            credentials["ca_cert"] = settings.clickhouse_ca_location
        return clickhouse_connect.get_client(
            dsn=url, connect_timeout=5, send_receive_timeout=300,
            settings=dict(READONLY) if readonly else None, **credentials)
    except ClickHouseError as exc:
        message = str(exc).splitlines()[0]
        if settings.embedded_clickhouse:
            raise UnreachableError(
                f"cannot open the embedded ClickHouse at {settings.chdb_path} "
                f"(KIZUNA_CLICKHOUSE_URL): {message}; another process (a running stack's "
                "warehouse?) may hold it: use `kizuna query` or stop it with `kizuna down`"
            ) from None
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        as_user = f" as {user[0]!r}" if user else ""
        raise UnreachableError(
            f"cannot reach ClickHouse{as_user} at {mask_url(url)} (KIZUNA_CLICKHOUSE_URL): "
            f"{errno[1].strip() if errno else message[:200]}; is the server running?"
        ) from None


def gateway_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.warehouse_port}"


def gateway_serves(settings: Settings) -> bool:
    """True when this stack's warehouse is up and owns this embedded engine."""
    try:
        with urllib.request.urlopen(gateway_url(settings) + "/healthz", timeout=1) as resp:
            health = json.load(resp)
    except (OSError, ValueError):
        return False
    return health.get("chdb_path") == str(settings.chdb_path)


def raw_query(client: Client, sql: str, fmt: str, timeout: float | None = None) -> bytes:
    """Run a query on a (read-only) client; ClickHouse renders the result in format `fmt`."""
    settings: dict[str, Any] = {}
    if timeout:
        settings["max_execution_time"] = int(timeout)
    try:
        return client.raw_query(sql, fmt=fmt, settings=settings)
    except ClickHouseError as exc:
        raise QueryError("ClickHouse: " + _first_line(exc)) from None


def gateway_migrate(settings: Settings) -> list[str]:
    """Ask the running warehouse, owner of the embedded engine, to apply pending migrations."""
    return gateway_post(settings, "/v1/migrate")


def gateway_post(settings: Settings, path: str, params: dict[str, str] | None = None) -> Any:
    """A write the running warehouse, owner of the embedded engine, does for a command."""
    query = "?" + urllib.parse.urlencode(params) if params else ""
    request = urllib.request.Request(f"{gateway_url(settings)}{path}{query}", data=b"",
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise KizunaError(exc.read().decode(errors="replace").strip()) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    # clickhouse-connect prefixes errors with a generic line; keep ClickHouse's own message.
    for line in text.splitlines():
        if "Code:" in line or "DB::Exception" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__
