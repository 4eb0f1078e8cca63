"""What analysts may do: read the Kizuna databases, and nothing of the host.

In embedded mode every analyst query (`kizuna query`, the ClickHouse HTTP interface) runs on
a session of its own, opened for it and closed after it, made read-only by ClickHouse before
the query runs: the settings the client asked for (output formats, limits: `ANALYST_SETTINGS`)
are set first, then `readonly = 1`. From then on ClickHouse itself refuses writes, DDL, any
further setting, and every table function that reaches outside (`file`, `url`, `s3`, `hdfs`,
`remote`, `mysql`, `postgresql`, `executable`, ...).

Two things are left that ClickHouse's local mode (chdb) does not restrict by `readonly`, as a
server does by `user_files_path` and by refusing them on its HTTP interface: the `file()`
*function* (it reads any file of the host) and `INTO OUTFILE` (it writes one). The query is
parsed by ClickHouse (`EXPLAIN AST`) and refused when its tree holds either, with the codes a
ClickHouse server gives (ACCESS_DENIED, INTO_OUTFILE_NOT_ALLOWED). Against a ClickHouse
server none of this is needed: the analyst user has SELECT on the Kizuna databases only
(`ensure_server_user`).

Sessions run beside the loader (chdb runs separate sessions concurrently): a long query does
not stall loading; at most `KIZUNA_ANALYST_QUERIES` run at once, the others wait their turn.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from services.common.clickhouse import QueryError, connect
from services.common.settings import Settings, WarehouseSettings, generate_local_secret, load

#: Settings a client may choose for its query (they shape the output or limit the work):
#: set on the session before it is made read-only. Any other is refused by ClickHouse.
ANALYST_SETTINGS = frozenset({
    "max_result_rows", "max_result_bytes", "result_overflow_mode", "max_rows_to_read",
    "max_bytes_to_read", "read_overflow_mode", "max_block_size", "max_threads",
    "max_memory_usage", "extremes", "join_use_nulls", "session_timezone",
    "date_time_output_format", "output_format_json_quote_64bit_integers",
    "output_format_json_quote_64bit_floats", "output_format_json_quote_denormals",
    "output_format_json_escape_forward_slashes", "output_format_json_named_tuples_as_objects",
    "output_format_decimal_trailing_zeros", "output_format_csv_crlf_end_of_line",
    "format_csv_delimiter", "output_format_tsv_crlf_end_of_line",
    "output_format_pretty_max_rows", "output_format_pretty_color",
    "output_format_arrow_string_as_string", "output_format_arrow_low_cardinality_as_dictionary",
    "output_format_native_encode_types_in_binary_format", "output_format_write_statistics",
    "output_format_json_array_of_rows", "output_format_parquet_string_as_string",
    "low_cardinality_allow_in_native_format", "allow_experimental_analyzer",
    "enable_analyzer", "cast_keep_nullable", "max_execution_time", "timeout_overflow_mode",
    "use_client_time_zone", "query_plan_enable_optimizations", "optimize_read_in_order",
    "output_format_json_validate_utf8", "output_format_native_write_json_as_string",
})
#: ClickHouse's error codes for what is refused here.
ACCESS_DENIED, INTO_OUTFILE_NOT_ALLOWED, READONLY = 497, 265, 164
CODE = re.compile(r"Code: (\d+)")
IDENTIFIER = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Statements with a result (EXPLAIN AST's name of the root), which take a FORMAT.
OUTPUT_QUERIES = ("Select", "Show", "Describe", "Exists", "Explain", "Check")
OWN_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)


class AnalystError(QueryError):
    """A query refused or failed, with ClickHouse's error code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        found = CODE.search(message)
        self.code = code if code is not None else int(found[1]) if found else 0


def password_file(settings: WarehouseSettings) -> Path:
    """Where local mode keeps the analyst's generated password."""
    return settings.common.home / "analyst_password"


def ensure_local_password(settings: WarehouseSettings) -> None:
    """Local mode without KIZUNA_ANALYST_PASSWORD: one generated, kept under KIZUNA_HOME."""
    if not settings.analyst_password:
        generate_local_secret(password_file(settings), secrets.token_urlsafe(18) + "\n")


def analyst_password(settings: WarehouseSettings) -> str:
    if settings.analyst_password:
        return settings.analyst_password
    path = password_file(settings)
    return path.read_text().strip() if path.exists() else ""


