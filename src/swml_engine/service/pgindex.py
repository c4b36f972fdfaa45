"""The index in PostgreSQL (``--index postgresql://...``), shared by every node.

Driver: psycopg 3's async API. It runs on libpq, so ``--index`` is read exactly as ``psql`` reads a
URL (a password from the URL, ``PGPASSWORD`` or ``~/.pgpass``; ``sslmode``, ``PGSSLROOTCERT`` ...),
and its errors are libpq's, the ones an operator already knows.

Writes are queued (:class:`~swml_engine.service.index.Index` keeps the newest row per recording or
call) and written by one task on a connection of its own, one transaction per batch, so neither the
event loop nor the media ever waits on the network. When the server is away, the rows wait, the
state says "behind", and the task tries again with a growing delay (:func:`retry_delay`) until it is
back. Reads (the API's) go over a second connection, reconnected once when it was lost; a read the
server cannot answer is :class:`~swml_engine.service.index.IndexUnavailable` (the API answers 503).
The schema is migrated at open (``migrations/postgresql/``) under an advisory lock.

A service may start while the server does not answer (``away_ok``: nothing answered at all, as opposed to
a server that refused the user, the password or the database — those are mistakes to fix, and the start
fails): it starts "behind", takes and records its calls, and the schema is migrated on the first
connection that succeeds, before any row is written or read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from swml_engine.service import migrations
from swml_engine.service.index import Index, IndexOpenError, IndexState, IndexUnavailable, Statement, _RowKey
from swml_engine.urls import redact_text

log = logging.getLogger(__name__)

#: A connection attempt gives up after this long (seconds): a server that does not answer is "away".
CONNECT_TIMEOUT = 5
#: One batch of writes, or one read, that takes longer is given up (its connection dropped).
WRITE_TIMEOUT = 15.0
READ_TIMEOUT = 10.0
#: At close, how long the rows still waiting may take to be written.
CLOSE_TIMEOUT = 5.0
#: The delay before the first retry of a failed write, and the most it grows to (seconds).
FIRST_RETRY, MAX_RETRY = 0.5, 10.0
#: The advisory lock migrations run under (any constant the database's other users do not take).
MIGRATION_LOCK = 0x73776D6C_00000001

_T = TypeVar("_T")
_Errors = (psycopg.Error, OSError, TimeoutError)


def retry_delay(failures: int, first: float = FIRST_RETRY, most: float = MAX_RETRY) -> float:
    """Seconds to wait after ``failures`` writes in a row failed: doubling from ``first`` up to ``most``."""
    return float(min(most, first * 2 ** min(max(failures - 1, 0), 30)))


def _pg(sql: str) -> str:
    """Our SQL (``?`` placeholders) in psycopg's style."""
    return sql.replace("?", "%s")


