"""Versioned ClickHouse migrations from `deploy/clickhouse/migrations/`, applied once each.

A migration is `NNNN_name.sql`: statements separated by `;`, with `{db}` (the analyst-facing
database) and `{store}` (storage tables) placeholders. Applied versions are recorded with a
checksum in `{store}.schema_migrations`; editing an applied migration is an error, not a
silent skip. Statements are written to be idempotent (`IF NOT EXISTS`), so a migration cut off
half-way is completed by the next run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from services.common import resources
from services.common.errors import KizunaError
from services.common.settings import Settings

MIGRATIONS_DIR = resources.directory("services.migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(KizunaError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, settings: Settings) -> list[str]:
        sql = self.sql.replace("{db}", settings.clickhouse_database)
        sql = sql.replace("{store}", settings.store_database)
        return split_statements(sql)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split on `;` outside quotes and `--` comments; drop empty statements."""
    statements, current, quote, i = [], [], "", 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(sql):
                current.append(sql[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            continue
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def apply_migrations(client: Client, settings: Settings) -> list[Migration]:
    """Apply pending migrations in order; return those applied now."""
    store = settings.store_database
    client.command(f"CREATE DATABASE IF NOT EXISTS {store}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {store}.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version")
    applied = {
        version: checksum for version, checksum in client.query(
            f"SELECT version, checksum FROM {store}.schema_migrations FINAL").result_rows
    }
    done = []
    for migration in discover():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it "
                    "was applied; add a new migration instead")
            continue
        for statement in migration.statements(settings):
            try:
                client.command(statement)
            except ClickHouseError as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: "
                    f"{str(exc).strip().splitlines()[0]}") from None
        client.insert(
            f"{store}.schema_migrations", [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"])
        done.append(migration)
    return done
