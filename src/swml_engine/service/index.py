"""The service's index of recordings and calls, in SQLite (``<data>/index.sqlite3``).

The metadata JSON beside each recording stays the record of truth (it survives a crash and is what
recovery repairs); the index is what the HTTP API searches and pages through, kept up to date as each
metadata file is written and rebuilt from the files at start. Calls are indexed as they start, are
answered and end. Every worker process opens the same file (WAL mode: readers never wait on a writer);
each row says which worker owns a live call, so live control reaches it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    recording_id TEXT PRIMARY KEY,
    call_id TEXT,
    state TEXT,
    start_time REAL,
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_call ON recordings (call_id);
CREATE INDEX IF NOT EXISTS recordings_start ON recordings (start_time);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    state TEXT,
    start_time REAL,
    worker TEXT,
    info TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_start ON calls (start_time);
"""


class Index:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        # Workers open the file at the same moment; switching it to WAL is not retried by SQLite's busy
        # timeout, so retry here.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(SCHEMA)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for an index the files rebuild

    def close(self) -> None:
        self._db.close()

    # --- recordings ---------------------------------------------------------------------------------

    def put_recording(self, meta: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO recordings VALUES (?, ?, ?, ?, ?)",
            (meta["recording_id"], meta.get("call_id"), meta.get("state"), meta.get("start_time"), json.dumps(meta)),
        )

    def rebuild(self, root: Path) -> int:
        """Index every recording's metadata file under ``root`` (those a crash or another version left
        out of the index too); returns how many there are."""
        count = 0
        self._db.execute("BEGIN")
        try:
            for path in root.glob("*.json"):
                try:
                    meta = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(meta, dict) and isinstance(meta.get("recording_id"), str):
                    self.put_recording(meta)
                    count += 1
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return count

    def recordings(
        self, *, call_id: str | None = None, state: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        where, args = _filters(call_id=call_id, state=state)
        rows = self._db.execute(
            f"SELECT meta FROM recordings {where} ORDER BY start_time DESC, recording_id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [json.loads(meta) for (meta,) in rows]

    def recording(self, recording_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT meta FROM recordings WHERE recording_id = ?", (recording_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_recording(self, recording_id: str) -> None:
        self._db.execute("DELETE FROM recordings WHERE recording_id = ?", (recording_id,))

    # --- calls ----------------------------------------------------------------------------------------

    def put_call(self, info: dict[str, Any], worker: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?)",
            (info["call_id"], info.get("state"), info.get("start_time"), worker, json.dumps(info)),
        )

    def calls(self, *, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        where, args = _filters(state=state)
        rows = self._db.execute(
            f"SELECT info FROM calls {where} ORDER BY start_time DESC, call_id LIMIT ? OFFSET ?", (*args, limit, offset)
        )
        return [json.loads(info) for (info,) in rows]

    def call(self, call_id: str) -> tuple[dict[str, Any], str] | None:
        """A call and the worker that runs (or ran) it."""
        row = self._db.execute("SELECT info, worker FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        return (json.loads(row[0]), str(row[1])) if row else None

    def end_orphaned_calls(self, before: float) -> int:
        """Calls a stopped or killed process left "live" (started before this service did) are marked
        ended: nothing runs them any more. Returns how many."""
        rows = self._db.execute(
            "SELECT info, worker FROM calls WHERE state != 'ended' AND start_time < ?", (before,)
        ).fetchall()
        for info_text, worker in rows:
            info = json.loads(info_text)
            info.update(state="ended", end_reason=info.get("end_reason") or "service_stopped")
            self.put_call(info, worker)
        return len(rows)


def _filters(**values: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())
