"""What differs between SQL databases: types, bulk paths, widening, locks, transient errors.

`flavor_for(engine)` picks one `Flavor`. The base class (`base.py`) works on any SQLAlchemy
dialect; `postgres.py`, `mysql.py` (MySQL and MariaDB) and `sqlite.py` each replace what
their database does better. `SQLAlchemyDestination` decides when each statement runs.
"""

from __future__ import annotations

import sqlalchemy as sa

from .base import MYSQL_NAMES, DataTable, Flavor, UtcTimestamp
from .mysql import MySQL
from .postgres import Postgres
from .sqlite import SQLite

__all__ = [
    "MYSQL_NAMES",
    "DataTable",
    "Flavor",
    "MySQL",
    "Postgres",
    "SQLite",
    "UtcTimestamp",
    "flavor_for",
]


def flavor_for(engine: sa.Engine) -> Flavor:
    name = engine.dialect.name
    kind = Postgres if name == "postgresql" else MySQL if name in MYSQL_NAMES else None
    kind = kind or (SQLite if name == "sqlite" else Flavor)
    flavor = kind(engine)
    flavor.configure(engine)
    return flavor
