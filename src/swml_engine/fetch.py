"""HTTP fetches a call makes (play URLs, remote SWML), bounded in size, time and number.

* **Time**: one deadline for the whole fetch (connect, redirects, every read), enforced by a watchdog
  thread that shuts the socket down when it passes: a server that drips one byte every few seconds
  fails at the deadline, not after a read timeout per byte.
* **Size**: the body is streamed and the fetch stops at the limit (a ``Content-Length`` above it is
  refused before any of the body is read).
* **Number**: fetches run on their own thread pool (:data:`~swml_engine.media.clock.NETWORK_POOL`,
  apart from TTS and decoding) and a call has at most :data:`PER_CALL` at once, so a few calls
  playing slow URLs cannot starve the others.
* **The call's end** stops its fetches at once (:class:`CallFetches`).
* **Redirects** are followed by hand, at most :data:`MAX_REDIRECTS`: credentials from the URL go to
  its own origin only; a fetch that sends the call's data (remote SWML) refuses to follow a redirect
  to another origin (see docs/documents.md).
* **Cookies** are neither kept nor sent: no fetch shares state with another call's.
* **TLS** certificates are checked against certifi's authorities, or ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` when set (read once, when the first HTTPS fetch is made).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from http.cookiejar import CookieJar, CookiePolicy
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx

from swml_engine.media.clock import NETWORK_POOL, hold
from swml_engine.urls import HttpTarget, UrlError, parse_http_url, redact, redact_text, same_origin

T = TypeVar("T")

#: Network fetches one call may have running at once (a play prefetches the next sound: 2 covers it).
PER_CALL = 2
MAX_REDIRECTS = 5
CHUNK = 64 * 1024


class FetchError(Exception):
    """A fetch failed; the message is meant for the user and shows URLs redacted."""


class FetchStopped(FetchError):
    """The call ended while the fetch ran: nobody waits for it any more."""


class Redirects(Enum):
    """Which redirects a fetch follows."""

    #: Any origin, the URL's credentials sent to its own origin only (audio: CDNs redirect to storage).
    ANY_ORIGIN = "any_origin"
    #: The same origin only (a POST of the call's data must not be replayed to a host nobody chose).
    SAME_ORIGIN = "same_origin"


class _NoCookies(CookiePolicy):
    """Accept none, send none: a cookie set by one call's server never reaches another call."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def no_cookies() -> CookieJar:
    """A cookie jar that stays empty (for every httpx client of the engine)."""
    return CookieJar(policy=_NoCookies())


class FetchControl:
    """One fetch's deadline and stop switch. The fetching thread checks it between reads; ``stop``
    (from the watchdog or the call's end) also shuts the socket down, waking a read that blocks."""

    def __init__(self, seconds: float, shown: str = "") -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        #: The URL as messages show it (redacted).
        self.shown = shown
        self._lock = threading.Lock()
        self._reason: FetchError | None = None
        self._sockets: list[socket.socket] = []
        self.done = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def stop(self, error: FetchError) -> None:
        with self._lock:
            if self._reason is not None or self.done:
                return
            self._reason = error
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def expire(self) -> None:
        self.stop(FetchError(f"{self.shown} did not finish within {self.seconds:g} s"))

    def check(self) -> None:
        """Raise the reason the fetch was stopped, if it was (or the deadline passed)."""
        if self._reason is None and self.remaining() <= 0:
            self.expire()
        if self._reason is not None:
            raise self._reason

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: learn each new connection's socket, so ``stop`` can shut it."""
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sockets.append(sock)
            stopped = self._reason is not None
        if stopped:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._sockets.clear()


