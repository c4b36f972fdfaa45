"""WebSockets on the HTTP server (service/httpd.py): who is let in, how big a message may be, and that an
open WebSocket is a connection the gate counts until it closes.

A real ApiServer on loopback serves the app ``build_app`` makes — its RequestGuard and sessions — with one
test-only WebSocket route under /api that echoes each text message, prefixed by how the guard let the
connection in. The client is wsproto (the server's own WebSocket library) over a plain socket, so every
test sees the handshake's status, headers and body, and the close codes, as a client on the network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import WebSocket, WebSocketDisconnect
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from conftest import PATIENCE, wait_for
from swml_engine.connections import ConnectionGate, ConnectionLimits
from swml_engine.service.api import build_app
from swml_engine.service.auth import UrlSigner
from swml_engine.service.httpd import MAX_WS_MESSAGE, ApiServer
from swml_engine.service.index import SqliteIndex
from swml_engine.service.sessions import COOKIE

TOKEN = "websocket-test-token"
ECHO = "/api/test/echo"


class _Service:
    """What build_app needs of a service to sign in and to take a WebSocket: an index for the sessions."""

    def __init__(self, data: Path) -> None:
        self.index = SqliteIndex(data / "index.sqlite3")
        self.calls_dir = data / "calls"
        self.phase = "serving"


async def _echo(ws: WebSocket) -> None:
    await ws.accept()
    principal = ws.scope["state"].get("principal")
    with contextlib.suppress(WebSocketDisconnect):
        async for text in ws.iter_text():
            await ws.send_text(f"{principal}:{text}")


@dataclass
class Served:
    port: int
    gate: ConnectionGate

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def serve(data: Path, limits: ConnectionLimits) -> Iterator[Served]:
    """The API on a port of its own, in an event loop on a thread of its own; on the way out, every
    connection's gate slot must have come back."""
    app = build_app(_Service(data), TOKEN, UrlSigner(data))  # type: ignore[arg-type]
    app.add_api_websocket_route(ECHO, _echo)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    loop = _service_loop()
    thread = threading.Thread(target=loop.run_forever, name="api", daemon=True)
    thread.start()
    server = ApiServer(app, [listener], limits)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(PATIENCE)
    try:
        served = Served(listener.getsockname()[1], server.gate)
        yield served
        assert wait_for(lambda: server.gate.total == 0), f"{server.gate.total} gate slots still held"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(PATIENCE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(PATIENCE)
        loop.close()


def _service_loop() -> asyncio.AbstractEventLoop:
    """The loop swml serve runs (uvloop: its transports hand over protocols as asyncio's do, or not)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class Handshake:
    status: int
    headers: dict[str, str]
    body: bytes
    #: What the server's Sec-WebSocket-Extensions granted of the client's offer.
    extensions: list[str]

    def detail(self) -> str:
        return str(json.loads(self.body)["detail"])


class Client:
    """A WebSocket client, one blocking socket (every read bounded by PATIENCE). It answers the server's
    pings as it reads, unless ``pongs`` is off: a peer gone without closing."""

    def __init__(self, port: int, *, pongs: bool = True) -> None:
        self.port = port
        self.pongs = pongs
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()

    def handshake(self, path: str = ECHO, headers: dict[str, str] | None = None, deflate: bool = False) -> Handshake:
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        offer = [PerMessageDeflate()] if deflate else []
        self.sock.sendall(
            self.ws.send(Request(host=f"127.0.0.1:{self.port}", target=path, extra_headers=extra, extensions=offer))
        )
        answer = self.next_event()
        if isinstance(answer, AcceptConnection):
            return Handshake(101, _names(answer.extra_headers), b"", [e.name for e in answer.extensions])
        assert isinstance(answer, RejectConnection), answer
        body = b""
        while answer.has_body:
            data = self.next_event()
            assert isinstance(data, RejectData)
            body += data.data
            if data.body_finished:
                break
        return Handshake(answer.status_code, _names(answer.headers), body, [])

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def receive(self) -> str | CloseConnection:
        """The next whole text message, or the server's close."""
        text = ""
        while True:
            event = self.next_event()
            if isinstance(event, CloseConnection):
                return event
            assert isinstance(event, TextMessage), event
            text += event.data
            if event.message_finished:
                return text

    def echo(self, text: str) -> str | CloseConnection:
        self.send_text(text)
        return self.receive()

    def close(self) -> None:
        """A clean close: ours, the server's answer, then the socket."""
        self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        assert isinstance(self.next_event(), CloseConnection)
        self.sock.close()

    def next_event(self) -> Event:
        while not self._events:
            self._take(self.sock.recv(65536))
        return self._events.popleft()

    def answer_pings(self) -> bool:
        """Take what has come, without waiting (answering pings); False, for ``wait_for``."""
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            self._take(self.sock.recv(65536))
        self.sock.settimeout(PATIENCE)
        return False

    def _take(self, data: bytes) -> None:
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if not isinstance(event, Ping):
                self._events.append(event)
            elif self.pongs:
                self.sock.sendall(self.ws.send(event.response()))


def _names(headers: Any) -> dict[str, str]:
    return {bytes(k).decode().lower(): bytes(v).decode() for k, v in headers}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("api"), ConnectionLimits(header_timeout=PATIENCE)) as served:
        yield served


@pytest.fixture(scope="module")
def cookie(api: Served) -> str:
    """A signed-in browser's cookie (the console's sign-in with the token)."""
    signed_in = httpx.post(f"{api.origin}/api/session", json={"token": TOKEN}, timeout=PATIENCE)
    assert signed_in.status_code == 200, signed_in.text
    return f"{COOKIE}={signed_in.cookies[COOKIE]}"


