"""Calls' events as Server-Sent Events: ``GET /api/events`` (every call of this node) and
``GET /api/calls/{id}/events`` (one call: its log from the first line, then live).

The source is the calls' event logs, ``DIR/calls/<call_id>.jsonl`` — the very objects ``events.jsonl``
holds, written (and flushed) by whichever worker runs the call. Reading the files rather than each
worker's memory is what makes a stream on any worker show the calls of every worker of the node, and
the one-call stream begin with what happened before it was opened. Files are polled (:data:`POLL`):
a stat per followed call, reads bounded by :data:`MAX_READ`. Which calls there are comes from the index
(the newest :data:`NEWEST`, every other poll): with a shared index its rows name other nodes' calls too,
whose logs are not on this disk, so "every call" means every call of this node.

What one client can hold, and for how long:

* ``/api/events`` clients of a worker share one poller (:class:`EventFeed`); each has a queue of at most
  :data:`MAX_QUEUE` events. A client that reads slower than calls make events fills it: the queue is
  emptied, it gets a last ``{"type": "stream.dropped"}`` and the stream ends (it may reconnect).
* A one-call stream reads the log only as fast as its client takes it: nothing queues.
* Every write to a client must be taken within :data:`WRITE_TIMEOUT` (the kernel's socket buffer and
  uvicorn's, about 64 kB, are all that is ever held): past it the connection is closed.
* A stream is an HTTP connection like any other (the connection caps count it), and a worker serves at
  most :data:`MAX_STREAMS` at once (503 beyond). An idle stream gets a ``: keep-alive`` comment every
  :data:`KEEPALIVE` seconds, so proxies and clients see it alive. Streams end when the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from swml_engine.service.index import IndexUnavailable

if TYPE_CHECKING:
    from swml_engine.service.index import Index

log = logging.getLogger(__name__)

#: How often logs are looked at (seconds).
POLL = 0.25
#: An idle stream's keep-alive comment interval (seconds).
KEEPALIVE = 15.0
#: Events queued per /api/events client before it is dropped.
MAX_QUEUE = 1000
#: Bytes read from one log per poll (a longer line than this is skipped).
MAX_READ = 256 * 1024
#: Streams one worker serves at once.
MAX_STREAMS = 64
#: How long one write to a client may wait for it to read (seconds).
WRITE_TIMEOUT = 30.0
#: Calls (newest first) the feed looks for new ones among.
NEWEST = 100
#: Call ids the feed remembers having followed (so an ended call is not followed again).
REMEMBERED = 1000
#: How often a stream opened with a session cookie checks that the session goes on (seconds): a
#: sign-out (or the session's end) ends the stream within this, on every worker.
SESSION_CHECK = 2.0
#: What a call id looks like when it names a file (the service makes UUIDs).
CALL_ID = re.compile(r"[A-Za-z0-9-]{1,64}")

CONNECTED = b": connected\n\n"
KEEP_ALIVE = b": keep-alive\n\n"


def sse(event: dict[str, Any], event_id: int | None = None) -> bytes:
    """One message (json.dumps escapes newlines, so the object is one ``data:`` line), with its ``id:``
    when it has one."""
    data = b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
    return data if event_id is None else b"id: %d\n" % event_id + data


def ends_call(event: dict[str, Any]) -> bool:
    return event.get("type") == "call.state" and event.get("state") == "ended"


def log_path(calls_dir: Path, call_id: str) -> Path | None:
    """The event log of a call, or None for an id that cannot name one of our files."""
    return calls_dir / f"{call_id}.jsonl" if CALL_ID.fullmatch(call_id) else None


class LogTail:
    """The complete lines appended to one event log since the last read."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def read(self) -> list[dict[str, Any]]:
        return [event for _, event in self.read_lines()]

    def read_lines(self) -> list[tuple[int, dict[str, Any]]]:
        """The new events, each with the offset just past its line (a one-call stream's event ids)."""
        size = self.size()
        if size <= self.offset:
            return []
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, MAX_READ))
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:  # a line still being written, or one longer than a read: skipped
            if len(data) >= MAX_READ:
                self.offset += len(data)
            return []
        start, self.offset = self.offset, self.offset + end + 1
        events = []
        for line in data[: end + 1].splitlines(keepends=True):
            start += len(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append((start, event))
        return events


def resume_offset(path: Path, last_event_id: str | None) -> int:
    """Where a one-call stream starts: just past the line a reconnecting client's ``Last-Event-ID``
    names (its events' ids are the offsets just past their lines, so a reconnect neither misses nor
    repeats any, on whichever worker it lands), or at the first line for none, or for an id that is
    not the end of a line of this log."""
    if not last_event_id or not last_event_id.isascii() or not last_event_id.isdigit() or len(last_event_id) > 15:
        return 0
    offset = int(last_event_id)
    try:
        with path.open("rb") as f:
            f.seek(max(0, offset - 1))
            return offset if offset > 0 and f.read(1) == b"\n" else 0
    except OSError:
        return 0


class Subscriber:
    """One /api/events client: its bounded queue, and why it ends (dropped, or the service stopping)."""

    def __init__(self, limit: int = MAX_QUEUE) -> None:
        self.limit = limit
        self.queue: deque[dict[str, Any]] = deque()
        self.dropped: str | None = None
        self.ended = False
        self._wake = asyncio.Event()

    def put(self, events: list[dict[str, Any]]) -> None:
        if self.dropped is not None or self.ended or not events:
            return
        if len(self.queue) + len(events) > self.limit:
            self.queue.clear()  # its memory goes now, not when the client gets round to reading
            self.dropped = f"more than {self.limit} events waited for this client: reconnect"
        else:
            self.queue.extend(events)
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def take(self, timeout: float) -> list[dict[str, Any]] | None:
        """What waits (at once if anything does), or None after ``timeout`` with nothing."""
        if not self.queue and self.dropped is None and not self.ended:
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None
        self._wake.clear()
        events = list(self.queue)
        self.queue.clear()
        return events


class EventFeed:
    """Every call's new events for the /api/events clients of one worker: one poller, running while
    anyone listens."""

    def __init__(self, calls_dir: Path, index: Callable[[], Index], stopping: Callable[[], bool]) -> None:
        self.calls_dir = calls_dir
        self._index = index
        self._stopping = stopping
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None

    def join(self) -> Subscriber:
        sub = Subscriber()
        self._subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="events feed")
        return sub

    def leave(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    async def _run(self) -> None:
        since = time.time()
        tails: dict[str, LogTail] = {}
        followed: OrderedDict[str, None] = OrderedDict()
        rounds = 0
        try:
            while self._subscribers:
                if self._stopping():
                    break
                if rounds % 2 == 0:
                    await self._discover(tails, followed, since)
                rounds += 1
                for call_id, tail in list(tails.items()):
                    events = [e if "call_id" in e else {**e, "call_id": call_id} for e in tail.read()]
                    if any(ends_call(e) for e in events):
                        del tails[call_id]
                    for sub in list(self._subscribers):
                        sub.put(events)
                await asyncio.sleep(POLL)
        except Exception:
            log.exception("the events feed failed: its clients are disconnected (they may reconnect)")
        finally:
            for sub in list(self._subscribers):
                sub.end()

    async def _discover(self, tails: dict[str, LogTail], followed: OrderedDict[str, None], since: float) -> None:
        """Follow the calls that appeared since the last look: from their first line if they began
        after the feed did, else from now on."""
        try:
            rows = await self._index().calls(limit=NEWEST)
        except IndexUnavailable:
            return  # (the calls already followed go on; new ones are found once it answers)
        for row in rows:
            call_id = str(row.get("call_id"))
            if call_id in followed:
                continue
            path = log_path(self.calls_dir, call_id)
            if path is None or not path.is_file():  # another node's call (a shared index), or not begun
                continue
            started = row.get("start_time")
            new = isinstance(started, int | float) and started >= since - 1
            followed[call_id] = None
            while len(followed) > REMEMBERED:
                followed.popitem(last=False)
            if new or row.get("state") != "ended":
                tail = LogTail(path)
                tail.offset = 0 if new else tail.size()
                tails[call_id] = tail


async def feed_messages(feed: EventFeed, keepalive: float = KEEPALIVE) -> AsyncIterator[bytes]:
    """An /api/events client's stream."""
    sub = feed.join()
    try:
        yield CONNECTED
        while True:
            events = await sub.take(keepalive)
            if events is None:
                yield KEEP_ALIVE
                continue
            if events:
                yield b"".join(sse(e) for e in events)
            if sub.dropped is not None:
                yield sse({"type": "stream.dropped", "reason": sub.dropped})
                return
            if sub.ended:  # (the service stopping: the client reconnects, to another node maybe)
                return
    finally:
        feed.leave(sub)


async def call_messages(
    path: Path,
    call_over: Callable[[], Awaitable[bool]],
    stopping: Callable[[], bool],
    keepalive: float = KEEPALIVE,
    since: int = 0,
) -> AsyncIterator[bytes]:
    """One call's stream: its log from the line at offset ``since`` (the first: 0), then what is added,
    until its ``call.state`` ``ended`` (then ``{"type": "stream.end"}``). Each event's id is the offset
    just past its line (:func:`resume_offset`). A log a killed worker left without that line ends when
    the index says the call is over."""
    tail = LogTail(path, since)
    yield CONNECTED
    sent = checked = time.monotonic()
    while True:
        lines = tail.read_lines()
        events = [event for _, event in lines]
        now = time.monotonic()
        if events:
            yield b"".join(sse(event, end) for end, event in lines)
            sent = now
            if any(ends_call(e) for e in events):
                yield sse({"type": "stream.end"})
                return
            continue  # (a long log is read in pieces, without waiting between them)
        if now - sent >= keepalive:
            yield KEEP_ALIVE
            sent = now
        if stopping():
            return
        if now - checked >= 2.0:
            checked = now
            with contextlib.suppress(IndexUnavailable):
                if await call_over() and not tail.read():
                    yield sse({"type": "stream.end"})
                    return
        await asyncio.sleep(POLL)


class EventStreamResponse(Response):
    """``text/event-stream`` from ``messages``; ends when the client goes, or when a write waits on it
    longer than ``write_timeout`` (the connection is then closed)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        messages: AsyncIterator[bytes],
        counter: StreamCounter,
        write_timeout: float = WRITE_TIMEOUT,
        signed_in: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """``signed_in``: for a stream let in by a session cookie, whether its session goes on (asked
        every :data:`SESSION_CHECK` seconds; the stream ends once it does not)."""
        super().__init__(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        # (no length: the body is sent in chunks until the stream ends)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.messages = messages
        self.counter = counter
        self.write_timeout = write_timeout
        self.signed_in = signed_in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.counter.active += 1
        loop = asyncio.get_running_loop()
        gone = loop.create_task(_disconnected(receive))
        # A session that ends (signed out, expired) ends its streams: sign-out holds for them too.
        ended = loop.create_task(_session_ended(self.signed_in)) if self.signed_in is not None else gone
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while True:
                step = asyncio.ensure_future(anext(self.messages))
                await asyncio.wait({step, gone, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():  # the client went, or its session ended
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    if ended.done() and not gone.done():
                        end = sse({"type": "stream.end", "reason": "the session has ended: sign in again"})
                        with contextlib.suppress(TimeoutError, OSError):
                            async with asyncio.timeout(self.write_timeout):
                                await send({"type": "http.response.body", "body": end, "more_body": False})
                    return
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    break
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    log.info(
                        "an event stream's client read nothing for %g s: its connection is closed", self.write_timeout
                    )
                    return  # (uvicorn closes a connection whose response is left unfinished)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            ended.cancel()
            self.counter.active -= 1
            await self.messages.aclose()  # type: ignore[attr-defined]


class StreamCounter:
    """The event streams one worker serves now."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.active = 0

    @property
    def full(self) -> bool:
        return self.active >= self.limit


async def _session_ended(signed_in: Callable[[], Awaitable[bool]]) -> None:
    """Returns once ``signed_in`` says no (an index that cannot answer now is not a no)."""
    while True:
        await asyncio.sleep(SESSION_CHECK)
        with contextlib.suppress(IndexUnavailable):
            if not await signed_in():
                return


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
