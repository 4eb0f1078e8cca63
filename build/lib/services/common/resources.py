"""Where Kizuna's files that are not code are found: the Avro schemas, the ClickHouse
migrations, the analyst queries and the local broker's Maven files.

In a checkout they are where a reader looks for them (`schemas/`, `deploy/...`, `queries/`);
the wheel carries the same directories as package data (`services.schemas`, ... mapped in
pyproject.toml), so an installed Kizuna runs from any directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
#: package data name -> its directory in a checkout
DIRECTORIES = {
    "services.schemas": "schemas",
    "services.migrations": "deploy/clickhouse/migrations",
    "services.queries": "queries",
    "services.localkafka": "deploy/local",
}


def directory(package: str) -> Path:
    """The directory of `package`'s files: the installed package data, else the checkout's
    (an editable install or a plain checkout, where the package data is not a package)."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():  # a directory without __init__.py: a namespace package
            return Path(location)
    return CHECKOUT / DIRECTORIES[package]
