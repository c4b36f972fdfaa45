"""Time for calls: a virtual clock for simulated calls and a real one for live calls.

The virtual clock is an asyncio event loop whose ``time()`` is virtual. When no task is ready to run
and nothing holds the clock, the loop jumps straight to its next timer, so a 10-minute script runs in a
fraction of a second and every result is the same on a slow or a fast machine. Real I/O that a call
waits for (a play URL, TTS, remote SWML) runs in a worker thread under :func:`run_io`, which holds virtual
time still until it completes; a server that does not answer fails on a real-time timeout.

:class:`MediaTicker` drives every call on a loop from one timer: each 20 ms it asks each call for one
frame step. On the virtual clock it runs consecutive ticks back to back while nothing else is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import selectors
import threading
import time as _time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, ClassVar, Protocol, TypeVar

from swml_engine.media.frame import FRAME_SECONDS

log = logging.getLogger(__name__)

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector: never sleeps in real time unless real I/O holds the clock."""

    def __init__(self) -> None:
        self._inner = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        if loop.holds > 0:
            # Real I/O in flight: wait for it in real time; virtual time stands still meanwhile. With
            # callbacks ready (timeout 0) they run at once: the wait is only for when nothing else can.
            return self._inner.select(0 if timeout == 0 else 0.05)
        events = self._inner.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            return self._inner.select(None)  # nothing scheduled: only I/O can wake the loop
        loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time that starts at 0.0 (see the module docstring)."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._vtime = 0.0
        self.holds = 0
        #: Unix time at virtual 0, so timestamps in callbacks and metadata are real dates.
        self.wall_origin = _time.time()

    def time(self) -> float:
        return self._vtime

    def advance(self, seconds: float) -> None:
        self._vtime += seconds

    def advance_to(self, when: float) -> None:
        self._vtime = max(self._vtime, when)

    def idle_until(self, when: float) -> bool:
        """True when nothing can run before ``when``: no ready callback, no hold, no earlier timer."""
        if self.holds or getattr(self, "_ready", True):
            return False
        scheduled = getattr(self, "_scheduled", None)
        if scheduled is None:
            return False
        if not scheduled:
            return True
        if not scheduled[0].cancelled():  # a heap: its top is the earliest timer
            return bool(scheduled[0].when() > when)
        # A cancelled timer on top (asyncio removes those lazily): only the top is ordered, so the
        # earliest live timer can be anywhere in the list.
        live = [h.when() for h in scheduled if not h.cancelled()]
        return not live or min(live) > when


def wall_time(loop: asyncio.AbstractEventLoop) -> float:
    """Unix time as the call sees it (virtual loops map their time onto the moment they started)."""
    if isinstance(loop, VirtualTimeLoop):
        return loop.wall_origin + loop.time()
    return _time.time()