class PgIndex(Index):
    shared = True

    def __init__(self, url: str, node: str, *, first_retry: float = FIRST_RETRY, max_retry: float = MAX_RETRY) -> None:
        super().__init__(redact_text(url), node)
        self._url = url
        self.first_retry, self.max_retry = first_retry, max_retry
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._writer: psycopg.AsyncConnection[Any] | None = None
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._read_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: The schema is known to be migrated (at open, or on the first connection when it started away).
        self._migrated = False

    @classmethod
    async def open(cls, url: str, *, node: str, away_ok: bool = False, **retry: float) -> PgIndex:
        """Connect, migrate the schema, start the writer. IndexOpenError names --index and the fix.

        ``away_ok``: a server that does not answer at all is not an error: the index starts behind."""
        index = cls(url, node, **retry)
        try:
            conn: psycopg.AsyncConnection[Any] | None = await index._dial()
        except _Errors as e:
            if not (away_ok and _no_answer(e)):
                raise IndexOpenError(
                    f"--index {index.where}: cannot connect ({_why(e)}): check that the server is up and "
                    "reachable, and the user, password (in the URL, PGPASSWORD or ~/.pgpass) and database"
                ) from e
            index.state = IndexState.BEHIND
            log.error(
                "index %s cannot be reached (%s): calls are taken and recorded, their rows wait until it can "
                "be (the metadata files stay the record); check that the server is up and reachable",
                index.where,
                _why(e),
            )
            conn = None
        if conn is not None:
            try:
                await index._migrate(conn)
            except migrations.NewerSchema as e:
                await conn.close()
                raise IndexOpenError(f"--index: {e}") from e
            except _Errors as e:
                await conn.close()
                raise IndexOpenError(
                    f"--index {index.where}: cannot set up its tables ({_why(e)}): the user needs CREATE on "
                    "the database"
                ) from e
        index._writer = conn
        index._task = asyncio.get_running_loop().create_task(index._write_loop(), name="index writer")
        return index

    async def _dial(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="swml-engine"
        )

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """A new connection, the schema migrated first when it was not yet (the index started away)."""
        conn = await self._dial()
        if not self._migrated:
            try:
                await self._migrate(conn)
            except BaseException:
                await conn.close()
                raise
        return conn

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            # Held to the transaction's end: a node starting beside this one waits, then finds all applied.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(migrations.TABLE)
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {int(v) for (v,) in await cur.fetchall()}
            self.fresh = not applied
            for m in migrations.pending("postgresql", applied, self.where):
                for statement in m.statements:
                    await conn.execute(statement)  # (our own files, not input)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, extract(epoch from now()))", (m.version, m.name)
                )
                log.info("index %s: schema migration %04d_%s applied", self.where, m.version, m.name)
        self._migrated = True

    # --- writes -----------------------------------------------------------------------------------

    def _write(self, key: _RowKey, statement: Statement) -> None:
        if threading.get_ident() == self._thread:
            super()._write(key, statement)
        else:  # (a metadata file written from another thread: the rows are the loop's alone)
            self._loop.call_soon_threadsafe(super()._write, key, statement)

    def _written_soon(self) -> None:
        self._wake.set()

    async def _write_loop(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._batch()
            if not batch:
                continue
            try:
                await self._send(batch)
            except Exception as e:  # (any: this task must not end while rows wait; the log says why)
                failures += 1
                if not isinstance(e, (*_Errors, migrations.NewerSchema)) and failures == 1:
                    log.exception("index %s: a batch of rows could not be written", self.where)
                self._fell_behind(e)
                await asyncio.sleep(retry_delay(failures, self.first_retry, self.max_retry))
                self._wake.set()
                continue
            failures = 0
            self._caught_up(batch)

    async def _send(self, batch: dict[_RowKey, Statement]) -> None:
        for _ in range(2):  # a connection idle since the server restarted fails once: a new one is tried at once
            fresh = self._writer is None or self._writer.closed
            if self._writer is None or self._writer.closed:
                self._writer = await self._connect()
            try:
                await _bounded(_run(self._writer, batch.values()), WRITE_TIMEOUT)
                return
            except _Errors:
                await self._drop("_writer")
                if fresh:
                    raise

    async def _drop(self, which: str) -> None:
        """Forget a connection that failed (closed in passing: a new one is made when needed)."""
        conn = getattr(self, which)
        setattr(self, which, None)
        if conn is not None:
            with contextlib.suppress(*_Errors):
                await asyncio.wait_for(conn.close(), 1.0)

    # --- reads --------------------------------------------------------------------------------------

    async def _on_reader(self, use: Any) -> Any:
        async with self._read_lock:
            for attempt in (1, 2):  # a connection the server dropped (a restart) is made again once
                try:
                    if self._reader is None or self._reader.closed:
                        self._reader = await self._connect()
                    result = await _bounded(use(self._reader), READ_TIMEOUT)
                except (*_Errors, migrations.NewerSchema) as e:
                    await self._drop("_reader")
                    if attempt == 2:
                        self._fell_behind(e)  # (/health says so now, not at the next write)
                        raise IndexUnavailable(f"the index {self.where} cannot be read now: {_why(e)}") from e
                    continue
                if self.state is IndexState.BEHIND and not self._pending:  # back, and nothing waits
                    self._caught_up({})
                return result
            raise AssertionError("unreachable")

    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async def query(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(_pg(sql), args)  # (our SQL, values as parameters)
            return await cur.fetchall()

        rows: list[tuple[Any, ...]] = await self._on_reader(query)
        return rows

    async def _transaction(self, statements: Sequence[Statement]) -> None:
        await self._on_reader(lambda conn: _run(conn, statements))

    async def close(self) -> None:
        if self.state is IndexState.CLOSED:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self._writer is not None and self._writer.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await self._drop("_writer")  # (cancelled mid-batch)
        if self._pending:
            batch = self._batch()
            try:
                await _bounded(self._send(batch), CLOSE_TIMEOUT)
                self._caught_up(batch)
            except _Errors as e:
                log.warning(
                    "index %s closed with %d row(s) unwritten (%s): `swml index rebuild` restores the recordings",
                    self.where,
                    len(self._pending),
                    _why(e),
                )
        self.state = IndexState.CLOSED
        await self._drop("_writer")
        await self._drop("_reader")


async def _run(conn: psycopg.AsyncConnection[Any], statements: Iterable[Statement]) -> None:
    """Statements in one transaction, those of one SQL text sent together (psycopg pipelines them)."""
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for sql, args in statements:
        groups.setdefault(sql, []).append(args)
    async with conn.transaction(), conn.cursor() as cur:
        for sql, rows in groups.items():
            await cur.executemany(_pg(sql), rows)


async def _bounded(work: Awaitable[_T], timeout: float) -> _T:
    return await asyncio.wait_for(work, timeout)


def _no_answer(e: BaseException) -> bool:
    """Nothing answered the connection (refused, timed out, no route, a name not found), or the server
    said it is starting or stopping: it is away. A server that refused us (a wrong password, no such
    database) is a mistake in --index, not an absence. libpq gives no code for errors at connection time;
    a server's own refusal is the one with its severity (``FATAL:``) in the text (a translated text reads
    as away: the service then starts, and logs the reason)."""
    if isinstance(e, OSError | TimeoutError):
        return True
    if not isinstance(e, psycopg.OperationalError) or e.sqlstate is not None:
        return False
    text = str(e)
    return "FATAL:" not in text or "the database system is" in text


def _why(e: BaseException) -> str:
    """An error in one line (libpq's messages span several), without a password a URL in it holds."""
    text = " ".join(str(e).split()) or type(e).__name__
    return redact_text(text if not isinstance(e, TimeoutError) else "no answer in time")