class _Watchdog:
    """One daemon thread that expires fetches at their deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, FetchControl]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, control: FetchControl) -> None:
        with self._cond:
            heapq.heappush(self._heap, (control.deadline, next(self._order), control))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="swml-fetch-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done):
                    _, _, control = heapq.heappop(self._heap)
                    if not control.done:
                        control.expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()


@dataclass
class Reply:
    body: bytes
    content_type: str
    #: Where the body came from, after redirects.
    target: HttpTarget


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context every fetch verifies servers with (thread-safe to share). Building one loads
    the whole certificate store, ~50 ms of CPU: per fetch, that was most of what a short play URL cost."""
    return httpx.create_ssl_context()


def http_fetch(
    target: HttpTarget,
    control: FetchControl,
    *,
    limit: int,
    redirects: Redirects,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    what: str = "",
) -> Reply:
    """Blocking: GET (or POST ``json_body``) ``target`` within ``control``'s deadline; the 200 reply's
    body, at most ``limit`` bytes. Raises FetchError naming the (redacted) URL and what went wrong
    (``what`` says what was fetched: ``"SWML from "``)."""
    control.shown = control.shown or target.shown
    # Compressed replies are not asked for: a small gzip body can decode to gigabytes (a server that
    # compresses anyway is decoded a piece at a time, and the size limit counts decoded bytes).
    sent = {"Accept-Encoding": "identity", **(headers or {})}
    _WATCHDOG.watch(control)
    try:
        with httpx.Client(cookies=no_cookies(), follow_redirects=False, verify=tls_context()) as client:
            return _follow(client, target, control, limit, redirects, json_body, sent)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:  # (ValueError: IDNA's, for a bad host name)
        control.check()  # stopped (deadline, the call's end): that is the reason, not the broken read
        if isinstance(e, httpx.TimeoutException):
            raise FetchError(f"{control.shown} did not answer within {control.seconds:g} s") from None
        detail = redact_text(str(e)) or type(e).__name__
        raise FetchError(f"cannot fetch {what}{control.shown}: {detail}") from None
    finally:
        control.finish()


def _follow(
    client: httpx.Client,
    target: HttpTarget,
    control: FetchControl,
    limit: int,
    redirects: Redirects,
    json_body: Any,
    headers: dict[str, str],
) -> Reply:
    current = target
    method = "GET" if json_body is None else "POST"
    for _hop in range(MAX_REDIRECTS + 1):
        control.check()
        auth = target.auth if same_origin(current, target) else None
        with client.stream(
            method,
            current.url,
            json=json_body if method == "POST" else None,
            headers=headers,
            auth=auth,
            timeout=max(0.001, control.remaining()),
            extensions={"trace": control.trace},
        ) as resp:
            if resp.is_redirect:
                current = _redirect_target(current, resp, target, redirects)
                if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                    method = "GET"  # as browsers do (and RFC 9110 allows): the body is not sent again
                continue
            if resp.status_code != 200:
                raise FetchError(f"HTTP {resp.status_code} from {current.shown}")
            return Reply(_read(resp, current, control, limit), resp.headers.get("content-type", ""), current)
    raise FetchError(f"{target.shown}: more than {MAX_REDIRECTS} redirects")


def _redirect_target(current: HttpTarget, resp: httpx.Response, first: HttpTarget, redirects: Redirects) -> HttpTarget:
    location = resp.headers.get("location", "")
    try:
        nxt = parse_http_url(urljoin(current.url, location))
    except UrlError as e:
        raise FetchError(f"{current.shown} redirected to a URL that cannot be used: {e}") from None
    if redirects is Redirects.SAME_ORIGIN and not same_origin(nxt, first):
        raise FetchError(
            f"{current.shown} redirected to another origin ({redact(nxt.url)}): the call's data is not sent "
            "there; give that URL directly if it is meant"
        )
    return nxt


def _read(resp: httpx.Response, where: HttpTarget, control: FetchControl, limit: int) -> bytes:
    too_big = f"{where.shown} is larger than {_size(limit)}"
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FetchError(too_big)
    chunks: list[bytes] = []
    size = 0
    for chunk in _decoded(resp, where):
        size += len(chunk)
        if size > limit:
            raise FetchError(too_big)
        chunks.append(chunk)
        control.check()
    control.check()  # a socket shut down by stop() ends a body without a length as if complete
    return b"".join(chunks)


