"""Which index a service uses: :func:`open_index` opens PostgreSQL for a ``--index`` URL, else the
SQLite file under the data directory (the backends: ``index.py``, ``pgindex.py``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from swml_engine.service import migrations
from swml_engine.service.index import Index, IndexOpenError, SqliteIndex
from swml_engine.service.pgindex import PgIndex


async def open_index(url: str | None, data: Path, node: str, *, away_ok: bool = False) -> Index:
    """The index: PostgreSQL at ``url``, else SQLite under ``data``. IndexOpenError says why not.
    ``away_ok``: a PostgreSQL server that does not answer is no error (the service's start: pgindex.py)."""
    if url is not None:
        return await PgIndex.open(url, node=node, away_ok=away_ok)
    try:
        return SqliteIndex(data / "index.sqlite3", node=node)
    except (sqlite3.Error, migrations.NewerSchema) as e:
        raise IndexOpenError(f"cannot open the index {data / 'index.sqlite3'}: {e}") from e
