"""The index's schema as numbered SQL files, one folder per database: ``sqlite/`` and ``postgresql/``.

``NNNN_what.sql`` files are applied in order, each once, at start, and recorded in the table
``schema_migrations`` (version, name, applied_at). The backend applies them inside one transaction
that first takes a lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so two nodes or
workers starting at once never both apply one: the second waits, then finds it applied. A schema
change is a new file, never an edit of an applied one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

#: The table that records what was applied (its own statement: it must exist before the others run).
TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    #: One statement each (our files hold no ';' inside a statement).
    statements: tuple[str, ...]


class NewerSchema(Exception):
    """The index was migrated by a newer version of the engine than this one."""


def load(dialect: Dialect) -> list[Migration]:
    """The dialect's migrations, in version order."""
    found: list[Migration] = []
    for item in resources.files(__package__).joinpath(dialect).iterdir():
        match = _NAME.fullmatch(item.name)
        if match is None:
            continue
        text = "\n".join(line for line in item.read_text().splitlines() if not line.lstrip().startswith("--"))
        statements = tuple(s.strip() for s in text.split(";") if s.strip())
        found.append(Migration(int(match[1]), match[2], statements))
    found.sort(key=lambda m: m.version)
    return found


def pending(dialect: Dialect, applied: set[int], where: str) -> list[Migration]:
    """What is still to apply, given the versions applied; NewerSchema when the index knows a version
    this engine does not (an older node started against an index a newer one migrated)."""
    known = load(dialect)
    unknown = applied - {m.version for m in known}
    if unknown:
        raise NewerSchema(
            f"the index at {where} has schema version {max(unknown)}, newer than this swml-engine knows "
            f"({known[-1].version if known else 0}): upgrade this node"
        )
    return [m for m in known if m.version not in applied]