#: The Content-Encodings undone (a server that compresses though asked not to); zlib reads both headers.
_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})


def _decoded(resp: httpx.Response, where: HttpTarget) -> Iterator[bytes]:
    """The body as sent, in pieces of at most CHUNK bytes. A gzip or deflate body is inflated here, a
    piece at a time: httpx inflates each read whole, and 64 KiB of gzip inflate to 64 MiB — held before
    any limit could be counted."""
    encoding = resp.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        yield from resp.iter_raw(CHUNK)
        return
    if encoding not in _INFLATED:
        raise FetchError(f"{where.shown} sent its reply encoded as {encoding[:40]!r}, which was not asked for")
    inflate = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # (32: a gzip or a zlib header, as it comes)
    try:
        for raw in resp.iter_raw(CHUNK):
            piece = inflate.decompress(raw, CHUNK)
            while piece:
                yield piece
                piece = inflate.decompress(inflate.unconsumed_tail, CHUNK) if inflate.unconsumed_tail else b""
        if rest := inflate.flush():
            yield rest
    except zlib.error as e:
        raise FetchError(f"{where.shown}: its {encoding} reply cannot be decoded ({e})") from None


def _size(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{limit} bytes"


class CallFetches:
    """A call's network fetches: at most ``limit`` at once on the network pool, all stopped when the
    call ends (``bind``). A slot is free again only when its thread is, so an abandoned fetch still
    counts until its deadline or the socket shutdown ends it."""

    def __init__(self, limit: int = PER_CALL) -> None:
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._ended: asyncio.Event | None = None

    def bind(self, ended: asyncio.Event) -> None:
        """Stop every fetch of the call when ``ended`` is set (the call's ``ended`` event)."""
        self._ended = ended

    async def run(self, fn: Callable[[FetchControl], T], seconds: float, shown: str) -> T:
        """Run ``fn(control)`` on the network pool; raises FetchStopped if the call ends first. A
        cancelled caller (a prefetch given up) stops the fetch too."""
        loop = asyncio.get_running_loop()
        stopped = FetchStopped(f"{shown}: the call ended before it was fetched")
        if self._ended is not None and self._ended.is_set():
            raise stopped
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        slots = self._slots
        ended = asyncio.ensure_future(self._ended.wait()) if self._ended is not None else None
        control = FetchControl(seconds, shown)
        with hold(loop):
            try:
                await _acquire(slots, ended, stopped)
                try:
                    future = NETWORK_POOL.submit(fn, control)
                except BaseException:
                    slots.release()
                    raise
                future.add_done_callback(lambda _: _call_soon(loop, slots.release))
                waiter = asyncio.wrap_future(future, loop=loop)
                if not await _first(waiter, ended):
                    raise stopped
                return waiter.result()
            except BaseException:
                control.stop(stopped)  # (nothing to stop once the fetch has finished)
                raise
            finally:
                if ended is not None:
                    ended.cancel()


async def _acquire(slots: asyncio.Semaphore, ended: asyncio.Future[Any] | None, stopped: FetchStopped) -> None:
    """Take a slot, or raise ``stopped`` if the call ends first; a cancelled wait leaves none taken."""
    acquiring = asyncio.ensure_future(slots.acquire())
    try:
        got = await _first(acquiring, ended)
    except asyncio.CancelledError:
        if acquiring.done() and not acquiring.cancelled():
            slots.release()
        raise
    if not got:
        raise stopped


async def _first(work: asyncio.Future[Any], ended: asyncio.Future[Any] | None) -> bool:
    """Wait for ``work``; False if ``ended`` came first. ``work`` is cancelled when given up."""
    try:
        await asyncio.wait({work} if ended is None else {work, ended}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    if work.done():
        return True
    work.cancel()
    return False


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits on the slot any more
        loop.call_soon_threadsafe(fn)