@pytest.fixture(autouse=True)
def _all_slots_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared server, every connection's gate slot has come back: refused and
    accepted handshakes alike."""
    yield
    if "api" in request.fixturenames:
        gate = request.getfixturevalue("api").gate
        assert wait_for(lambda: gate.total == 0), f"{gate.total} gate slots still held"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Cookie": f"{COOKIE}={'x' * 43}"}],
    ids=["nothing", "wrong token", "unknown session"],
)
def test_a_handshake_without_credentials_is_refused_401(api: Served, headers: dict[str, str]) -> None:
    answer = Client(api.port).handshake(headers=headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "sign in" in answer.detail() or "bearer token" in answer.detail()


@pytest.mark.parametrize("origin", [None, "http://evil.example", "http://127.0.0.1:1", "null"])
def test_a_cookie_from_another_origin_is_refused_403(api: Served, cookie: str, origin: str | None) -> None:
    headers = {"Cookie": cookie} | ({"Origin": origin} if origin else {})
    answer = Client(api.port).handshake(headers=headers)
    assert answer.status == 403
    assert "Origin" in answer.detail()


def test_a_cookie_from_the_page_s_own_origin_is_let_in(api: Served, cookie: str) -> None:
    client = Client(api.port)
    assert client.handshake(headers={"Cookie": cookie, "Origin": api.origin}).status == 101
    assert client.echo("hello") == "session:hello"
    client.close()


def test_the_bearer_token_is_let_in_from_anywhere(api: Served) -> None:
    client = Client(api.port)
    headers = {"Authorization": f"Bearer {TOKEN}", "Origin": "http://elsewhere.example"}
    assert client.handshake(headers=headers).status == 101
    assert client.echo("hello") == "token:hello"
    client.close()


def test_websockets_are_served_under_api_only(api: Served) -> None:
    answer = Client(api.port).handshake(path="/ws", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 404
    assert "/api/" in answer.detail()


@pytest.mark.parametrize(
    ("host", "key"),
    [(b"xn--a", True), (b"\xff", True), (b"127.0.0.1", False)],
    ids=["host not IDNA", "host not ASCII", "no key"],
)
def test_a_handshake_wsproto_cannot_read_is_answered_400(api: Served, host: bytes, key: bool) -> None:
    """h11 takes these, wsproto (which decodes the Host as IDNA, and wants a key) does not: the answer is
    still HTTP's, and no WebSocket is left behind holding the connection's slot."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=PATIENCE)
    sock.sendall(
        b"GET /api/test/echo HTTP/1.1\r\nHost: "
        + host
        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" if key else b"")
        + b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\n\r\n"
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")
    sock.close()


def test_a_message_over_64_kib_closes_the_connection_1009(api: Served) -> None:
    client = Client(api.port)
    assert client.handshake(headers={"Authorization": f"Bearer {TOKEN}"}).status == 101
    largest = "a" * (MAX_WS_MESSAGE - len("token:"))  # (the echo is 6 bytes longer: our client takes it)
    assert client.echo(largest) == "token:" + largest
    closed = client.echo("b" * 70 * 1024)
    assert isinstance(closed, CloseConnection)
    assert closed.code == 1009


def test_compression_is_not_granted(api: Served) -> None:
    """A compressed message would be inflated before its size is known (a compression bomb)."""
    client = Client(api.port)
    answer = client.handshake(headers={"Authorization": f"Bearer {TOKEN}"}, deflate=True)
    assert answer.status == 101
    assert answer.extensions == []
    assert client.echo("plain") == "token:plain"
    client.close()


def test_an_open_websocket_holds_its_connection_slot_until_it_closes(tmp_path: Path) -> None:
    limits = ConnectionLimits(max_total=2, header_timeout=1.0, idle_timeout=1.0)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with serve(tmp_path, limits) as api:
        clients = [Client(api.port), Client(api.port)]
        for client in clients:
            assert client.handshake(headers=bearer).status == 101
        assert api.gate.total == 2

        refused = socket.create_connection(("127.0.0.1", api.port), timeout=PATIENCE)
        assert refused.recv(1024).startswith(b"HTTP/1.1 503")
        refused.close()

        # Past the header deadline and the idle timeout both: an open WebSocket is meant to be quiet.
        time.sleep(2 * max(limits.header_timeout, limits.idle_timeout) + 0.5)
        assert [client.echo("still here") for client in clients] == ["token:still here"] * 2

        clients.pop().close()
        assert wait_for(lambda: api.gate.total == 1)
        clients.append(Client(api.port))
        assert clients[-1].handshake(headers=bearer).status == 101

        clients.pop().sock.close()  # gone without a close frame: the slot comes back all the same
        clients.pop().close()


def test_a_peer_that_answers_no_ping_is_closed_1011(tmp_path: Path) -> None:
    """A browser gone without closing (its lid shut) frees its connection, and its call, in
    ping_interval + ping_timeout; one that answers stays."""
    limits = ConnectionLimits(ping_interval=0.2, ping_timeout=2.0)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with serve(tmp_path, limits) as api:
        live, dead = Client(api.port), Client(api.port, pongs=False)
        assert live.handshake(headers=bearer).status == 101
        assert dead.handshake(headers=bearer).status == 101
        assert wait_for(lambda: live.answer_pings() or api.gate.total == 1)
        closed = dead.receive()
        assert isinstance(closed, CloseConnection)
        assert closed.code == 1011
        assert live.echo("answered every ping") == "token:answered every ping"
        live.close()
