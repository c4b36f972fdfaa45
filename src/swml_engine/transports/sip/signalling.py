"""SIP signalling on aiosipua, with the gaps DESIGN §4 lists closed in this thin layer of ours.

- Retransmissions: every response we send is remembered by its server transaction (Call-ID, top Via
  branch, CSeq); a request that matches one again is a retransmission and gets the same response,
  never a second call (INVITE) or a 500 (in-dialog requests aiosipua sees as a CSeq replay).
- TCP: responses go back over the connection the request came on (RFC 3261 §18.2.2), not to the
  Via address, which a TCP client rarely listens on.
- BYE from our side goes along the route set (kept in Record-Route order, RFC 3261 §12.1.1; strict
  routers too, §12.2.1.1) or to the peer's Contact, carries a Reason, and is retransmitted over UDP until
  answered. Host names are resolved first (uvloop's sendto takes addresses only); over TCP a closed
  connection is opened again to the route or Contact.
- Our Contact is an address the peer can reach: ``--advertise``, the bound address, or — bound to a
  wildcard — the local address that routes to the peer; on TCP it says ``transport=tcp``, so the peer's
  ACK and BYE come over TCP too. Dialog-creating responses copy the INVITE's Record-Route.
- UDP and TCP share one dialog table: an in-dialog request is found whichever transport it comes on.
- Final non-2xx answers to an INVITE are retransmitted over UDP until the ACK (Timer G), and a rejected
  call is forgotten at the ACK or after Timer H, so INVITEs that are never ACKed cannot pile up.
- An INVITE with a To tag for a dialog we do not have gets 481 (RFC 3261 §12.2.2), not a new call.
- Several processes may share the SIP port (SO_REUSEPORT) for ``--workers``.
- TCP connections are admitted within a global and per-address cap and a reserve of file descriptors
  for calls (:mod:`swml_engine.connections`); a message must be complete within ``header_timeout`` of
  its first byte and within 64 KiB; a connection with no message for ``idle_timeout`` is closed unless
  a live dialog needs it. Refusals and drops are logged with their reason, rate-limited.
- Timers (Timer G/H, our BYE's retransmissions, the reply cache's age) run on :class:`SipTimers`, which
  a test replaces with a clock it moves by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosipua.dialog import DialogState, dialog_matches
from aiosipua.header_codec import parse_uri
from aiosipua.incoming_call import IncomingCall
from aiosipua.message import SipMessage, SipRequest, SipResponse
from aiosipua.transaction import T1, T2, TIMER_H
from aiosipua.transport import (
    SipTransport,
    TcpSipTransport,
    UdpSipTransport,
    _response_destination,
    _stamp_via_received,
)
from aiosipua.uas import SipUAS
from aiosipua.utils import format_addr, generate_tag

from swml_engine.connections import ConnectionGate, ConnectionLimits

log = logging.getLogger(__name__)

#: The methods we answer (Allow in 405s and OPTIONS answers).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
#: Option tags a Require may name (RFC 3261 §8.2.2.3): none (no 100rel, no session timers).
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()

TxnKey = tuple[str, str, str]  # (Call-ID, top Via branch, CSeq as written)


class SipTimers(Protocol):
    """The time SIP timers run on: the event loop's, or in tests a clock moved by hand, so that RFC
    timing (Timer G every 0.5 s, Timer H at 32 s) is checked without waiting or racing the machine."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopTimers:
    """Real time: the monotonic clock and the event loop's sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def transaction_key(msg: SipMessage) -> TxnKey | None:
    vias = msg.headers.get("via")
    cseq = msg.headers.get_first("cseq")
    call_id = msg.headers.get_first("call-id")
    if not vias or not cseq or not call_id:
        return None
    branch = ""
    for part in vias[0].split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "branch":
            branch = value
    return (call_id, branch, " ".join(cseq.split()).upper())


@dataclass
class ReplyCache:
    """Last response per server transaction, kept for Timer H (32 s) to answer retransmissions."""

    responses: dict[TxnKey, tuple[SipResponse, float]] = field(default_factory=dict)
    #: Where each request came from (and when), so its answer finds its TCP connection.
    sources: dict[TxnKey, tuple[tuple[str, int], float]] = field(default_factory=dict)
    #: How long an entry is kept (Timer H), and how often old ones are looked for.
    ttl: float = TIMER_H
    sweep_every: float = 5.0
    #: The clock entries are dated by (the server's timers').
    now: Callable[[], float] = time.monotonic
    _swept: float = 0.0

    def note_source(self, key: TxnKey, addr: tuple[str, int]) -> None:
        self.sources[key] = (addr, self.now())
        self._sweep()

    def source(self, key: TxnKey) -> tuple[str, int] | None:
        hit = self.sources.get(key)
        return hit[0] if hit is not None else None

    def remember(self, response: SipResponse) -> None:
        key = transaction_key(response)
        if key is not None:
            self.responses[key] = (response, self.now())
        self._sweep()

    def lookup(self, request: SipRequest) -> SipResponse | None:
        key = transaction_key(request)
        hit = self.responses.get(key) if key is not None else None
        return hit[0] if hit is not None else None

    def _sweep(self) -> None:
        now = self.now()
        if now - self._swept < self.sweep_every:
            return
        self._swept = now
        for key in [k for k, (_, t) in self.responses.items() if now - t > self.ttl]:
            self.responses.pop(key, None)
        # apart: a request that was never answered leaves its source behind
        for key in [k for k, (_, t) in self.sources.items() if now - t > self.ttl]:
            self.sources.pop(key, None)


class _Dispatch:
    """Parsing as aiosipua's, but junk is counted and logged once per source, not a traceback per packet."""

    on_message: Callable[[SipRequest | SipResponse, tuple[str, int]], None] | None
    malformed: int = 0
    current_source: tuple[str, int] | None = None
    #: The server's last word on each response before it goes out (Contact, Record-Route, Timer G).
    finish: Callable[[SipResponse], None] | None = None

    def __init__(self, local_addr: tuple[str, int], *, reuse_port: bool = False) -> None:
        super().__init__(local_addr=local_addr)  # type: ignore[call-arg]  # (the aiosipua transport's)
        self.replies = ReplyCache()
        self.reuse_port = reuse_port
        self._noisy: set[str] = set()

    def _dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return  # CRLF keep-alive (RFC 5626)
        try:
            msg = SipMessage.parse(data)
            if isinstance(msg, SipRequest):
                _stamp_via_received(msg, addr)
        except Exception as e:  # any parse failure of hostile bytes: drop the packet
            self.malformed += 1
            if addr[0] not in self._noisy and len(self._noisy) < 1000:
                self._noisy.add(addr[0])
                log.warning("unparsable SIP from %s:%s dropped (%s); further ones are counted", *addr, e)
            return
        if self.on_message is not None:
            self.current_source = addr  # where a reply to this message goes on a connection
            try:
                self.on_message(msg, addr)
            except Exception:
                log.exception("error handling %s from %s:%s", getattr(msg, "method", "response"), *addr)

    def send_reply(self, response: SipResponse) -> None:
        if self.finish is not None:
            self.finish(response)
        self.replies.remember(response)
        self.deliver(response)

    def deliver(self, response: SipResponse) -> None:
        """Send ``response`` as it is (a retransmission goes out here too)."""
        raise NotImplementedError