@contextlib.contextmanager
def hold(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[None]:
    """Keep virtual time still while real I/O completes (no effect on a real-time loop)."""
    loop = loop or asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        yield
        return
    loop.holds += 1
    try:
        yield
    finally:
        loop.holds -= 1


class IoPool:
    """Threads for the blocking work of calls, started as needed up to ``size``, all daemons.

    Not the loop's default executor nor a ``ThreadPoolExecutor``: those are joined when the loop or
    the interpreter shuts down, so one thread stuck in a read or a parse kept ``swml serve`` from
    stopping on SIGTERM. A thread here is abandoned at exit; what it was doing is bounded on its own
    (fetch deadlines, document size and node limits).
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self.size
            if start:
                self._threads += 1
        self._jobs.put((future, fn, args))
        if start:
            threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, fn, args = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the waiter, which reports it
                future.set_exception(e)
            else:
                future.set_result(result)


#: TTS, decoding, document parsing: CPU work, as many threads as asyncio's default executor has.
WORK_POOL = IoPool("swml-work", min(32, (os.cpu_count() or 1) + 4))
#: Network fetches (play URLs, remote documents): they mostly wait, so more threads, and apart from
#: WORK_POOL, so slow servers never hold up other calls' TTS; a call has few at once (fetch.CallFetches).
NETWORK_POOL = IoPool("swml-fetch", 64)


async def run_io(fn: Callable[..., T], *args: Any, pool: IoPool = WORK_POOL) -> T:
    """Run blocking I/O (HTTP, subprocess, decoding) in a thread of ``pool``; virtual time waits for it."""
    loop = asyncio.get_running_loop()
    with hold(loop):
        return await asyncio.wrap_future(pool.submit(fn, *args), loop=loop)


class TickTarget(Protocol):
    def media_out(self) -> None: ...
    def media_in(self) -> None: ...
    def media_skip(self, frames: int) -> None: ...


#: Seconds between two log lines about skipped media ticks.
SKIP_LOG_INTERVAL = 60.0


class MediaTicker:
    """One 20 ms timer per loop that steps the media of every call on it."""

    #: On a real clock, ticks later than this are skipped (recordings get silence for them).
    MAX_LATE = 0.2

    _by_loop: dict[int, MediaTicker] = {}  # noqa: RUF012 - one ticker per running loop
    #: Told how late each tick on a real clock runs (seconds): the service's media lag histogram. One
    #: call per tick per loop (50 a second), never per call.
    on_lateness: ClassVar[Callable[[float], None] | None] = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.targets: list[TickTarget] = []
        self._handle: asyncio.TimerHandle | None = None
        self._base = 0.0
        self._count = 0
        self.errors: list[BaseException] = []
        #: How late the ticks run (seconds, smoothed): a loop with more calls than it can carry.
        self.lag = 0.0
        #: Ticks skipped because the loop was more than MAX_LATE behind.
        self.skipped = 0
        #: When skipped ticks were last logged, and how many since (SKIP_LOG_INTERVAL).
        self._said_at = -SKIP_LOG_INTERVAL
        self._unsaid = 0
        #: Inside _tick (lateness() is measured against the tick in progress).
        self._in_tick = False

    @classmethod
    def lateness(cls, loop: asyncio.AbstractEventLoop) -> float:
        """How long after its due time the tick running now on ``loop`` is at this moment (0 outside a
        tick, and on a virtual clock): a jitter buffer read that late finds that much more audio."""
        ticker = cls._by_loop.get(id(loop))
        if ticker is None or ticker.loop is not loop or not ticker._in_tick:
            return 0.0
        return max(0.0, loop.time() - ticker._due(ticker._count))

    @classmethod
    def lag_of(cls, loop: asyncio.AbstractEventLoop) -> float:
        """The smoothed lateness of the media ticks on ``loop`` (0 when no call is on it)."""
        ticker = cls._by_loop.get(id(loop))
        return ticker.lag if ticker is not None and ticker.loop is loop else 0.0

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> MediaTicker:
        loop = loop or asyncio.get_running_loop()
        ticker = cls._by_loop.get(id(loop))
        if ticker is None or ticker.loop is not loop:
            ticker = cls(loop)
            cls._by_loop[id(loop)] = ticker
        return ticker

    def add(self, target: TickTarget) -> None:
        self.targets.append(target)
        if self._handle is None:
            self._base = self.loop.time()
            self._count = 0
            self._handle = self.loop.call_at(self._base, self._tick)

    def remove(self, target: TickTarget) -> None:
        with contextlib.suppress(ValueError):
            self.targets.remove(target)
        if not self.targets and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._by_loop.pop(id(self.loop), None)

    def _skip(self, frames: int) -> None:
        """Far behind the wall clock (CPU saturated): skip ticks rather than fall further behind, so
        calls stay in time with the network and recordings with the call (silence fills the gap)."""
        for target in list(self.targets):
            try:
                target.media_skip(frames)
            except Exception as e:
                self._drop(target, e)
        self._count += frames
        self.skipped += frames
        self._unsaid += frames
        now = self.loop.time()
        if now >= self._said_at + SKIP_LOG_INTERVAL:  # (at most a line a minute: an overload lasts)
            log.warning(
                "media ticks ran %d ms late: %d skipped (%d since the last such line) — each live call lost "
                "that much audio and its recordings have silence there; the CPU cannot keep up with %d call(s)",
                frames * 20,
                frames,
                self._unsaid,
                len(self.targets),
            )
            self._said_at, self._unsaid = now, 0

    def _drop(self, target: TickTarget, error: Exception) -> None:
        if target not in self.targets:
            return  # already dropped in the first half
        self.errors.append(error)
        self.remove(target)
        handler = getattr(target, "on_media_error", None)
        if handler is not None:
            handler(error)

    def _due(self, count: int) -> float:
        return self._base + count * FRAME_SECONDS

    def next_due(self) -> float:
        """The loop time of the next tick: the start of the next frame the taps will see."""
        return self._due(self._count)

    def _tick(self) -> None:
        self._in_tick = True
        try:
            self._step()
        finally:
            self._in_tick = False

    def _step(self) -> None:
        virtual = isinstance(self.loop, VirtualTimeLoop)
        if not virtual:
            late = max(0.0, self.loop.time() - self._due(self._count))
            self.lag = 0.9 * self.lag + 0.1 * late
            observe = MediaTicker.on_lateness
            if observe is not None:
                observe(late)
            if late > self.MAX_LATE:
                self._skip(int(late / FRAME_SECONDS))
        while True:
            # Two passes: every call sends its frame first, then the taps (recording) run, so how long
            # recording takes never delays another call's packet within the tick.
            targets = list(self.targets)
            failed = False
            for target in targets:
                try:
                    target.media_out()
                except Exception as e:  # a broken call must not stop the media of the others
                    self._drop(target, e)
                    failed = True
            if failed:
                targets = [t for t in targets if t in self.targets]
            for target in targets:
                try:
                    target.media_in()
                except Exception as e:
                    self._drop(target, e)
            self._count += 1
            if not self.targets:
                self._handle = None
                return
            due = self._due(self._count)
            if virtual:
                assert isinstance(self.loop, VirtualTimeLoop)
                if self.loop.idle_until(due):
                    self.loop.advance_to(due)
                    continue
            # On a real clock a late tick is not made up in a loop here: the next one is scheduled at
            # its due time (past, if late), so the loop reads the sockets between catch-up ticks and
            # the packets that queued up during a stall reach the jitter buffers before their frames
            # are taken. No frame is dropped; they come as fast as the loop allows until on time.
            break
        self._handle = self.loop.call_at(self._due(self._count), self._tick)
