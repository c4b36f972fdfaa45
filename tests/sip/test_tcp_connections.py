"""SIP over TCP under hostile connections, on real loopback sockets: the per-address cap, half-sent
messages, idle connections (but never one a live dialog needs), oversized or misframed messages, and
peers that never read. The server runs in a thread of its own; the test is a plain socket client."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from conftest import PATIENCE, wait_for
from swml_engine.connections import ConnectionLimits
from swml_engine.transports.sip.endpoint import MAX_TCP_MESSAGE, Endpoint, FramingError, StreamFramer
from swml_engine.transports.sip.useragent import InviteReceived, SipEvent, UserAgent


@dataclass
class Running:
    endpoint: Endpoint
    port: int
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[[], object]) -> object:
        """``fn()`` on the server's loop (its state is only read there)."""

        async def run() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


@pytest.fixture
def sip_tcp() -> Iterator[Callable[[ConnectionLimits], Running]]:
    """Start a SIP endpoint with the given limits; its calls are answered (200 OK without SDP)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started: list[Endpoint] = []

    def start(limits: ConnectionLimits) -> Running:
        ua = UserAgent()
        holder: list[Endpoint] = []

        def on_event(event: SipEvent) -> None:
            if isinstance(event, InviteReceived):
                ua.answer(event.call, b"", holder[0].now)

        endpoint = Endpoint(ua, ("127.0.0.1", 0), on_event=on_event, limits=limits)
        holder.append(endpoint)
        asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
        started.append(endpoint)
        return Running(endpoint, int(endpoint.local_addr[1]), loop)

    yield start
    for endpoint in started:
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


class Client:
    """A TCP connection to the server from ``source`` (any 127.x address is ours on loopback)."""

    def __init__(self, port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.local = self.sock.getsockname()
        self.data = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.eof = True

    def poll(self) -> None:
        """Read what has come; ``eof`` once the server closed the connection."""
        while not self.eof:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return
            except OSError:  # reset: closed by the server at once
                chunk = b""
            if not chunk:
                self.eof = True
            self.data += chunk

    def closed_by_server(self, timeout: float = PATIENCE) -> bool:
        return wait_for(lambda: (self.poll(), self.eof)[1], timeout)

    def answered(self, status: bytes, cseq: str, timeout: float = PATIENCE) -> bool:
        """Whether a response with ``status`` to the request with ``cseq`` comes (before the connection ends)."""
        needle = f"CSeq: {cseq}\r\n".encode()

        def seen() -> bool:
            self.poll()
            return any(m.startswith(status) and needle in m for m in self.data.split(b"SIP/2.0 "))

        return wait_for(lambda: seen() or self.eof, timeout) and seen()

    def close(self) -> None:
        self.sock.close()


def request(
    client: Client, method: str, cseq: int, *, call_id: str = "c1", to_tag: str = "", body: bytes = b""
) -> bytes:
    host, port = client.local
    lines = [
        f"{method} sip:x@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK-{method.lower()}{cseq}-{port}",
        f"From: <sip:peer@{host}>;tag=peer",
        f"To: <sip:x@127.0.0.1>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:peer@{host}:{port};transport=tcp>",
        "Max-Forwards: 70",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def options_ok(client: Client, cseq: int = 1) -> bool:
    """The connection is served: an OPTIONS on it is answered 200."""
    client.send(request(client, "OPTIONS", cseq, call_id=f"o{cseq}-{client.local[1]}"))
    return client.answered(b"200", f"{cseq} OPTIONS")


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# --- the byte stream -----------------------------------------------------------------------------------


def test_framer_cuts_pipelined_split_and_keepalive_separated_messages() -> None:
    framer = StreamFramer()
    one = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 4\r\n\r\nabcd"
    two = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 2\r\nl : 2\r\n\r\nef"
    assert framer.feed(b"\r\n\r\n" + one + b"\r\n" + two) == [one, two]  # keep-alives skipped
    assert not framer.pending
    stream = one + two
    got = [m for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])]  # a byte at a time
    assert got == [one, two]
    assert framer.feed(one[:30]) == [] and framer.pending


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"INVITE sip:x SIP/2.0\r\nX-Pad: " + b"a" * MAX_TCP_MESSAGE, "no end of headers"),
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: 100000\r\n\r\n", "100"),
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n", "not a byte count"),
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: \xc2\xb2\r\n\r\n", "not a byte count"),
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n", "not a byte count"),
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: 5\r\nl: 7\r\n\r\n", "disagree"),
    ],
)
def test_framer_refuses_what_it_cannot_frame(data: bytes, why: str) -> None:
    with pytest.raises(FramingError, match=why):
        StreamFramer().feed(data)


# --- connections ---------------------------------------------------------------------------------------


def test_connections_beyond_the_per_address_cap_are_refused_and_logged(
    sip_tcp: Callable[[ConnectionLimits], Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    srv = sip_tcp(ConnectionLimits(max_per_source=5, idle_timeout=3600.0))
    clients = [Client(srv.port) for _ in range(8)]
    other = Client(srv.port, "127.0.0.2")
    try:
        assert wait_for(lambda: sum((c.poll(), c.eof)[1] for c in clients) == 3)  # closed at once, unread
        served = [c for c in clients if not c.eof]
        assert len(served) == 5 and all(options_ok(c, 1) for c in served)
        assert options_ok(other)  # another address is not held back by this one's connections
        lines = warnings(caplog, "refused")
        assert len(lines) == 1, lines  # one line for the first refusal, not one per connection
        assert "5 connections open from 127.0.0.1, the per-address limit" in lines[0]
        served[0].close()  # a place frees up
        assert wait_for(lambda: srv.call(lambda: srv.endpoint.gate.by_source["127.0.0.1"]) == 4)
        again = Client(srv.port)
        assert options_ok(again)
        clients.append(again)
    finally:
        for c in [*clients, other]:
            c.close()


def test_half_sent_messages_are_dropped_after_the_header_timeout(
    sip_tcp: Callable[[ConnectionLimits], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """3000 half-sent INVITEs were all still open after 40 s: now a message not complete within
    header_timeout of its first byte closes its connection, whether its headers or its body stall."""
    srv = sip_tcp(ConnectionLimits(header_timeout=1.0, idle_timeout=3600.0))
    half = []
    for i in range(40):
        c = Client(srv.port)
        full = request(c, "INVITE", 1, call_id=f"half-{i}", body=b"v=0\r\n" * 20)
        c.send(full[: len(full) // 3] if i % 2 else full[:-10])  # headers unfinished, or the body short
        half.append(c)
    idle = Client(srv.port)  # sent nothing: only the (long) idle timeout applies to it
    try:
        assert all(c.closed_by_server() for c in half)
        assert options_ok(idle)
        lines = warnings(caplog, "not complete")
        assert len(lines) == 1 and "a message not complete 1 s after it began (1 such so far)" in lines[0], lines
        assert wait_for(lambda: srv.call(lambda: srv.endpoint.gate.total) == 1)  # all let go
    finally:
        for c in [*half, idle]:
            c.close()


def test_idle_connections_close_but_not_one_a_live_dialog_needs(
    sip_tcp: Callable[[ConnectionLimits], Running],
) -> None:
    srv = sip_tcp(ConnectionLimits(idle_timeout=1.0))
    caller = Client(srv.port)
    try:
        caller.send(request(caller, "INVITE", 1, call_id="dialog"))
        assert caller.answered(b"200", "1 INVITE")
        tag = caller.data.split(b"To: ")[-1].split(b"tag=")[1].split(b"\r\n")[0].decode()
        caller.send(request(caller, "ACK", 1, call_id="dialog", to_tag=tag))
        # a connection opened after the call's last message, with nothing on it: closed when idle
        # (so the call's connection, idle for longer, has met the idle timeout too)
        control = Client(srv.port)
        assert control.closed_by_server()
        # ... but the call's connection stays: the caller's BYE still comes on it
        caller.send(request(caller, "BYE", 2, call_id="dialog", to_tag=tag))
        assert caller.answered(b"200", "2 BYE")
        assert caller.closed_by_server()  # the call is over: now it is an idle connection like any
        control.close()
    finally:
        caller.close()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nX-Pad: " + b"a" * 70000, "no end of headers"),
        (b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 10000000\r\n\r\n", "a 10000"),
        (b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: -5\r\n\r\n", "Content-Length '-5' is not a byte count"),
        (b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 5\r\nl: 50\r\n\r\n", "disagree"),
    ],
)
def test_oversized_or_misframed_messages_close_the_connection(
    sip_tcp: Callable[[ConnectionLimits], Running], caplog: pytest.LogCaptureFixture, data: bytes, why: str
) -> None:
    srv = sip_tcp(ConnectionLimits(header_timeout=3600.0, idle_timeout=3600.0))
    bad, good = Client(srv.port), Client(srv.port)
    try:
        bad.send(data)
        assert bad.closed_by_server()
        assert wait_for(lambda: bool(warnings(caplog, why)))
        assert options_ok(good)  # the listener is unharmed
    finally:
        bad.close()
        good.close()


def test_pipelined_and_dripped_messages_are_all_answered(sip_tcp: Callable[[ConnectionLimits], Running]) -> None:
    srv = sip_tcp(ConnectionLimits(header_timeout=3600.0))
    c = Client(srv.port)
    try:
        first = request(c, "OPTIONS", 1, call_id="p1")
        second = request(c, "OPTIONS", 2, call_id="p2", body=b"hello")
        c.send(b"\r\n\r\n" + first + second[:50])  # a keep-alive, a message, the start of the next
        assert c.answered(b"200", "1 OPTIONS")
        for i in range(50, len(second)):
            c.send(second[i : i + 1])
        assert c.answered(b"200", "2 OPTIONS")
    finally:
        c.close()


def test_a_peer_that_never_reads_its_answers_is_closed(
    sip_tcp: Callable[[ConnectionLimits], Running], caplog: pytest.LogCaptureFixture
) -> None:
    srv = sip_tcp(ConnectionLimits(header_timeout=3600.0))
    c = Client(srv.port, rcvbuf=4096)
    try:
        batch = b"".join(request(c, "OPTIONS", n, call_id=f"nr{n}") for n in range(200))
        for _ in range(100):  # 20,000 OPTIONS at most; their answers are never read
            try:
                c.sock.settimeout(PATIENCE)
                c.sock.sendall(batch)
            except OSError:
                break
            if warnings(caplog, "left unread"):
                break
        assert wait_for(lambda: bool(warnings(caplog, "left unread")))
        c.sock.settimeout(0.1)
        assert c.closed_by_server()
    finally:
        c.close()