def literal(value: object) -> str:
    """A ClickHouse string literal (SET converts it to the setting's type)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def inspect(session: Client, sql: str) -> tuple[AnalystError | None, bool | None]:
    """What chdb's local mode would do with `sql` that a server refuses (module doc): the
    refusal, or None; and whether the query names its own FORMAT (None: not a query EXPLAIN
    takes, such as SHOW). ClickHouse parses the query; its tree is read, not the SQL."""
    try:
        tree = session.raw_query(f"EXPLAIN AST {sql}", fmt=None).decode()
    except ClickHouseError:
        return None, None  # ClickHouse judges it when it runs
    lines = tree.splitlines()
    root = [line for line in lines[1:] if line.startswith(" ") and not line.startswith("  ")]
    if any(line.startswith(" Literal") for line in root):  # the query's own output file
        return AnalystError(
            f"Code: {INTO_OUTFILE_NOT_ALLOWED}. DB::Exception: INTO OUTFILE is not allowed "
            "(INTO_OUTFILE_NOT_ALLOWED)", INTO_OUTFILE_NOT_ALLOWED), None
    if any(line.strip().lower().startswith("function file ") for line in lines):
        return AnalystError(
            f"Code: {ACCESS_DENIED}. DB::Exception: the file function reads files of the host; "
            "analysts read the Kizuna databases only (ACCESS_DENIED)", ACCESS_DENIED), None
    if not lines[0].startswith(OUTPUT_QUERIES):
        return None, True  # SET, INSERT, DDL...: no FORMAT of ours (ClickHouse refuses them)
    return None, any(line.startswith(" Identifier") for line in root)


class AnalystQueries:
    """Read-only analyst queries on the embedded engine, each on a session of its own."""

    def __init__(self, open_session: Callable[[], Client], timeout: float,
                 concurrency: int) -> None:
        self.open_session = open_session
        self.timeout = timeout
        self.turns = threading.BoundedSemaphore(concurrency)

    def run(self, sql: str, fmt: str | None = None, database: str | None = None,
            settings: Mapping[str, str] | None = None) -> bytes:
        """The query's result: in its own FORMAT if it names one, else in `fmt` (default
        TabSeparated); or an AnalystError with ClickHouse's code and message."""
        with self.turns:
            try:
                session = self.open_session()
            except ClickHouseError as exc:
                raise AnalystError(_first_line(exc)) from None
            try:
                return self._run(session, sql, fmt, database, dict(settings or {}))
            finally:
                session.close()

    def _run(self, session: Client, sql: str, fmt: str | None, database: str | None,
             settings: dict[str, str]) -> bytes:
        try:
            timeout = float(settings.pop("max_execution_time", self.timeout) or self.timeout)
            session.command(f"SET max_execution_time = {min(timeout, self.timeout):g}")
            for name, value in settings.items():
                if name in ANALYST_SETTINGS:
                    session.command(f"SET {name} = {literal(value)}")
            if database:
                if not IDENTIFIER.match(database):
                    raise AnalystError(f"Code: 81. DB::Exception: Database {database} does not "
                                       "exist. (UNKNOWN_DATABASE)", 81)
                session.command(f"USE {database}")
            session.command("SET readonly = 1")  # from here on, ClickHouse refuses the rest
            refused, named = inspect(session, sql)
            if refused is not None:
                raise refused
            if named is None:  # SHOW, DESCRIBE...: FORMAT, when given, ends the statement
                named = bool(OWN_FORMAT.search(sql))
            others = {k: v for k, v in settings.items() if k not in ANALYST_SETTINGS}
            return session.raw_query(sql, fmt=None if named else fmt or "TabSeparated",
                                     settings=others or None)
        except ClickHouseError as exc:
            raise AnalystError(_first_line(exc)) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "Code:" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__


def analyst_client(settings: Settings) -> Client:
    """A client of the ClickHouse server as the analyst user (KIZUNA_ANALYST_USER), whose
    grants are SELECT on the Kizuna databases only (`ensure_server_user`); the user is made
    readonly=1 by the server."""
    warehouse = load(WarehouseSettings)
    return connect(settings, user=(warehouse.analyst_user, analyst_password(warehouse)))


def ensure_server_user(client: Client, settings: WarehouseSettings) -> None:
    """With a ClickHouse server: the analyst user, read-only, with SELECT on the Kizuna
    databases and nothing else (ClickHouse's grants refuse the rest: table functions need
    grants of their own)."""
    common = settings.common
    user, password = settings.analyst_user, analyst_password(settings)
    if not IDENTIFIER.match(user) or not password:
        return
    client.command(f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_password BY "
                   f"{literal(password)} SETTINGS readonly = 1")
    client.command(f"ALTER USER {user} IDENTIFIED WITH sha256_password BY {literal(password)}")
    client.command(f"GRANT SELECT ON {common.clickhouse_database}.* TO {user}")
    client.command(f"GRANT SELECT ON {common.store_database}.* TO {user}")
