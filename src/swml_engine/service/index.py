"""The service's index of recordings and calls, in SQLite (``<data>/index.sqlite3``).

The metadata JSON beside each recording stays the record of truth (it survives a crash and is what
recovery repairs); the index is what the HTTP API searches and pages through, kept up to date as each
metadata file is written and rebuilt from the files at start. Calls are indexed as they start, are
answered and end. Every worker process opens the same file (WAL mode: readers never wait on a writer);
each row says which worker owns a live call, so live control reaches it.

A write that fails (the disk is full, the file is locked too long) never fails the call or recording
that made it: the row is kept in memory (the newest per recording or call, at most
:data:`MAX_PENDING`) and written with the next write that succeeds; the state says the index is
behind. After :meth:`Index.close` (the service stopping), a call that ends late is not written (the
metadata files have it, and the next start rebuilds from them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from enum import Enum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Rows kept for a later write while the index cannot be written; beyond, the oldest are dropped (the
#: next start rebuilds the recordings from their files).
MAX_PENDING = 10_000
#: While behind, a write tries the waiting rows again at most this often (seconds): each try runs them all.
RETRY_INTERVAL = 1.0

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


class IndexState(Enum):
    #: Writes reach the file.
    OPEN = "open"
    #: A write failed: rows wait in memory for the next write that succeeds.
    BEHIND = "behind"
    #: Closed at shutdown: late writes are dropped.
    CLOSED = "closed"


_RowKey = tuple[str, str]  # ("recording" | "call", id)
_Write = tuple[str, tuple[Any, ...]]  # SQL and its arguments


class Index:
    def __init__(self, path: Path, *, busy_timeout: float = 10.0, retry_interval: float = RETRY_INTERVAL) -> None:
        """``busy_timeout``: how long a write waits for another worker's; ``retry_interval``: how often,
        while behind, a write tries the waiting rows again."""
        self.path = path
        self.state = IndexState.OPEN
        self.retry_interval = retry_interval
        self._pending: dict[_RowKey, _Write] = {}
        self._dropped = 0
        self._next_try = 0.0
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
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
        """Write what waits (once more), then close; later writes are dropped with a debug line."""
        if self.state is IndexState.CLOSED:
            return
        if self._pending:
            self._flush()
        if self._pending:
            log.warning("index closed with %d row(s) unwritten: the next start rebuilds them", len(self._pending))
        self.state = IndexState.CLOSED
        self._db.close()

    @property
    def pending(self) -> int:
        """Rows waiting for a write that succeeds."""
        return len(self._pending)

    def _write(self, key: _RowKey, sql: str, args: tuple[Any, ...]) -> None:
        """Write one row (with every row still waiting), or keep it for the next write."""
        if self.state is IndexState.CLOSED:
            log.debug("index closed: %s %s not written (its file has it)", *key)
            return
        self._pending.pop(key, None)
        self._pending[key] = (sql, args)  # the newest for this row, last in line
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self._dropped += 1
        if self.state is IndexState.OPEN or time.monotonic() >= self._next_try:
            self._flush()

    def _flush(self) -> None:
        try:
            self._db.execute("BEGIN")
            for sql, args in self._pending.values():
                self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            self._next_try = time.monotonic() + self.retry_interval
            if self.state is IndexState.OPEN:
                self.state = IndexState.BEHIND
                log.error(
                    "index %s cannot be written (%s): rows wait to be written with the next change; "
                    "the metadata files stay the record",
                    self.path,
                    e,
                )
            return
        if self.state is IndexState.BEHIND:
            log.warning(
                "index %s written again: %d waiting row(s) caught up%s",
                self.path,
                len(self._pending),
                f", {self._dropped} older ones dropped until the next start" if self._dropped else "",
            )
            self.state = IndexState.OPEN
        self._pending.clear()

    # --- recordings ---------------------------------------------------------------------------------

    def put_recording(self, meta: dict[str, Any]) -> None:
        """Index a recording's metadata (never raises: a failed write waits, see the module's docstring)."""
        self._write(("recording", str(meta["recording_id"])), *_recording_row(meta))

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
                    self._db.execute(*_recording_row(meta))
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
        self._write(("recording", recording_id), "DELETE FROM recordings WHERE recording_id = ?", (recording_id,))

    # --- calls ----------------------------------------------------------------------------------------

    def put_call(self, info: dict[str, Any], worker: str) -> None:
        """Index a call and the worker that runs it (never raises, as :meth:`put_recording`)."""
        self._write(("call", str(info["call_id"])), *_call_row(info, worker))

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
            self._db.execute(*_call_row(info, worker))
        return len(rows)


def _recording_row(meta: dict[str, Any]) -> _Write:
    return (
        "INSERT OR REPLACE INTO recordings VALUES (?, ?, ?, ?, ?)",
        (meta["recording_id"], meta.get("call_id"), meta.get("state"), meta.get("start_time"), json.dumps(meta)),
    )


def _call_row(info: dict[str, Any], worker: str) -> _Write:
    return (
        "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?)",
        (info["call_id"], info.get("state"), info.get("start_time"), worker, json.dumps(info)),
    )


def _filters(**values: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())
