"""Analysts read data, not the host: `kizuna query` and ClickHouse's HTTP interface on the
embedded engine, driven by the analysts' own clients (clickhouse-connect's HTTP client,
pandas, SQLAlchemy's clickhousedb dialect, plain HTTP as curl sends it)."""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import clickhouse_connect
import pytest
import sqlalchemy as sa
from clickhouse_connect.driver.exceptions import DatabaseError

from services.common.settings import WarehouseSettings, load
from tests.conftest import kizuna

pytestmark = pytest.mark.integration
#: Table functions that reach outside the database; each must be refused by ClickHouse.
OUTSIDE = [
    "file('{secret}', 'LineAsString')", "url('http://127.0.0.1:9/', 'LineAsString')",
    "s3('http://127.0.0.1:9/bucket/key.csv', 'CSV')", "hdfs('hdfs://127.0.0.1:9/x', 'CSV')",
    "remote('127.0.0.1:9', system.one)", "mysql('127.0.0.1:9', 'db', 't', 'u', 'p')",
    "postgresql('127.0.0.1:9', 'db', 't', 'u', 'p')", "executable('ls', 'LineAsString')",
    "sqlite('{secret}', 't')", "azureBlobStorage('http://127.0.0.1:9/a', 'c', 'x.csv')",
    "mongodb('127.0.0.1:9', 'db', 'c', 'u', 'p', 'a String')",
    "jdbc('jdbc:x', 't')", "odbc('DSN=x', 't')",
]


def secret_of(stack: dict) -> Path:
    """The file an attacker wants: the collector's write keys' file, with a marker."""
    path = Path(stack["KIZUNA_HOME"]) / "write_keys"
    if not path.exists():
        path.write_text("never-read=local:web\n")
    return path


@pytest.fixture(scope="module")
def analyst(stack) -> dict:
    warehouse = load(WarehouseSettings, stack)
    password = kizuna(stack, "config", "--show-secrets").stdout.split(
        "KIZUNA_ANALYST_PASSWORD=")[1].split()[0]
    assert password
    return {"host": "127.0.0.1", "port": warehouse.clickhouse_http_port,
            "username": warehouse.analyst_user, "password": password}


def test_kizuna_query_refuses_every_way_out_of_the_database(stack, tmp_path) -> None:
    secret = secret_of(stack)
    content = secret.read_text().split("=")[0]
    for call in OUTSIDE:
        result = kizuna(stack, "query", f"SELECT * FROM {call.format(secret=secret)}",
                        check=False)
        assert result.returncode != 0 and "Code:" in result.stderr, call
        assert content not in result.stdout + result.stderr, call
    scalar = kizuna(stack, "query", f"SELECT file('{secret}')", check=False)
    assert scalar.returncode != 0 and "ACCESS_DENIED" in scalar.stderr
    assert content not in scalar.stdout + scalar.stderr
    out = tmp_path / "written.txt"
    written = kizuna(stack, "query", f"SELECT 1 INTO OUTFILE '{out}'", check=False)
    assert written.returncode != 0 and "INTO_OUTFILE_NOT_ALLOWED" in written.stderr
    assert not out.exists()
    for sql in ("INSERT INTO kizuna_store.alerts (alert_id) VALUES ('x')",
                "DROP TABLE kizuna.alerts", "SET readonly = 0",
                "SELECT 1 SETTINGS readonly = 0"):
        refused = kizuna(stack, "query", sql, check=False)
        assert refused.returncode != 0 and "READONLY" in refused.stderr, sql
    assert "alerts" in kizuna(stack, "query", "SHOW TABLES FROM kizuna").stdout


def post(analyst: dict, sql: str, params: str = "", auth: tuple | None = None,
         headers: dict | None = None) -> tuple[int, bytes, dict]:
    user, password = auth or (analyst["username"], analyst["password"])
    request = urllib.request.Request(
        f"http://{analyst['host']}:{analyst['port']}/?{params}", data=sql.encode(),
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode(), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_the_http_interface_refuses_every_way_out_as_the_analyst(stack, analyst,
                                                                 tmp_path) -> None:
    secret = secret_of(stack)
    content = secret.read_text().split("=")[0]
    for call in OUTSIDE:
        status, body, headers = post(analyst, f"SELECT * FROM {call.format(secret=secret)}")
        assert status >= 400 and body.startswith(b"Code: "), (call, body)
        assert headers["X-ClickHouse-Exception-Code"] == re.match(rb"Code: (\d+)", body)[1].decode()
        assert content.encode() not in body
    status, body, headers = post(analyst, f"SELECT file('{secret}')")
    assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "497"
    out = tmp_path / "written.txt"
    status, body, _ = post(analyst, f"SELECT 1 INTO OUTFILE '{out}'")
    assert status == 500 and b"INTO_OUTFILE_NOT_ALLOWED" in body and not out.exists()
    status, body, _ = post(analyst, "SELECT 1", auth=(analyst["username"], "wrong"))
    assert status == 403 and b"AUTHENTICATION_FAILED" in body
    status, body, _ = post(analyst, "SELECT 1", auth=("default", ""))
    assert status == 403 and b"AUTHENTICATION_FAILED" in body


def test_analysts_tools_read_the_tables_while_the_pipeline_runs(stack, analyst,
                                                                tmp_path) -> None:
    from tests.integration.test_sessionizer import Clock, event

    t0 = Clock.start()
    events = [event(f"an-{i}", t0.replace(minute=i % 60, hour=10 + i // 60), f"AN-{i % 7}",
                    event_type="purchase" if i % 5 == 0 else "page_view",
                    commerce={"value": 10.0} if i % 5 == 0 else None)
              for i in range(300)]
    for e in events:
        if e.get("commerce") is None:
            e.pop("commerce", None)
    path = tmp_path / "analyst.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    kizuna(stack, "import", str(path), "--until",
           t0.replace(hour=20).isoformat().replace("+00:00", "Z"))
    client = clickhouse_connect.get_client(**analyst)
    assert client.command("SELECT currentDatabase()") in ("default", "kizuna")
    # while the stages work on it: queries answer, the loader goes on
    deadline = time.monotonic() + 120
    while True:
        frame = client.query_df("SELECT * FROM kizuna.customer_profiles "
                                "WHERE startsWith(customer_id, 'AN-')")
        if len(frame) == 7 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(frame) == 7 and set(frame["purchase_count"]) == {8, 9}
    with pytest.raises(DatabaseError, match="READONLY"):
        client.command("INSERT INTO kizuna_store.alerts (alert_id) VALUES ('x')")
    with pytest.raises(DatabaseError, match="READONLY"):
        client.command("DROP TABLE kizuna.alerts")
    with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
        clickhouse_connect.get_client(**{**analyst, "password": "wrong"})

    engine = sa.create_engine(
        f"clickhousedb://{analyst['username']}:{analyst['password']}@{analyst['host']}:"
        f"{analyst['port']}/kizuna")
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count() FROM touchpoints WHERE startsWith(event_id, 'an-')")).scalar() == 300
        assert "customer_profiles" in sa.inspect(conn).get_table_names(schema="kizuna")

    # as curl sends it: the query in the URL, a database, a format, compression when asked
    status, body, headers = post(
        analyst, "", "query=SELECT%20count()%20AS%20n%20FROM%20sessions%20WHERE%20"
        "startsWith(customer_id%2C%20'AN-')&database=kizuna&default_format=JSONEachRow"
        "&enable_http_compression=1", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["n"] > 0
    assert headers["X-ClickHouse-Format"] == "JSONEachRow" and headers["X-ClickHouse-Query-Id"]
