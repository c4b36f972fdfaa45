"""The service's index of recordings and calls: one interface, two backends.

* :class:`SqliteIndex` — the default, ``<data>/index.sqlite3``, shared by the workers of one node (WAL
  mode: readers never wait on a writer). Writes are synchronous and fast, made as they come.
* :class:`~swml_engine.service.pgindex.PgIndex` — ``--index postgresql://...``, shared by every node, so
  any node's API lists every node's recordings and calls. Writes go over the network: they are queued
  and written by a task of their own, never on the caller's time.

The metadata JSON of each recording stays the record of truth (it survives a crash and is what
recovery repairs); the index is what the HTTP API searches and pages through, kept up to date as each
metadata file is written, and rebuilt from stored metadata (:meth:`Index.rebuild`). Calls are indexed
as they start, are answered and end; each row says which worker runs the call (its URL, so live
control reaches it) and which node (``node-id`` under the data directory), so a node that starts marks
only its own calls left "live" as ended.

A write never fails the call or recording that made it: the row is kept (the newest per recording or
call, at most :data:`MAX_PENDING`) until a write succeeds; meanwhile the state says the index is
behind. After :meth:`Index.close` (the service stopping) a late write is dropped (the metadata files
have it, and a rebuild restores it). The SQL is written once, here, with ``?`` placeholders; a backend
runs it (the PostgreSQL one turns them into its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from swml_engine.service import migrations

log = logging.getLogger(__name__)

#: Rows kept for a later write while the index cannot be written; beyond, the oldest are dropped (a
#: rebuild restores the recordings from their metadata).
MAX_PENDING = 10_000
#: While behind, the SQLite index tries the waiting rows again at most this often (seconds).
RETRY_INTERVAL = 1.0
#: Rows a rebuild writes per transaction (a large store never holds one transaction open for long).
REBUILD_BATCH = 500
#: The most rows one read returns (the API's own limit is lower), and the furthest a page may start.
MAX_ROWS = 1000
MAX_OFFSET = 1_000_000_000
#: The longest value of an indexed text column (ids are 36 characters).
MAX_TEXT = 1000
#: The keys a listed recording carries its call's From and To in (the names the list is filtered by).
PARTIES = ("caller", "callee")
#: Where a node keeps its name (made once, shared by its workers).
NODE_FILE = "node-id"
#: Where a node notes when it last brought a shared index up to date (:class:`SyncMark`).
SYNC_FILE = "index-synced.json"
#: Seconds before that mark from which files are sent again.
SYNC_MARGIN = 300.0
#: How often a node notes that it is up, and after how long without a note its live calls are ended
#: by the others (seconds; the nodes' clocks must agree to within a fraction of it: NTP).
ALIVE_EVERY, LOST_AFTER = 30.0, 180.0
#: The URL schemes of --index (others are refused at start).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: Where --index may come from instead of the command line (which ``ps`` shows every user).
INDEX_URL_VARIABLE = "SWML_INDEX_URL"


class IndexState(Enum):
    #: Writes reach the index.
    OPEN = "open"
    #: A write failed: rows wait for the next write that succeeds.
    BEHIND = "behind"
    #: Closed at shutdown: late writes are dropped.
    CLOSED = "closed"


class IndexOpenError(Exception):
    """The index cannot be opened at start (bad URL, server down, wrong password, newer schema); the
    message names the option and what to do."""


class IndexUnavailable(Exception):
    """A read the index cannot answer now (its server is away): the API answers 503."""


_RowKey = tuple[str, str]  # ("recording" | "call" | "node", id)
Statement = tuple[str, tuple[Any, ...]]  # SQL with ? placeholders, and its arguments


class Index(ABC):
    """What the service and its API use of an index, whichever the backend."""

    #: Several nodes share it: its rows are not all of this node's files.
    shared = False
    #: Its tables were made by this open (a new database: a start indexes every local recording).
    fresh = False

    def __init__(self, where: str, node: str) -> None:
        #: Where the index is, for messages (a file, or a URL without its password).
        self.where = where
        #: This node's name: its calls and the recordings it wrote carry it.
        self.node = node
        self.state = IndexState.OPEN
        self._pending: dict[_RowKey, Statement] = {}
        self._dropped = 0

    @property
    def pending(self) -> int:
        """Rows waiting for a write that succeeds."""
        return len(self._pending)

    # --- writes: never raise, never wait ------------------------------------------------------------

    def put_recording(self, meta: dict[str, Any]) -> None:
        """Index a recording's metadata."""
        self._write(("recording", str(meta["recording_id"])), recording_row(meta, self.node))

    def delete_recording(self, recording_id: str) -> None:
        self._write(("recording", recording_id), ("DELETE FROM recordings WHERE recording_id = ?", (recording_id,)))

    def delete_call(self, call_id: str) -> None:
        self._write(("call", call_id), ("DELETE FROM calls WHERE call_id = ?", (call_id,)))

    def alive(self, now: float) -> None:
        """Note that this node is up (the others end the live calls of a node silent for long)."""
        sql = "INSERT INTO nodes VALUES (?, ?) ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at"
        self._write(("node", self.node), (sql, (self.node, now)))

    def put_call(self, info: dict[str, Any], worker: str) -> None:
        """Index a call and the worker that runs it."""
        self._write(("call", str(info["call_id"])), _call_row(info, worker, self.node))

    def _write(self, key: _RowKey, statement: Statement) -> None:
        if self.state is IndexState.CLOSED:
            log.debug("index closed: %s %s not written (its file has it)", *key)
            return
        self._pending.pop(key, None)
        self._pending[key] = statement  # the newest for this row, last in line
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self._dropped += 1
        self._written_soon()

    @abstractmethod
    def _written_soon(self) -> None:
        """Write what waits now, or have it written soon, without blocking the caller."""

    def _batch(self) -> dict[_RowKey, Statement]:
        """What waits, to be written in one transaction."""
        return dict(self._pending)

    def _caught_up(self, batch: dict[_RowKey, Statement]) -> None:
        """``batch`` is written: rows changed since it was taken still wait."""
        for key, statement in batch.items():
            if self._pending.get(key) is statement:
                del self._pending[key]
        if self.state is IndexState.BEHIND:
            if batch:
                log.warning(
                    "index %s written again: %d waiting row(s) caught up%s",
                    self.where,
                    len(batch),
                    f", {self._dropped} older ones dropped until a rebuild" if self._dropped else "",
                )
            else:  # (a read found it back with no row waiting)
                log.warning("index %s can be reached again", self.where)
            self.state = IndexState.OPEN

    def _fell_behind(self, error: BaseException) -> None:
        if self.state is IndexState.OPEN:
            self.state = IndexState.BEHIND
            log.error(
                "index %s cannot be written (%s): rows wait to be written when it can; the metadata files "
                "stay the record",
                self.where,
                str(error).strip() or type(error).__name__,
            )

    # --- backend ------------------------------------------------------------------------------------

    @abstractmethod
    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of a read (IndexUnavailable when the index cannot be read now)."""

    @abstractmethod
    async def _transaction(self, statements: Sequence[Statement]) -> None:
        """Run statements in one transaction (IndexUnavailable when it cannot)."""

    @abstractmethod
    async def close(self) -> None:
        """Write what waits (once more, bounded), then close; later writes are dropped."""

    # --- reads ------------------------------------------------------------------------------------

    async def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A read of values a request gave: one holding NUL finds nothing (no row holds one, and
        PostgreSQL refuses it as a value rather than answer)."""
        if any(isinstance(a, str) and "\x00" in a for a in args):
            return []
        return await self._query(sql, args)

    async def recordings(
        self, *, call_id: str | None = None, state: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        where, args = _filters(call_id=call_id, state=state)
        rows = await self._read(
            f"SELECT meta FROM recordings {where} ORDER BY start_time DESC, recording_id LIMIT ? OFFSET ?",
            (*args, min(limit, MAX_ROWS), min(offset, MAX_OFFSET)),
        )
        return [json.loads(meta) for (meta,) in rows]

    async def search(self, query: RecordingQuery) -> tuple[list[dict[str, Any]], int]:
        """A page of the recordings ``query`` selects, newest first, and how many it selects in all."""
        where, args = query.where()
        rows = await self._read(
            f"SELECT meta FROM recordings {where} ORDER BY start_time DESC, recording_id LIMIT ? OFFSET ?",
            (*args, min(query.limit, MAX_ROWS), min(query.offset, MAX_OFFSET)),
        )
        total = await self._read(f"SELECT COUNT(*) FROM recordings {where}", args)
        found = [json.loads(meta) for (meta,) in rows]
        return await self._with_parties(found), int(total[0][0]) if total else 0

    async def _with_parties(self, recordings: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each listed recording with its call's ``caller`` and ``callee`` (the From and To it is searched
        by; None when the call is not in the index), so a list can say who was on each recording."""
        call_ids = sorted({str(r["call_id"]) for r in recordings if r.get("call_id")})
        parties: dict[str, tuple[str | None, str | None]] = {}
        if call_ids:
            marks = ", ".join("?" * len(call_ids))
            rows = await self._read(
                f"SELECT call_id, caller, callee FROM calls WHERE call_id IN ({marks})", tuple(call_ids)
            )
            parties = {str(call_id): (caller, callee) for call_id, caller, callee in rows}
        for recording in recordings:
            recording.update(zip(PARTIES, parties.get(str(recording.get("call_id")), (None, None)), strict=True))
        return recordings

    async def recording(self, recording_id: str) -> dict[str, Any] | None:
        rows = await self._read("SELECT meta FROM recordings WHERE recording_id = ?", (recording_id,))
        return json.loads(rows[0][0]) if rows else None

    async def keeper(self, recording_id: str) -> str | None:
        """The node that indexed a recording from its own spool (None: unknown, or rebuilt from a bucket)."""
        rows = await self._read("SELECT node FROM recordings WHERE recording_id = ?", (recording_id,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def count_calls(self, *, state: str | None = None) -> int:
        """How many calls ``calls(state=...)`` pages through."""
        where, args = _filters(state=state)
        rows = await self._read(f"SELECT COUNT(*) FROM calls {where}", args)
        return int(rows[0][0]) if rows else 0

    async def calls(self, *, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        where, args = _filters(state=state)
        rows = await self._read(
            f"SELECT info FROM calls {where} ORDER BY start_time DESC, call_id LIMIT ? OFFSET ?",
            (*args, min(limit, MAX_ROWS), min(offset, MAX_OFFSET)),
        )
        return [json.loads(info) for (info,) in rows]

    async def call(self, call_id: str) -> tuple[dict[str, Any], str] | None:
        """A call and the worker that runs (or ran) it."""
        rows = await self._read("SELECT info, worker FROM calls WHERE call_id = ?", (call_id,))
        return (json.loads(rows[0][0]), str(rows[0][1])) if rows else None

    async def ended_before(self, before: float, *, limit: int, own: bool) -> list[dict[str, Any]]:
        """Recordings that ended before ``before`` (a Unix time), oldest first, at most ``limit``; with
        ``own``, only those this node wrote (its storage alone holds them)."""
        mine = " AND node = ?" if own else ""
        rows = await self._read(
            f"SELECT meta FROM recordings WHERE end_time IS NOT NULL AND end_time < ?{mine} "
            "ORDER BY end_time, recording_id LIMIT ?",
            (before, *((self.node,) if own else ()), min(limit, MAX_ROWS)),
        )
        return [json.loads(meta) for (meta,) in rows]

    # --- at start, and `swml index rebuild` -------------------------------------------------------

    async def rebuild(self, documents: AsyncIterable[dict[str, Any]], *, own: bool = True) -> int:
        """Index every recording metadata document given (those a crash, a full disk or another version
        left out of the index too), :data:`REBUILD_BATCH` per transaction; returns how many. ``own``:
        they are this node's (its spool); otherwise a row keeps the node it had."""
        count = 0
        batch: list[Statement] = []
        async for meta in documents:
            if isinstance(meta.get("recording_id"), str):
                batch.append(recording_row(meta, self.node if own else None))
            if len(batch) >= REBUILD_BATCH:
                await self._transaction(batch)
                count += len(batch)
                batch = []
        if batch:
            await self._transaction(batch)
            count += len(batch)
        return count

    async def calls_ended_before(self, before: float, *, limit: int) -> list[str]:
        """This node's ended calls that started before ``before`` (a Unix time) and have no recording left,
        oldest first, at most ``limit``: their ids (their event logs are on this node's disk). A call goes
        after its recordings, which go by their end: a long call's recording never outlives its call's row
        (the list's caller and callee come from it)."""
        rows = await self._query(
            "SELECT call_id FROM calls WHERE state = 'ended' AND start_time < ? AND (node = ? OR node IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM recordings WHERE recordings.call_id = calls.call_id) "
            "ORDER BY start_time, call_id LIMIT ?",
            (before, self.node, min(limit, MAX_ROWS)),
        )
        return [str(call_id) for (call_id,) in rows]

    # --- console sessions (service/sessions.py): written at once, not queued, so every worker and node
    # knows a sign-in or a sign-out before it is answered ----------------------------------------------

    async def add_session(self, id_hash: str, csrf: str, expires_at: float, now: float) -> None:
        """Keep a new session (and forget those expired: sign-ins are rare, so this is their cleaner)."""
        await self._transaction(
            [
                ("DELETE FROM sessions WHERE expires_at < ?", (now,)),
                ("INSERT INTO sessions (id_hash, csrf, expires_at) VALUES (?, ?, ?)", (id_hash, csrf, expires_at)),
            ]
        )

    async def session(self, id_hash: str, now: float) -> tuple[str, float] | None:
        """A session's CSRF token and expiry, if it exists and has not expired."""
        rows = await self._read(
            "SELECT csrf, expires_at FROM sessions WHERE id_hash = ? AND expires_at > ?", (id_hash, now)
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    async def end_session(self, id_hash: str) -> None:
        await self._transaction([("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))])

    async def end_orphaned_calls(self, before: float) -> int:
        """This node's calls that a stopped or killed process left "live" (started before this service
        did) are marked ended: nothing runs them any more. Returns how many."""
        return await self._end_calls(
            "SELECT info, worker, node FROM calls "
            "WHERE state <> 'ended' AND start_time < ? AND (node = ? OR node IS NULL)",
            (before, self.node),
        )

    async def end_calls_of_lost_nodes(self, silent_since: float) -> int:
        """Other nodes' calls left "live" by a node not heard of since ``silent_since`` (a Unix time: it
        was killed and has not come back) are marked ended. Returns how many."""
        return await self._end_calls(
            "SELECT c.info, c.worker, c.node FROM calls c JOIN nodes n ON n.node = c.node "
            "WHERE c.state <> 'ended' AND n.seen_at < ? AND c.node <> ?",
            (silent_since, self.node),
        )

    async def _end_calls(self, sql: str, args: tuple[Any, ...]) -> int:
        rows = await self._query(sql, args)
        ended = []
        for info_text, worker, node in rows[:MAX_PENDING]:
            info = json.loads(info_text)
            info.update(state="ended", end_reason=info.get("end_reason") or "service_stopped")
            ended.append(_call_row(info, worker, node))
        if ended:
            await self._transaction(ended)
        return len(ended)


class SqliteIndex(Index):
    """The index in a file the workers of one node share (its statements are fast: run as they come)."""

    def __init__(
        self, path: Path, *, node: str = "", busy_timeout: float = 10.0, retry_interval: float = RETRY_INTERVAL
    ) -> None:
        """``busy_timeout``: how long a write waits for another worker's; ``retry_interval``: how often,
        while behind, a write tries the waiting rows again."""
        super().__init__(str(path), node)
        self.path = path
        self.retry_interval = retry_interval
        self._next_try = 0.0
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        # Workers open the file at the same moment; switching it to WAL is not retried by SQLite's busy
        # timeout, so retry here.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for an index the files rebuild
        self._migrate()

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # the other workers wait here: one applies, they find it done
        try:
            self._db.execute(migrations.TABLE)
            applied = {v for (v,) in self._db.execute("SELECT version FROM schema_migrations")}
            for m in migrations.pending("sqlite", applied, self.where):
                for statement in m.statements:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (m.version, m.name, time.time()))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _written_soon(self) -> None:
        if self.state is IndexState.OPEN or time.monotonic() >= self._next_try:
            self._flush()

    def _flush(self) -> None:
        batch = self._batch()
        try:
            self._run(batch.values())
        except sqlite3.Error as e:
            self._next_try = time.monotonic() + self.retry_interval
            self._fell_behind(e)
            return
        self._caught_up(batch)

    def _run(self, statements: Any) -> None:
        self._db.execute("BEGIN")
        try:
            for sql, args in statements:
                self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise IndexUnavailable(f"index {self.where}: {e}") from e

    async def _transaction(self, statements: Sequence[Statement]) -> None:
        try:
            self._run(statements)
        except sqlite3.Error as e:
            raise IndexUnavailable(f"index {self.where}: {e}") from e

    async def close(self) -> None:
        if self.state is IndexState.CLOSED:
            return
        if self._pending:
            self._flush()
        if self._pending:
            log.warning("index closed with %d row(s) unwritten: the next start rebuilds them", len(self._pending))
        self.state = IndexState.CLOSED
        self._db.close()


def recording_row(meta: dict[str, Any], node: str | None) -> Statement:
    """Insert or update a recording's row; a row whose metadata is the same is left as it is (a rebuild
    over many unchanged recordings writes nothing), and a row keeps its node when none is given."""
    return (
        "INSERT INTO recordings (recording_id, call_id, state, start_time, end_time, node, format, duration, meta) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (recording_id) DO UPDATE SET call_id = excluded.call_id, "
        "state = excluded.state, start_time = excluded.start_time, end_time = excluded.end_time, "
        "node = COALESCE(excluded.node, recordings.node), format = excluded.format, duration = excluded.duration, "
        "meta = excluded.meta "
        "WHERE recordings.meta IS DISTINCT FROM excluded.meta "
        "OR (excluded.node IS NOT NULL AND recordings.node IS DISTINCT FROM excluded.node)",
        (
            _text(meta["recording_id"]),
            _text(meta.get("call_id")),
            _text(meta.get("state")),
            _number(meta.get("start_time")),
            _number(meta.get("end_time")),
            node,
            _text(meta.get("format")),
            _number(meta.get("duration")),
            json.dumps(meta),
        ),
    )


def _call_row(info: dict[str, Any], worker: str, node: str | None) -> Statement:
    return (
        "INSERT INTO calls (call_id, state, start_time, worker, node, caller, callee, info) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (call_id) DO UPDATE SET state = excluded.state, start_time = excluded.start_time, "
        "worker = excluded.worker, node = excluded.node, caller = excluded.caller, callee = excluded.callee, "
        "info = excluded.info",
        (
            _text(info["call_id"]),
            _text(info.get("state")),
            _number(info.get("start_time")),
            _text(worker),
            node,
            _text(info.get("from")),
            _text(info.get("to")),
            # a caller writes its Call-ID, From and To (a SIP message may be 64 KB): each kept to a bound
            json.dumps({key: value[:MAX_TEXT] if isinstance(value, str) else value for key, value in info.items()}),
        ),
    )


def _text(value: Any) -> str | None:
    """A value for a text column: a metadata file edited by hand or a document from a bucket may hold
    anything; a value PostgreSQL refuses (NUL, a mapping) would hold every row queued behind it."""
    return None if value is None else str(value).replace("\x00", "")[:MAX_TEXT]


def _number(value: Any) -> float | None:
    """A time for a numeric column (a hand-edited metadata file may hold anything)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of 400 digits
        return None


@dataclass(frozen=True)
class RecordingQuery:
    """What the recordings list is filtered on (every field optional; all given ones must hold)."""

    call_id: str | None = None
    state: str | None = None
    format: str | None = None
    #: Substrings of the call's From and To (any case).
    caller: str | None = None
    callee: str | None = None
    #: Bounds on the recording's start (Unix time) and duration (seconds), inclusive.
    from_time: float | None = None
    to_time: float | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    limit: int = 100
    offset: int = 0

    def where(self) -> tuple[str, tuple[Any, ...]]:
        terms: list[tuple[str, Any]] = [
            ("call_id = ?", self.call_id),
            ("state = ?", self.state),
            ("format = ?", self.format),
            ("start_time >= ?", self.from_time),
            ("start_time <= ?", self.to_time),
            ("duration >= ?", self.min_duration),
            ("duration <= ?", self.max_duration),
        ]
        # LOWER() on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
        for column, part in (("caller", self.caller), ("callee", self.callee)):
            if part is not None:
                terms.append(
                    (f"call_id IN (SELECT call_id FROM calls WHERE LOWER({column}) LIKE ? ESCAPE '\\')", _like(part))
                )
        given = [(sql, value) for sql, value in terms if value is not None]
        if not given:
            return "", ()
        return "WHERE " + " AND ".join(sql for sql, _ in given), tuple(value for _, value in given)


def _like(part: str) -> str:
    """A LIKE pattern matching ``part`` anywhere, its own % and _ taken literally."""
    escaped = part.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filters(**values: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())


async def local_documents(root: Path, *, changed_since: float | None = None) -> AsyncIterator[dict[str, Any]]:
    """The recording metadata documents in a local recordings directory (unreadable ones skipped); with
    ``changed_since`` (a Unix time), only those whose file changed since."""
    for path in root.glob("*.json"):
        try:
            if changed_since is not None and path.stat().st_mtime < changed_since:
                continue
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("recording_id"), str):
            yield meta


async def keep_alive(
    index: Index,
    *,
    every: float = ALIVE_EVERY,
    lost_after: float = LOST_AFTER,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Until cancelled: note every ``every`` seconds that this node is up, and on a shared index end
    the live calls of nodes not heard of for ``lost_after`` (killed and not back: no one else will)."""
    while True:
        now = clock()
        index.alive(now)
        if index.shared:
            try:
                ended = await index.end_calls_of_lost_nodes(now - lost_after)
            except IndexUnavailable:
                ended = 0  # (the writes wait; the next round tries again)
            if ended:
                log.warning(
                    "%d call(s) of nodes silent for %g s marked ended (those nodes are gone)", ended, lost_after
                )
        await sleep(every)


class SyncMark:
    """When this node last brought a shared index up to date from its spool (``DIR/index-synced.json``,
    per index): a start then sends only the metadata files changed since, not every recording the node
    keeps — each would cross the network at every start of every worker. Files changed a little before
    the mark (:data:`SYNC_MARGIN`: clocks, timestamps' granularity) are sent again."""

    def __init__(self, data: Path, where: str) -> None:
        self.path = data / SYNC_FILE
        self.where = where

    def since(self) -> float | None:
        """The time to send changes from; None: send everything (no mark, or one for another index)."""
        try:
            mark = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(mark, dict) or mark.get("index") != self.where or _number(mark.get("time")) is None:
            return None
        return float(mark["time"]) - SYNC_MARGIN

    def mark(self, when: float) -> None:
        """Everything changed before ``when`` is in the index (a mark that cannot be written: the next
        start sends everything again)."""
        tmp = self.path.with_name(f".{SYNC_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"index": self.where, "time": when}) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning(
                "cannot note the index as up to date in %s (%s): the next start sends every recording", self.path, e
            )


def node_id(data: Path) -> str:
    """This node's name, made once under the data directory and kept (a restart is the same node)."""
    path = data / NODE_FILE
    with contextlib.suppress(FileNotFoundError):
        name = path.read_text().strip()
        if name:
            return name
    tmp = data / f".{NODE_FILE}.{os.getpid()}"
    tmp.write_text(str(uuid.uuid4()) + "\n")
    try:
        os.link(tmp, path)  # atomic, and fails if another worker made it first: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def index_url(given: str | None, environ: dict[str, str] | os._Environ[str]) -> str | None:
    """``--index`` (or SWML_INDEX_URL): a PostgreSQL URL, or None for SQLite under the data directory.
    ValueError names the option and what it takes."""
    url = given or environ.get(INDEX_URL_VARIABLE) or None
    if url is None:
        return None
    if not url.startswith(POSTGRES_SCHEMES) or len(url) > 4096:
        raise ValueError(
            "--index: give postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the password may come from "
            f"PGPASSWORD or ~/.pgpass), or leave it out for SQLite under --data; {INDEX_URL_VARIABLE} keeps "
            "it out of the process list"
        )
    return url