class _UdpProtocol(asyncio.DatagramProtocol):
    # aiosipua's asserts an asyncio.DatagramTransport, which uvloop's UDP transport is not.
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._dispatch(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP/UDP socket error: %s", exc)


class UdpTransport(_Dispatch, UdpSipTransport):
    """aiosipua's UDP transport, remembering responses and able to share its port with other workers."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=self.local_addr, reuse_port=self.reuse_port or None
        )
        self._udp_transport = transport
        self.local_addr = transport.get_extra_info("sockname")[:2]

    def deliver(self, response: SipResponse) -> None:
        try:
            SipTransport.send_reply(self, response)  # to the Via (received/rport)
        except (ValueError, OSError) as e:  # no usable Via: nowhere to answer
            log.debug("SIP response not sent: %s", e)


#: The largest SIP message taken over TCP, header and body: a UDP datagram's limit, so the same messages
#: pass both ways (an INVITE with a generous SDP is a few KB).
MAX_TCP_MESSAGE = 65_535
#: Bytes of our messages a TCP peer may leave unread before its connection is closed.
MAX_TCP_BACKLOG = 256 * 1024
#: Bytes read from a TCP connection at a time.
READ_CHUNK = 16 * 1024


class FramingError(ValueError):
    """A TCP byte stream that cannot be cut into SIP messages: there is no telling where the next one
    starts, so the connection is closed."""


def content_length(head: bytes) -> int:
    """The body length a header block (start line and headers, without the blank line) announces: 0
    when it has none (RFC 3261 §18.3 makes it mandatory on TCP; a request without a body often omits it)."""
    values: set[bytes] = set()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            values.add(value.strip())
    if not values:
        return 0
    if len(values) > 1:
        raise FramingError("two Content-Length headers that disagree")
    [value] = values
    if not value.isdigit() or len(value) > 9:
        text = value[:20].decode("ascii", "replace")
        raise FramingError(f"Content-Length {text!r} is not a byte count")
    return int(value)


class StreamFramer:
    """Cuts a SIP byte stream into messages by Content-Length (RFC 3261 §18.3), with no I/O of its own.

    CRLFs between messages (keep-alives, RFC 5626 §3.5.1; RFC 3261 §7.5) are skipped. A message over
    ``max_message`` bytes, or a Content-Length that is not one plain byte count, raises FramingError.
    """

    def __init__(self, max_message: int = MAX_TCP_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        #: How far the buffer was searched for the blank line: a message dripped a byte at a time is
        #: searched once, not once per byte.
        self._searched = 0

    @property
    def pending(self) -> bool:
        """Whether part of a message has arrived (keep-alive CRLFs are no message)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Take bytes from the stream; give back the messages they complete, in order."""
        self._buf += data
        out: list[bytes] = []
        while True:
            if not self._searched:
                blank = len(self._buf) - len(self._buf.lstrip(b"\r\n"))
                del self._buf[:blank]
            end = self._buf.find(b"\r\n\r\n", max(0, self._searched - 3))
            if end < 0:
                self._searched = len(self._buf)
                if len(self._buf) > self.max_message:
                    raise FramingError(f"no end of headers in {len(self._buf)} bytes (limit {self.max_message})")
                return out
            size = end + 4 + content_length(bytes(self._buf[:end]))
            if size > self.max_message:
                raise FramingError(f"a {size}-byte message (limit {self.max_message})")
            if len(self._buf) < size:
                self._searched = end  # the body is on its way
                return out
            out.append(bytes(self._buf[:size]))
            del self._buf[:size]
            self._searched = 0


class TcpTransport(_Dispatch, TcpSipTransport):
    """aiosipua's TCP transport; responses return over the request's own connection.

    Connections are admitted through a :class:`ConnectionGate` (refused ones are closed at once), and
    each is read under :class:`ConnectionLimits`' time limits: a message begun must be complete within
    ``header_timeout``; a connection with no message for ``idle_timeout`` is closed unless ``in_use``
    says a live dialog needs it (its requests come on it, and ours go out on it).
    """

    def __init__(
        self, local_addr: tuple[str, int], *, reuse_port: bool = False, limits: ConnectionLimits | None = None
    ) -> None:
        super().__init__(local_addr, reuse_port=reuse_port)
        self.gate = ConnectionGate(limits or ConnectionLimits())
        #: Whether a live dialog needs the connection from this address (set by SipServer).
        self.in_use: Callable[[tuple[str, int]], bool] = lambda addr: False
        #: Connections closed on our side, by kind (slow, framing, backlog), for rate-limited logging.
        self.closed: Counter[str] = Counter()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, host=self.local_addr[0], port=self.local_addr[1], reuse_port=self.reuse_port
        )
        self.local_addr = self._server.sockets[0].getsockname()[:2]

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = (str(peer[0]), int(peer[1])) if peer else ("0.0.0.0", 0)
        refusal = self.gate.admit(addr[0])
        if refusal is not None:
            if self.gate.should_log():
                log.warning(
                    "SIP/TCP connection from %s refused: %s (%d refused so far)", addr[0], refusal, self.gate.refused
                )
            writer.transport.abort()  # the descriptor is free at once
            return
        try:
            await self._serve(reader, writer, addr)
        finally:
            self.gate.release(addr[0])

    async def _handle_incoming(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: tuple[str, int]
    ) -> None:
        # A connection we opened (our BYE after the caller's closed): read under the same limits.
        await self._serve(reader, writer, addr)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: tuple[str, int]) -> None:
        self._connections[addr] = (reader, writer)
        try:
            await self._read_messages(reader, addr)
        except FramingError as e:
            self._note_closed(addr, "framing", str(e))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            log.debug("SIP/TCP connection from %s:%s lost: %s", *addr, e or type(e).__name__)
        except asyncio.CancelledError:
            # Shutdown cancels this task with its connection still open. It ends normally instead: on
            # Python 3.11, asyncio.streams' done-callback calls task.exception(), which raises for a
            # cancelled task and logs a traceback. Nothing awaits this task, so nothing misses the cancel.
            pass
        finally:
            conn = self._connections.get(addr)
            if conn is not None and conn[1] is writer:  # (not a newer connection from the same address)
                del self._connections[addr]
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _read_messages(self, reader: asyncio.StreamReader, addr: tuple[str, int]) -> None:
        """Dispatch each message the connection brings until it closes, or a time limit closes it."""
        loop = asyncio.get_running_loop()
        limits = self.gate.limits
        framer = StreamFramer()
        last_message = begun = loop.time()
        while True:
            deadline = begun + limits.header_timeout if framer.pending else last_message + limits.idle_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                if framer.pending:  # a half-sent message (slowloris): its sender holds a descriptor
                    self._note_closed(
                        addr, "slow", f"a message not complete {limits.header_timeout:g} s after it began"
                    )
                    return
                if self.in_use(addr):
                    last_message = loop.time()  # a live dialog's connection stays open
                    continue
                log.debug("SIP/TCP connection from %s:%s closed: idle %g s", *addr, limits.idle_timeout)
                return
            if not data:
                return  # closed by the peer
            was_pending = framer.pending
            messages = framer.feed(data)
            now = loop.time()
            if messages:
                last_message = now
            if framer.pending and (messages or not was_pending):
                begun = now  # the first bytes of the next message
            for message in messages:
                self._dispatch(message, addr)

    def _note_closed(self, addr: tuple[str, int], kind: str, why: str) -> None:
        """Log a connection we close: the first of each kind, then every hundredth (a flood must not
        flood the log)."""
        self.closed[kind] += 1
        count = self.closed[kind]
        if count == 1 or count % 100 == 0:
            log.warning("SIP/TCP connection from %s:%s closed: %s (%d such so far)", addr[0], addr[1], why, count)

    def send(self, message: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        conn = self._connections.get(addr)
        if conn is not None and conn[1].transport.get_write_buffer_size() > MAX_TCP_BACKLOG:
            # A peer that sends requests but never reads our answers would grow our buffer forever.
            self._note_closed(addr, "backlog", f"over {MAX_TCP_BACKLOG} bytes of our messages left unread")
            conn[1].transport.abort()
            self._connections.pop(addr, None)
        super().send(message, addr)

    def deliver(self, response: SipResponse) -> None:
        key = transaction_key(response)
        source = self.replies.source(key) if key is not None else None
        try:
            for addr in (source, self.current_source):
                if addr is not None and addr in self._connections:
                    self.send(response, addr)
                    return
            SipTransport.send_reply(self, response)
        except (ValueError, RuntimeError, OSError) as e:  # the connection is gone: nowhere to answer
            log.debug("SIP response not sent: %s", e)


SipTransportT = UdpTransport | TcpTransport

#: Bind addresses that are no address a peer can use.
WILDCARDS = ("0.0.0.0", "::", "")


def uri_target(uri: str) -> tuple[str, int] | None:
    """(host, port) a request to ``uri`` goes to (port 5060 when the URI has none)."""
    try:
        parsed = parse_uri(uri.strip().lstrip("<").split(">")[0])
    except (ValueError, IndexError):
        return None
    if not parsed.host:
        return None
    return (parsed.host.strip("[]"), parsed.port or 5060)


def split_addresses(value: str) -> list[str]:
    """The name-addrs of one header line (``<sip:a;lr>, <sip:b;lr>``), commas inside <> or quotes kept."""
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [a for a in out if a]


def record_routes(request: SipRequest) -> list[str]:
    """The Record-Route entries of a request, in order (every header line, every comma-separated entry)."""
    return [a for line in request.headers.get("record-route") for a in split_addresses(line)]


def is_loose(route: str) -> bool:
    """Whether a route URI is a loose router's (``;lr``, RFC 3261 §16.12.1.1)."""
    try:
        return "lr" in parse_uri(route.strip().lstrip("<").split(">")[0]).params
    except (ValueError, IndexError):
        return True  # unreadable: send to it and let it route


def reaching_address(peer: str, bound: str) -> str:
    """The local address the kernel sends from to reach ``peer`` (a UDP connect sends no packet).

    An IPv4 peer seen on a dual-stack socket (``::ffff:a.b.c.d``) gives its IPv4 address.
    """
    family = socket.AF_INET6 if ":" in bound or ":" in peer else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((peer, 9))
        host = str(s.getsockname()[0])
    return host.removeprefix("::ffff:") if host.startswith("::ffff:") and "." in host else host


def _to_tag(request: SipRequest) -> str:
    with contextlib.suppress(ValueError, IndexError, KeyError):
        to = request.to_addr
        return (to.tag if to is not None else None) or ""
    return ""


class SipServer(SipUAS):
    """One listening transport (UDP or TCP) and its calls.

    ``calls`` is the dialog table, shared by the service's UDP and TCP servers; ``advertise`` is the
    host put in our Contact and Via instead of the bound one (NAT: ``--advertise``).
    """

    #: How long a rejected INVITE waits for its ACK (Timer H), and a final answer is retransmitted.
    timer_h: float = TIMER_H

    def __init__(
        self,
        transport: SipTransportT,
        *,
        user_agent: str,
        advertise: str | None = None,
        calls: dict[str, IncomingCall] | None = None,
        timers: SipTimers | None = None,
    ) -> None:
        super().__init__(transport, user_agent=user_agent)
        self.timers = timers or LoopTimers()
        transport.replies.now = self.timers.now
        # Only the methods we serve (ours is a UAS for calls: no UPDATE, REFER, NOTIFY, nor PRACK, as we
        # send no reliable provisionals); the rest get 405 with Allow.
        self._handlers = {m: h for m, h in self._handlers.items() if m in ALLOW.split(", ")}
        self.sip_transport = transport
        self.protocol = "TCP" if isinstance(transport, TcpTransport) else "UDP"
        self.advertise = advertise
        if calls is not None:
            self._calls = calls  # one table: a TCP call's ACK or BYE may come over UDP
        transport.finish = self._finish_response
        if isinstance(transport, TcpTransport):
            transport.in_use = self._has_dialog
        #: BYE tasks (resolve, connect, send, retransmit) by Call-ID, ended by the BYE's response.
        self._byes: dict[str, asyncio.Task[None]] = {}
        #: Final non-2xx answers to INVITEs waiting for their ACK, by (Call-ID, Via branch).
        self._unacked: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reach: dict[str, str] = {}
        #: Called with every ACK of a call's dialog (a delayed offer's answer comes in one).
        self.on_ack: Callable[[IncomingCall, SipRequest], None] | None = None

    def _has_dialog(self, addr: tuple[str, int]) -> bool:
        """Whether a call not yet over came from ``addr`` (its connection carries the call's requests)."""
        return any(
            call.source_addr == addr and call.dialog.state != DialogState.TERMINATED for call in self._calls.values()
        )

    # --- who we are to a peer -----------------------------------------------------------------------

    def local_host(self, peer: str) -> str:
        """Our address as ``peer`` should use it: --advertise, the bound address, or (bound to a
        wildcard) the local address that routes to the peer."""
        if self.advertise:
            return self.advertise
        bound = str(self.transport.local_addr[0])
        if bound not in WILDCARDS:
            return bound
        host = self._reach.get(peer)
        if host is None:
            try:
                host = reaching_address(peer, bound)
            except OSError as e:  # no route back to where the request came from: say so, use loopback
                log.warning("no local address reaches %s (%s): advertising loopback", peer, e)
                host = "::1" if ":" in bound else "127.0.0.1"
            if len(self._reach) >= 1024:
                self._reach.clear()
            self._reach[peer] = host
        return host

    def contact(self, peer: str) -> str:
        """Our Contact for a peer at ``peer`` (on TCP with ``transport=tcp``, RFC 3261 §19.1.1)."""
        params = ";transport=tcp" if self.protocol == "TCP" else ""
        return f"<sip:{format_addr(self.local_host(peer), int(self.transport.local_addr[1]))}{params}>"

    def _finish_response(self, response: SipResponse) -> None:
        """Every response on its way out: our Contact as the peer can reach it, the INVITE's
        Record-Route in dialog-creating answers (RFC 3261 §12.1.1), Timer G for a final non-2xx."""
        dest = _response_destination(response)
        peer = dest[0] if dest is not None else ""
        if response.headers.get("contact"):
            response.headers.set_single("Contact", self.contact(peer))
        cseq = (response.headers.get_first("cseq") or "").split()
        if len(cseq) != 2 or cseq[1].upper() != "INVITE":
            return
        status = response.status_code
        key = transaction_key(response)
        call = self._calls.get(response.call_id or "")
        creates_dialog = 100 < status < 300 and not response.headers.get("record-route")
        if creates_dialog and call is not None and key is not None and transaction_key(call.invite) == key:
            for route in call.invite.headers.get("record-route"):
                response.headers.append("Record-Route", route)
        if status >= 300 and key is not None:
            txn = (key[0], key[1])
            if txn not in self._unacked:
                task = asyncio.get_running_loop().create_task(self._await_ack(response, txn))
                self._unacked[txn] = task

    async def _await_ack(self, response: SipResponse, txn: tuple[str, str]) -> None:
        """Retransmit a final non-2xx over UDP until its ACK (RFC 3261 §17.2.1 Timer G); after Timer H
        without one, forget the rejected call all the same."""
        try:
            if self.protocol == "TCP":
                await self.timers.sleep(self.timer_h)
            else:
                interval, elapsed = T1, 0.0
                while elapsed < self.timer_h:
                    await self.timers.sleep(min(interval, self.timer_h - elapsed))
                    elapsed += interval
                    if elapsed < self.timer_h:
                        self.sip_transport.deliver(response)
                    interval = min(interval * 2, T2)
            self._forget_rejected(*txn)
        finally:
            if self._unacked.get(txn) is asyncio.current_task():
                del self._unacked[txn]

    def _forget_rejected(self, call_id: str, branch: str) -> None:
        """A rejected INVITE's transaction is over: drop its call and server transaction."""
        call = self._calls.get(call_id)
        if call is not None and call.dialog.state == DialogState.TERMINATED:
            invite_key = transaction_key(call.invite)
            if invite_key is not None and invite_key[1] == branch:
                self._calls.pop(call_id, None)
        txn = self.transactions.get_server(branch, "INVITE")
        if txn is not None:
            self.transactions.remove(txn)

    # --- incoming ---------------------------------------------------------------------------------

    def _on_message(self, msg: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        if isinstance(msg, SipResponse):
            cseq = msg.headers.get_first("cseq") or ""
            if cseq.upper().endswith("BYE") and msg.status_code >= 200:
                task = self._byes.pop(msg.call_id or "", None)
                if task is not None:
                    task.cancel()
            elif self.uac is not None:  # our REGISTERs' answers (swml serve --register)
                try:
                    self.uac.handle_response(msg, addr)
                except (ValueError, IndexError, KeyError) as e:
                    log.info("bad response from %s:%s: %s", addr[0], addr[1], e)
            return
        super()._on_message(msg, addr)

    def _handle_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        key = transaction_key(request)
        method = request.method.upper()
        acked: IncomingCall | None = None
        if method == "ACK":
            # An ACK gets no answer (nothing to remember where it came from); it may end Timer G.
            if key is not None:
                task = self._unacked.pop((key[0], key[1]), None)
                if task is not None:
                    task.cancel()
                    self._forget_rejected(key[0], key[1])
            call = self._calls.get(request.call_id or "")
            with contextlib.suppress(ValueError, IndexError, KeyError):  # hostile headers: not our dialog
                if call is not None and dialog_matches(call.dialog, request):
                    acked = call
        else:
            if key is not None:
                self.sip_transport.replies.note_source(key, addr)
            cached = self.sip_transport.replies.lookup(request)
            if cached is not None:  # a retransmission: same answer again, nothing new happens
                self.transport.send_reply(cached)
                return
            if method == "INVITE" and _to_tag(request) and not self._confirmed(request):
                # RFC 3261 §12.2.2: a mid-dialog INVITE for a dialog we do not have (ended, or never ours)
                self._reply_stateless(request, 481, "Call/Transaction Does Not Exist")
                return
            unsupported = self._unsupported(request)
            if unsupported:
                self._reply_stateless(request, 420, "Bad Extension", {"Unsupported": ", ".join(unsupported)})
                return
        try:
            super()._handle_request(request, addr)
        except (ValueError, IndexError, KeyError) as e:
            # aiosipua's header accessors raise on garbage (a CSeq of letters, say): answer 400.
            log.info("bad %s from %s:%s: %s", request.method, addr[0], addr[1], e)
            with contextlib.suppress(Exception):
                self._send_error(request, 400, "Bad Request")
        if acked is not None and self.on_ack is not None:
            self.on_ack(acked, request)

    def _merged(self, request: SipRequest) -> bool:
        """An INVITE without a To tag whose Call-ID, From tag and CSeq are those of a call still being
        set up, but from another transaction (another branch: retransmissions were answered before)."""
        if _to_tag(request):
            return False
        call = self._calls.get(request.call_id or "")
        if call is None or call.dialog.state != DialogState.EARLY:
            return False  # (a challenged INVITE's dialog is over: its retry with credentials is a new one)
        first = call.invite
        with contextlib.suppress(ValueError, IndexError, KeyError):
            same_from = request.from_addr is not None and first.from_addr is not None
            same_from = same_from and request.from_addr.tag == first.from_addr.tag  # type: ignore[union-attr]
            return (
                bool(same_from)
                and transaction_key(request) != transaction_key(first)
                and (
                    " ".join((request.headers.get_first("cseq") or "").split()).upper()
                    == " ".join((first.headers.get_first("cseq") or "").split()).upper()
                )
            )
        return False

    def _confirmed(self, request: SipRequest) -> bool:
        call = self._calls.get(request.call_id or "")
        return call is not None and call.dialog.state == DialogState.CONFIRMED

    def _handle_invite(self, request: SipRequest, addr: tuple[str, int]) -> None:
        if self._merged(request):
            # RFC 3261 §8.2.2.2: the INVITE we are answering, come again by another path (a forking or
            # looping proxy). It must not become a second call in the first one's place.
            self._reply_stateless(request, 482, "Loop Detected")
            return
        super()._handle_invite(request, addr)
        call = self._calls.get(request.call_id or "")
        if call is not None and call.invite is request and call.dialog.state == DialogState.EARLY:
            # RFC 3261 §12.1.1: a UAS's route set is the Record-Route list *in order* (aiosipua reverses
            # it, as a UAC's would be): the first entry is the proxy next to us.
            call.dialog.route_set = record_routes(request)

    def _reply_stateless(
        self, request: SipRequest, status: int, reason: str, extra_headers: dict[str, str] | None = None
    ) -> None:
        """An answer outside any dialog; the To tag is added only when the request has none (aiosipua's
        answers add one always: two tags on an in-dialog request)."""
        resp = SipResponse(status_code=status, reason_phrase=reason)
        for via in request.headers.get("via"):
            resp.headers.append("Via", via)
        for name in ("from", "call-id", "cseq"):
            value = request.headers.get_first(name)
            if value:
                resp.headers.set_single(name.title(), value)
        to = request.headers.get_first("to")
        if to:
            resp.headers.set_single("To", to if _to_tag(request) else f"{to};tag={generate_tag()}")
        for name, value in (extra_headers or {}).items():
            resp.headers.set_single(name, value)
        if status == 405 or (200 <= status < 300 and request.method.upper() == "OPTIONS"):
            resp.headers.set_single("Allow", ALLOW)  # RFC 3261 §21.4.6 (405), §11.2 (OPTIONS)
        if self.user_agent:
            resp.headers.set_single("User-Agent", self.user_agent)
        self.transport.send_reply(resp)

    def _send_error(
        self, request: SipRequest, status_code: int, reason: str, *, extra_headers: dict[str, str] | None = None
    ) -> None:
        self._reply_stateless(request, status_code, reason, extra_headers)

    def _handle_options(self, request: SipRequest, addr: tuple[str, int]) -> None:
        """200 with what we take (Allow, Accept); in a dialog, the To keeps its one tag."""
        self._reply_stateless(request, 200, "OK", {"Accept": "application/sdp"})

    def _unsupported(self, request: SipRequest) -> list[str]:
        """Option tags of the request's Require that we do not support (RFC 3261 §8.2.2.3)."""
        if request.method.upper() in ("ACK", "CANCEL"):
            return []
        tags = [t.strip() for line in request.headers.get("require") for t in line.split(",")]
        return [t for t in tags if t and t.lower() not in SUPPORTED_EXTENSIONS]

    # --- outgoing ---------------------------------------------------------------------------------

    def send_provisional(self, call: IncomingCall, status: int, reason: str, sdp: str | None = None) -> None:
        call._send_response(status, reason, body=sdp or "", content_type="application/sdp" if sdp else "")

    def reply_in_dialog(
        self, call: IncomingCall, request: SipRequest, status: int, reason: str, sdp: str | None = None
    ) -> None:
        """Answer an in-dialog request (re-INVITE) on the call's dialog, over this server's transport
        (the one the request came on)."""
        resp = call.dialog.create_response(request, status, reason, contact=self.contact(call.source_addr[0]))
        if sdp:
            resp.text = sdp
            resp.headers.set_single("Content-Type", "application/sdp")
        if self.user_agent:
            resp.headers.set_single("User-Agent", self.user_agent)
        self.transport.send_reply(resp)

    def bye(self, call: IncomingCall, reason: str | None = None) -> None:
        """End an answered call from our side: the BYE goes out in the background (a name to resolve,
        a TCP connection to open), along the route set or to the Contact; a failure is logged."""
        port = int(self.transport.local_addr[1])
        via_host = self.local_host(call.source_addr[0])
        request = call.dialog.create_request("BYE", via_host=via_host, via_port=port, via_transport=self.protocol)
        call.dialog.terminate()
        call._stop_retransmissions()
        self._calls.pop(call.call_id, None)
        if reason:
            request.headers.set_single("Reason", f'SIP;cause=200;text="{reason}"')
        if self.user_agent:
            request.headers.set_single("User-Agent", self.user_agent)
        next_hop = self._next_hop(call, request)
        task = asyncio.get_running_loop().create_task(self._send_bye(call, request, next_hop))
        self._byes[call.call_id] = task

    def _next_hop(self, call: IncomingCall, request: SipRequest) -> str:
        """The URI the request goes to (RFC 3261 §12.2.1.1): the first route, or the remote target.

        A strict router as the first route (no ``;lr``) gets the request with its own URI as the
        Request-URI, and the remote target becomes the last Route."""
        dialog = call.dialog
        routes = dialog.route_set
        if not routes:
            return dialog.remote_target or dialog.remote_uri
        if not is_loose(routes[0]):
            request.uri = routes[0].strip().lstrip("<").split(">")[0]
            request.headers.remove("Route")
            for route in routes[1:]:
                request.headers.append("Route", route)
            request.headers.append("Route", f"<{dialog.remote_target or dialog.remote_uri}>")
        return routes[0]

    async def _send_bye(self, call: IncomingCall, request: SipRequest, next_hop: str) -> None:
        call_id = call.call_id
        try:
            try:
                dest = await self._bye_destination(call, next_hop)
                self.transport.send(request, dest)
            except (OSError, RuntimeError, ValueError) as e:
                log.warning("BYE for %s not sent (%s over %s): %s", call_id, next_hop, self.protocol, e)
                return
            if self.protocol == "UDP":
                await self._retransmit(request, dest)
        finally:
            if self._byes.get(call_id) is asyncio.current_task():
                del self._byes[call_id]

    async def _bye_destination(self, call: IncomingCall, next_hop: str) -> tuple[str, int]:
        """Where the BYE goes: a resolved address; over TCP, a connection that is open."""
        tcp = self.sip_transport if isinstance(self.sip_transport, TcpTransport) else None
        if tcp is not None and call.source_addr in tcp._connections:
            return call.source_addr  # the peer's connection is still open: the dialog lives on it
        target = uri_target(next_hop)
        if target is None:
            target = call.source_addr
        dest = await self._resolve(*target)
        if tcp is not None and dest not in tcp._connections:
            await asyncio.wait_for(tcp.connect(dest), 10)
        return dest

    async def _resolve(self, host: str, port: int) -> tuple[str, int]:
        """``host`` (a name or an address) as an address our socket can send to."""
        bound = str(self.transport.local_addr[0])
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as e:
            raise OSError(f"cannot resolve {host!r}: {e}") from e
        for family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0])
            if self.protocol == "TCP" or (family == socket.AF_INET6) == (":" in bound):
                return (ip, port)
            if family == socket.AF_INET and bound == "::":  # a dual-stack socket reaches IPv4 so
                return (f"::ffff:{ip}", port)
        raise OSError(f"{host!r} has no address our SIP socket on {bound or '*'} can reach")

    async def _retransmit(self, request: SipRequest, dest: tuple[str, int]) -> None:
        interval, elapsed = T1, 0.0
        with contextlib.suppress(asyncio.CancelledError):
            while elapsed < TIMER_H:
                await self.timers.sleep(interval)
                elapsed += interval
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    self.transport.send(request, dest)
                interval = min(interval * 2, T2)

    async def stop(self) -> None:
        for task in [*self._byes.values(), *self._unacked.values()]:
            task.cancel()
        self._byes.clear()
        self._unacked.clear()
        await super().stop()
