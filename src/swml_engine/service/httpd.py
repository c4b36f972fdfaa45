"""uvicorn serving the API inside the service's own event loop, on sockets the service opened, with the
limits uvicorn lacks.

uvicorn's ``serve`` normally takes over SIGINT/SIGTERM; here the service owns them (a stop hangs up
its calls and finalises their recordings first), so that is switched off.

What anyone on the network can make the HTTP port spend is bounded at three levels:

* per connection (:class:`GuardedH11Protocol`): a connection is admitted within the global and
  per-address caps and the descriptor reserve of :class:`~swml_engine.connections.ConnectionGate`
  (refused: a 503 and closed); a request's header block (at most :data:`MAX_HEADER_BYTES`) must arrive
  within ``header_timeout`` of the connection opening or of its first byte; a keep-alive connection
  with nothing to do is closed after ``idle_timeout``;
* per request (:class:`RequestGuard`, in front of FastAPI): ``/api`` requests without the token or a
  session cookie (sessions.py; with its CSRF header when the request changes something) get 401 (403)
  before any of their body is read; a body larger than :data:`MAX_BODY` gets 413 (from its
  ``Content-Length``, or as it streams), one slower than ``header_timeout`` gets 408; a request whose
  body the application did not read to the end is answered with ``Connection: close``, so the server
  does not go on reading and discarding it;
* per WebSocket (:class:`GuardedWSProtocol`, uvicorn's wsproto protocol): only under ``/api``, let in
  by the guard like a request — a session cookie only with the server's own ``Origin`` — before the
  handshake is accepted (refused: an HTTP answer to the handshake); messages of at most
  :data:`MAX_WS_MESSAGE` (1009 beyond), no compression, pings a dead peer must fail to answer (the
  limits' ``ping_interval`` and ``ping_timeout``: 1011); the connection keeps its gate
  slot while it is open, and the HTTP timeouts stop at the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from math import ceil
from typing import Any

import h11
import uvicorn
import wsproto.events
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto.connection import ConnectionState

from swml_engine.connections import ConnectionGate, ConnectionLimits, GuessLimiter
from swml_engine.service.auth import token_matches
from swml_engine.service.index import IndexUnavailable
from swml_engine.service.sessions import (
    CSRF_HEADER,
    SAFE_METHODS,
    Sessions,
    cookie_value,
    csrf_matches,
)

log = logging.getLogger(__name__)

#: On every answer: a browser takes each body as the type it is said to be (an audio file, JSON), never as
#: a page it guessed from the bytes — a recording a caller's voice filled must not become a script.
NOSNIFF = (b"x-content-type-options", b"nosniff")

#: The largest request body taken: the API's bodies are ``{"behavior": "skip"}`` and the sign-in's
#: ``{"token": "..."}``.
MAX_BODY = 4096
#: The largest request header block (h11 answers 400 beyond).
MAX_HEADER_BYTES = 16 * 1024
#: Paths that need the bearer token or a session cookie (sessions.py).
PROTECTED_PREFIX = "/api"
#: The one /api request let in without either: the sign-in, whose body carries the token.
SIGN_IN = ("POST", "/api/session")
#: The largest WebSocket message taken; a bigger one closes the connection (1009). The signalling's
#: largest message is an SDP offer with every ICE candidate gathered: a few KiB.
MAX_WS_MESSAGE = 64 * 1024

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


# --- per request -----------------------------------------------------------------------------------


class _BodyRefused(HTTPException):
    """Raised from ``receive``: FastAPI passes an HTTPException from reading the body on as it is
    (anything else becomes a 400), so the client gets this status."""


class RequestGuard:
    """ASGI middleware: the token and the body's size and time, checked before the application reads
    anything (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        body_timeout: float,
        max_body: int = MAX_BODY,
        sessions: Sessions | None = None,
        limiter: GuessLimiter | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.sessions = sessions
        #: Wrong tokens per address, shared with the sign-in: guessing the token as a bearer is limited
        #: as guessing it at the sign-in is (else the sign-in's limit would be for nothing).
        self.limiter = limiter or GuessLimiter()
        self.body_timeout = body_timeout
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if _protected(str(scope["path"])):
            refusal = await self._admit(scope, headers)
            if refusal is not None:
                await _answer(send, *refusal)
                return
        length = headers.get(b"content-length")
        if length is not None and (len(length) > 18 or int(length) > self.max_body):  # (h11 checked it is digits)
            await _answer(send, 413, f"request bodies are limited to {self.max_body} bytes")
            return
        body = _Body(self, receive, announced=length not in (None, b"0") or b"transfer-encoding" in headers)

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", [])]
                if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                    headers.append(NOSNIFF)
                if not body.complete:
                    # The rest of the body would be read and thrown away: close the connection instead.
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, body.receive, guarded_send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: let in under /api as a request is, or refused before it is accepted."""
        path = str(scope["path"])
        if _protected(path):
            refusal = await self._admit(scope, _headers(scope))
        else:
            refusal = 404, f"no WebSocket at {path}: they are served under {PROTECTED_PREFIX}/ only", []
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await _refuse_handshake(scope, receive, send, *refusal)

    async def _admit(
        self, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """Let an /api request or WebSocket in by the bearer token or a session cookie (noting which in
        the scope's ``state``, for the application), or say why not."""
        state = scope.setdefault("state", {})
        authorization = headers.get(b"authorization")
        if authorization is not None:
            refusal = bearer_refusal(self.limiter, authorization, self.token, _client_host(scope))
            if refusal is None:
                state["principal"] = "token"
                return None
            if refusal[0] == 429:
                return refusal
            # (a wrong token, counted: a cookie may still let the request in)
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else str(scope["method"])  # (a handshake is a GET)
        if (method, scope["path"]) == SIGN_IN:  # the token comes in its body (small: checked below)
            return None
        value = cookie_value(headers.get(b"cookie")) if self.sessions is not None else None
        if value is None or self.sessions is None:
            return 401, "a bearer token or a session is required", [(b"www-authenticate", b"Bearer")]
        try:
            session = await self.sessions.find(value, time.time())
        except IndexUnavailable as e:
            return 503, f"sessions cannot be checked now: {e}", [(b"retry-after", b"5")]
        if session is None:
            return 401, "the session has ended or expired: sign in again", [(b"www-authenticate", b"Bearer")]
        if websocket and not _same_origin(headers):
            # The CSRF header cannot be asked of a handshake (no page can add headers to one), and a
            # browser sends the cookie with a WebSocket any page of this site opens (a sibling
            # subdomain's too); but it always names the page's origin in Origin.
            return 403, "a WebSocket signed in by cookie must come from this server's own page (Origin)", []
        if method not in SAFE_METHODS and not csrf_matches(headers.get(CSRF_HEADER.encode()), session):
            return 403, f"a request signed in by cookie that changes something needs the {CSRF_HEADER} header", []
        state["principal"] = "session"
        state["session"] = session
        return None


class _Body:
    """A request body read through ``receive``, within the size and time limits."""

    def __init__(self, guard: RequestGuard, receive: Receive, *, announced: bool) -> None:
        self._guard = guard
        self._receive = receive
        self.complete = not announced
        self._size = 0
        self._deadline = time.monotonic() + guard.body_timeout

    async def receive(self) -> Message:
        if self.complete:  # after the body: only http.disconnect, which may take as long as it takes
            return await self._receive()
        try:
            async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                message = await self._receive()
        except TimeoutError:
            raise _BodyRefused(408, f"the request body did not arrive within {self._guard.body_timeout:g} s") from None
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > self._guard.max_body:
                raise _BodyRefused(413, f"request bodies are limited to {self._guard.max_body} bytes")
            self.complete = not message.get("more_body", False)
        return message


def bearer_refusal(
    limiter: GuessLimiter, authorization: bytes | str, token: str, host: str
) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """None when ``authorization`` carries the token; else why not: 401 for a wrong token (counted
    against ``host``), 429 while ``host`` has guessed too often — then even the right token waits, or
    the answers would still tell a right guess from a wrong one."""
    now = time.time()
    wait = limiter.wait(host, now)
    if wait > 0:
        retry = [(b"retry-after", str(ceil(wait)).encode())]
        return 429, f"too many wrong tokens from {host}: wait {wait:.0f} s", retry
    if token_matches(authorization, token):
        return None
    limiter.failed(host, now)
    return 401, "a bearer token or a session is required", [(b"www-authenticate", b"Bearer")]


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    """Whether the ``Origin`` of a handshake names this server as the ``Host`` header does: host and
    port, not the scheme (behind a proxy that ends TLS the page is https and the server http)."""
    origin, host = headers.get(b"origin"), headers.get(b"host")
    scheme, sep, place = (origin or b"").partition(b"://")
    return bool(sep and host) and scheme.lower() in (b"http", b"https") and place.lower() == (host or b"").lower()


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(bytes(name).lower(), bytes(value))
    return found


def _error(detail: str, headers: list[tuple[bytes, bytes]] | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A JSON error's body as FastAPI words them, and its headers (closing the connection)."""
    body = json.dumps({"detail": detail}).encode()
    return body, [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        NOSNIFF,
        *(headers or []),
    ]


async def _answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error, closing the connection (the request's body, if any, is never read)."""
    body, all_headers = _error(detail, headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse_handshake(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer a WebSocket handshake with an HTTP error instead of accepting it (ASGI's denial response),
    so an API client sees why; a server without that extension can only answer 403."""
    if (await receive())["type"] != "websocket.connect":  # gone before its handshake was answered
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body, all_headers = _error(detail, headers)
    await send({"type": "websocket.http.response.start", "status": status, "headers": all_headers})
    await send({"type": "websocket.http.response.body", "body": body})


# --- per connection --------------------------------------------------------------------------------


class _GuardedConfig(uvicorn.Config):
    """uvicorn's config, carrying the gate the connections of one server share."""

    def __init__(self, app: FastAPI, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.gate = gate


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, admitted by the gate, with a deadline for each request's headers."""

    _host = ""
    _admitted = False
    _header_deadline: asyncio.TimerHandle | None = None

    @property
    def _gate(self) -> ConnectionGate:
        config = self.config
        assert isinstance(config, _GuardedConfig)
        return config.gate

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self._host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        gate = self._gate
        why = gate.admit(self._host)
        if why is not None:
            if gate.should_log():
                log.warning("HTTP connection from %s refused: %s (%d refused so far)", self._host, why, gate.refused)
            transport.write(_REFUSED)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm_header_deadline()  # the first request is due now

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm_header_deadline()
        self._gate.release(self._host)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self._header_deadline is None:  # a new request begins (or the rest of a refused body)
            self._arm_header_deadline()
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # its headers are complete: the request runs
            self._disarm_header_deadline()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # uvicorn hands the transport to a WebSocket protocol here, and this one never hears of the
        # connection again (not even its end): the slot goes with the transport, and this protocol's
        # timers stop — the handshake is complete, and an open WebSocket is meant to be quiet.
        self._disarm_header_deadline()
        try:
            super().handle_websocket_upgrade(event)  # (the new protocol's connection_lost comes later)
        except Exception as e:
            # wsproto read the handshake again and failed where h11 did not (it decodes the Host as IDNA:
            # ``Host: xn--a`` raises): the connection is still this protocol's, and its slot too.
            log.debug("WebSocket handshake from %s not read: %r", self._host, e)
            self._forget_successor()
            self.send_400_response("Invalid WebSocket handshake: its Host is not a host name, or its path not ASCII.")
            return
        self._admitted = False
        successor = self.transport.get_protocol()
        if isinstance(successor, GuardedWSProtocol):
            successor.hold_slot(self._gate, self._host)
        else:  # (only a GuardedWSProtocol is configured: nothing else could hold it)
            self._gate.release(self._host)

    def _forget_successor(self) -> None:
        """Drop the WebSocket protocol a failed upgrade left in uvicorn's set of connections: it would
        stay there for good, and a stop would wait for it to close."""
        connections = self.server_state.connections
        for stray in [c for c in connections if isinstance(c, WSProtocol) and c.transport is self.transport]:
            connections.discard(stray)

    def _arm_header_deadline(self) -> None:
        limits = self._gate.limits
        self._header_deadline = self.loop.call_later(limits.header_timeout, self._header_timed_out)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.debug("HTTP connection from %s closed: no complete request in time", self._host)
            self.transport.close()


class GuardedWSProtocol(WSProtocol):
    """uvicorn's wsproto protocol, holding the gate slot of the HTTP connection it was upgraded from
    until the connection closes. Messages, compression and pings are limited by the config
    (:class:`ApiServer`); a dead peer is found by the pings, not by a timeout of ours.

    A peer's pings are answered only while the peer takes what is sent to it: uvicorn writes a pong for
    every ping whatever its write buffer holds, so a peer that sent pings and never read made the
    service keep every pong (hundreds of MB a minute, for as long as a call lasted). While the buffer is
    full, only the latest ping is kept, and answered once the peer reads again (RFC 6455 §5.5.3 allows it)."""

    _gate: ConnectionGate | None = None
    _host = ""
    _unanswered_ping: wsproto.events.Ping | None = None

    def hold_slot(self, gate: ConnectionGate, host: str) -> None:
        self._gate, self._host = gate, host

    def handle_ping(self, event: wsproto.events.Ping) -> None:
        if self.writable.is_set():
            super().handle_ping(event)
        else:  # (uvicorn's writes wait on writable: it is clear while the transport's buffer is full)
            self._unanswered_ping = event

    def resume_writing(self) -> None:
        super().resume_writing()
        ping, self._unanswered_ping = self._unanswered_ping, None
        if ping is not None and self.conn.state is ConnectionState.OPEN and not self.close_sent:
            super().handle_ping(ping)

    def connection_lost(self, exc: Exception | None) -> None:
        gate, self._gate = self._gate, None  # released exactly once
        try:
            super().connection_lost(exc)
        finally:
            if gate is not None:
                gate.release(self._host)


# --- the server ------------------------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        pass


class ApiServer:
    def __init__(self, app: FastAPI, sockets: list[socket.socket], limits: ConnectionLimits | None = None) -> None:
        limits = limits or ConnectionLimits()
        config = _GuardedConfig(
            app,
            ConnectionGate(limits),
            http=GuardedH11Protocol,
            ws=GuardedWSProtocol,
            ws_max_size=MAX_WS_MESSAGE,
            ws_ping_interval=limits.ping_interval,
            ws_ping_timeout=limits.ping_timeout,
            # Off: a compressed message is inflated before its size is known, so a few KiB could become
            # gigabytes (and the signalling's JSON is small anyway).
            ws_per_message_deflate=False,
            lifespan="off",
            # uvicorn leaves logging as the service set it (swml serve: --log-format, the level of
            # uvicorn.error): its own config would put a handler of its own on its loggers, writing plain
            # text among JSON lines, and set them back to warning — a line for every malformed request.
            log_config=None,
            log_level=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=max(1, round(limits.idle_timeout)),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        self._server = _EmbeddedServer(config)
        self._sockets = sockets
        self._task: asyncio.Task[None] | None = None
        self.gate = config.gate

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=self._sockets))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP API stopped at start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._task, 10)
        for sock in self._sockets:
            sock.close()
