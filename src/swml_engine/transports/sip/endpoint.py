"""The SIP core's I/O: sockets (UDP and TCP on one address), name resolution, and one timer.

:class:`Endpoint` feeds every message it reads to the :class:`~swml_engine.transports.sip.useragent.UserAgent`
with the peer and the time, sends what the core wants sent, re-arms one timer for the core's next
deadline, and hands the core's events to the application (``on_event``). Everything RFC 3261 asks of a
user agent is the core's; what is here is what touches the operating system:

- **UDP**: one socket (shared between ``--workers`` processes with SO_REUSEPORT); ICMP errors are logged.
  A worker places its calls through an endpoint of its own on a port no other process has (server.py),
  so the answers to them, and the far end's requests, come back to it and not to whichever worker the
  kernel picks on the shared port. What the core hands on to another worker (:class:`Relay`: a datagram
  for its dialog that the kernel gave us) goes there through the worker's relay socket (relay.py), and
  what other workers hand on to us is read there and fed to the core as if it had come from its source
  on the shared port (our answers leave from the shared socket: every worker has it bound).
- **TCP** (RFC 3261 §18.3): each connection is admitted through a :class:`ConnectionGate` (a cap in total
  and per address, and a reserve of file descriptors for calls); its bytes are cut into messages by
  Content-Length (:class:`StreamFramer`), a message must be complete within ``header_timeout`` of its
  first byte, and a connection with no message for ``idle_timeout`` is closed unless a call on it is
  still up. A peer that leaves too much of our output unread is disconnected. Answers go back on the
  request's connection; our requests use the call's connection while it is open, else a new one.
- **Names**: a next hop that is a host name is resolved (``getaddrinfo``) to an address our socket can
  reach; messages to one name keep their order.
- **Who we are to a peer**: ``--advertise``, the bound address, or — bound to a wildcard — the local
  address that routes to the peer (what our Via, Contact and SDP say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from swml_engine.connections import ConnectionGate, ConnectionLimits, GuessLimiter
from swml_engine.transports.sip import names
from swml_engine.transports.sip.relay import RelayError, RelayFigures, RelaySlot, seal, unseal, worth_logging
from swml_engine.transports.sip.useragent import Datagram, Peer, Relay, SipEvent, Target, Transport, UserAgent

log = logging.getLogger(__name__)

#: The largest SIP message taken over TCP, header and body: a UDP datagram's limit, so the same messages
#: pass both ways (an INVITE with a generous SDP is a few KB).
MAX_TCP_MESSAGE = 65_535
#: Bytes of our messages a TCP peer may leave unread before its connection is closed.
MAX_TCP_BACKLOG = 256 * 1024
#: Bytes read from a TCP connection at a time.
READ_CHUNK = 16 * 1024
#: Seconds a TCP connection we open may take.
CONNECT_TIMEOUT = 10.0
#: Bind addresses that are no address a peer can use.
WILDCARDS = ("0.0.0.0", "::", "")
#: Ports the system picks (bind port 0) tried for UDP until TCP is free on the same one.
BIND_TRIES = 20
#: What a stop waits to see answered before it closes the sockets (Endpoint.settle): the BYEs and
#: CANCELs it sent, and the INVITEs of legs given up (a late 200 still gets its ACK and BYE).
SETTLED = ("BYE", "CANCEL", "INVITE")
#: Relays logged: the first, then every RELAY_LOG_EVERY-th; refused envelopes: the first, then every
#: REFUSED_LOG_EVERY-th.
RELAY_LOG_EVERY, REFUSED_LOG_EVERY = 1000, 100
#: Seconds a settle waits beyond the transactions' own bound (64·T1), and how often it looks.
SETTLE_MARGIN, SETTLE_POLL = 1.0, 0.05


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


def reaching_address(peer: str, bound: str) -> str:
    """The local address the kernel sends from to reach ``peer`` (a UDP connect sends no packet).

    An IPv4 peer seen on a dual-stack socket (``::ffff:a.b.c.d``) gives its IPv4 address.
    """
    family = socket.AF_INET6 if ":" in bound or ":" in peer else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((peer, 9))
        host = str(s.getsockname()[0])
    return host.removeprefix("::ffff:") if host.startswith("::ffff:") and "." in host else host


#: The SIP socket's receive buffer: room for a burst (a PBX failing its calls over to us, a flood of
#: OPTIONS) while the loop is busy. The system's default (208 KiB) held some 150 INVITEs; beyond, the
#: kernel dropped them unanswered.
RECEIVE_BUFFER = 4 * 1024 * 1024
#: Linux's SO_RCVBUFFORCE (past net.core.rmem_max; for a process with CAP_NET_ADMIN, as root has).
_SO_RCVBUFFORCE = 33


def _room_for_bursts(sock: object) -> None:
    """Ask for RECEIVE_BUFFER: forced when the process may (root), else as far as rmem_max allows."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint._received(data, Transport.UDP, str(addr[0]), int(addr[1]), 0)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP/UDP socket error: %s", exc)


class _RelayIn(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint._relayed_in(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP relay socket error: %s", exc)


class _Flow:
    """One TCP connection."""

    def __init__(self, number: int, addr: tuple[str, int], writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.addr = addr
        self.writer = writer

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()


class Endpoint:
    """See the module docstring. ``on_event`` gets each core event, on the loop."""

    def __init__(
        self,
        ua: UserAgent,
        bind: tuple[str, int],
        *,
        on_event: Callable[[SipEvent], None],
        reuse_port: bool = False,
        limits: ConnectionLimits | None = None,
        advertise: str | None = None,
        gate: ConnectionGate | None = None,
        relay: RelaySlot | None = None,
    ) -> None:
        self.ua = ua
        #: With --workers: this worker's relay socket, where the other workers are, and the key.
        self.relay = relay
        self.relays = RelayFigures()
        self._relay_out: asyncio.DatagramTransport | None = None
        self.bind = bind
        self.on_event = on_event
        self.reuse_port = reuse_port
        self.advertise = advertise
        #: Admits TCP connections; ``gate`` shares another endpoint's, so its caps cover both ports.
        self.gate = gate or ConnectionGate(limits or ConnectionLimits())
        self.local_addr: tuple[str, int] = bind
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._flows: dict[int, _Flow] = {}
        self._flow_by_addr: dict[tuple[str, int], int] = {}
        self._flow_numbers = 0
        self._reach: dict[str, str] = {}
        self._names: dict[tuple[str, int, Transport], asyncio.Future[tuple[str, int]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections closed on our side, by kind (slow, framing, backlog), for rate-limited logging.
        self.closed: Counter[str] = Counter()
        #: Callers' wrong digest passwords (answer.username/password) per source address: a guesser gets
        #: a handful a minute, as at the HTTP API's sign-in.
        self.wrong_passwords = GuessLimiter()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on one port: the one given, or (port 0) one the system picks for UDP that
        TCP can have too (tried again with another when TCP's is taken). OSError when it cannot."""
        loop = self._loop = asyncio.get_running_loop()
        tries = BIND_TRIES if self.bind[1] == 0 else 1
        for attempt in range(1, tries + 1):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=self.bind, reuse_port=self.reuse_port or None
            )
            host, port = udp.get_extra_info("sockname")[:2]
            try:
                self._tcp = await asyncio.start_server(
                    self._accept, host=str(host), port=int(port), reuse_port=self.reuse_port
                )
            except OSError:
                udp.close()
                if attempt == tries:
                    raise
                continue
            self._udp = udp
            self.local_addr = (str(host), int(port))
            _room_for_bursts(udp.get_extra_info("socket"))
            break
        if self.relay is not None:
            self._relay_out, _ = await loop.create_datagram_endpoint(lambda: _RelayIn(self), sock=self.relay.sock)

    def unanswered(self, methods: Iterable[str] = SETTLED) -> set[object]:
        """The requests of ``methods`` we sent that have no final answer yet (for :meth:`settle`'s ``since``)."""
        return set(self.ua.unanswered(methods))

    async def settle(
        self, methods: Iterable[str] = SETTLED, limit: float | None = None, *, since: set[object] | None = None
    ) -> int:
        """Wait until every request of ``methods`` we sent (a stop's BYEs and CANCELs, the INVITEs they
        end) has its final answer or its transaction has given up (over UDP each is retransmitted
        meanwhile), or ``limit`` seconds pass — never longer than the transactions' own bound, 64·T1
        (32 s). Those already unanswered in ``since`` (:meth:`unanswered` taken earlier) are not waited
        for. Returns how many are still unanswered. Before :meth:`stop`, which ends them all."""
        loop = asyncio.get_running_loop()
        methods = tuple(methods)
        bound = self.ua.timing.timeout + SETTLE_MARGIN
        deadline = loop.time() + (bound if limit is None else min(limit, bound))
        earlier = since or set()
        while (left := len(self.unanswered(methods) - earlier)) and loop.time() < deadline:
            await asyncio.sleep(SETTLE_POLL)
        return left

    async def stop(self) -> None:
        """Close the sockets now: what is in flight (a BYE's retransmissions) ends; see :meth:`settle`."""
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tcp is not None:
            self._tcp.close()
        for flow in list(self._flows.values()):
            flow.writer.transport.abort()
        if self._udp is not None:
            self._udp.close()
        if self._relay_out is not None:
            self._relay_out.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    @property
    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- who we are to a peer -----------------------------------------------------------------------------

    def local_host(self, peer: str) -> str:
        """Our address as ``peer`` should use it: --advertise, the bound address, or (bound to a
        wildcard) the local address that routes to the peer."""
        if self.advertise:
            return self.advertise
        bound = self.local_addr[0]
        if bound not in WILDCARDS:
            return bound
        host = self._reach.get(peer)
        if host is None:
            try:
                host = reaching_address(peer, bound)
            except OSError as e:  # no route back to where the request came from: say so, use loopback
                log.warning("no local address reaches %s (%s): advertising loopback", peer, e)
                host = "::1" if ":" in bound else "127.0.0.1"
            if len(self._reach) < 10_000:
                self._reach[peer] = host
        return host

    def peer(self, transport: Transport, host: str, port: int, flow: int = 0) -> Peer:
        return Peer(transport, host, port, flow, (self.local_host(host), self.local_addr[1]))

    # --- in -----------------------------------------------------------------------------------------------

    def _received(self, data: bytes, transport: Transport, host: str, port: int, flow: int) -> None:
        self.ua.receive(data, self.peer(transport, host, port, flow), self.now)
        self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.ua.handle_timer(self.now)
        self.flush()

    def flush(self) -> None:
        """Send what the core has to send, hand its events on, and wake it at its next deadline. Called
        after everything that feeds the core or acts on it."""
        for datagram in self.ua.datagrams_to_send():
            self._send(datagram)
        while (event := self.ua.next_event()) is not None:
            if isinstance(event, Relay):
                self._hand_on(event)
                continue
            try:
                self.on_event(event)
            except Exception:
                log.exception("SIP event %s failed", type(event).__name__)
            for datagram in self.ua.datagrams_to_send():  # what the application's answer made
                self._send(datagram)
        self._arm()

    # --- datagrams of the shared port for other workers ---------------------------------------------------

    def _hand_on(self, event: Relay) -> None:
        """Send a datagram the core says is another worker's to that worker's relay socket."""
        link, out = self.relay, self._relay_out
        try:
            if link is None or out is None or event.worker >= link.count:
                raise RelayError(f"no relay to worker {event.worker}")
            envelope = seal(link.key, event.worker, event.peer.host, event.peer.port, event.data)
            out.sendto(envelope, link.addresses[event.worker])
        except (RelayError, OSError) as e:
            self.relays.dropped += 1
            if worth_logging(self.relays.dropped, REFUSED_LOG_EVERY):
                log.warning(
                    "SIP from %s:%s for worker %d dropped: %s (%d so far)",
                    event.peer.host,
                    event.peer.port,
                    event.worker,
                    e,
                    self.relays.dropped,
                )
            return
        self.relays.sent += 1
        if worth_logging(self.relays.sent, RELAY_LOG_EVERY):
            log.info(
                "SIP from %s:%s handed on to worker %d, whose dialog it is (%d so far: the kernel hashed the "
                "source to this worker, as after a worker's restart)",
                event.peer.host,
                event.peer.port,
                event.worker,
                self.relays.sent,
            )

    def _relayed_in(self, envelope: bytes, sender: str) -> None:
        """A datagram another worker handed on: fed to the core as if it had come from its source here."""
        link = self.relay
        assert link is not None
        try:
            if sender != "127.0.0.1":
                raise RelayError(f"sent from {sender[:64]}, not loopback")
            host, port, data = unseal(link.key, link.index, envelope)
        except RelayError as e:
            self.relays.refused += 1
            if worth_logging(self.relays.refused, REFUSED_LOG_EVERY):
                log.warning("SIP relay socket: a datagram refused (%s; %d so far)", e, self.relays.refused)
            return
        self.relays.received += 1
        self.ua.receive(data, self.peer(Transport.UDP, host, port), self.now, relayed=True)
        self.flush()

    def _arm(self) -> None:
        when = self.ua.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    # --- out ----------------------------------------------------------------------------------------------

    def _send(self, datagram: Datagram) -> None:
        to = datagram.to
        if isinstance(to, Peer):
            if to.transport is Transport.UDP:
                self._send_udp(datagram.data, (to.host, to.port))
            elif not self._write(to.flow, datagram.data):
                log.debug("SIP answer to %s:%s not sent: its connection is gone", to.host, to.port)
            return
        if to.transport is Transport.TCP and self._write(to.flow, datagram.data):
            return
        if names.is_address(to.host):
            self._to_address(datagram, to, self._usable(to.host), to.port)
            return
        self._spawn(self._resolve_and_send(datagram, to))

    def _send_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._udp is None:
            return
        try:
            self._udp.sendto(data, addr)
        except (OSError, ValueError) as e:
            log.debug("SIP/UDP to %s:%s not sent: %s", addr[0], addr[1], e)

    def _to_address(self, datagram: Datagram, to: Target, host: str, port: int) -> None:
        if to.transport is Transport.UDP:
            self._send_udp(datagram.data, (host, port))
            return
        flow = self._flow_by_addr.get((host, port))
        if flow is not None and self._write(flow, datagram.data):
            return
        self._spawn(self._connect_and_send(datagram, (host, port)))

    async def _resolve_and_send(self, datagram: Datagram, to: Target) -> None:
        try:
            host, port = await self._resolve(to)
        except OSError as e:
            self._failed(datagram, str(e))
            return
        self._to_address(datagram, to, host, port)

    def _failed(self, datagram: Datagram, why: str) -> None:
        """Tell the core a message could not go (its transaction ends and says so once)."""
        log.debug(
            "SIP to %s:%s not sent: %s", getattr(datagram.to, "host", "?"), getattr(datagram.to, "port", "?"), why
        )
        self.ua.send_failed(datagram, why, self.now)
        self.flush()

    def _resolve(self, to: Target) -> asyncio.Future[tuple[str, int]]:
        """One lookup per name at a time: messages to the name wait on it in order."""
        key = (to.host, to.port, to.transport)
        future = self._names.get(key)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.ensure_future(self._lookup(to))
            if len(self._names) > 10_000:
                self._names.clear()
            self._names[key] = future
        return future

    async def lookup(self, host: str, port: int, transport: Transport) -> tuple[str, int]:
        """``host`` (a name or an address) as an address our socket reaches, looked up now (A/AAAA through
        the system's resolver, no cache of ours); OSError saying why when there is none."""
        if names.is_address(host):
            return (host, port)
        ip, port = await self._lookup(Target(transport, host, port))
        return (ip.removeprefix("::ffff:") if "." in ip else ip, port)

    async def _lookup(self, to: Target) -> tuple[str, int]:
        assert self._loop is not None
        kind = socket.SOCK_STREAM if to.transport is Transport.TCP else socket.SOCK_DGRAM
        try:
            infos = await names.getaddrinfo(to.host, to.port, type=kind)
        except OSError as e:
            raise OSError(f"cannot resolve {to.host!r}: {e}") from e
        bound = self.local_addr[0]
        for family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0])
            if to.transport is Transport.TCP or (family == socket.AF_INET6) == (":" in bound):
                return (ip, to.port)
            if family == socket.AF_INET and bound == "::":  # a dual-stack socket reaches IPv4 so
                return (f"::ffff:{ip}", to.port)
        raise OSError(f"{to.host!r} has no address our SIP socket on {bound or '*'} can reach")

    def _usable(self, host: str) -> str:
        """An IPv4 address as a dual-stack socket takes it."""
        if self.local_addr[0] == "::" and ":" not in host:
            return f"::ffff:{host}"
        return host

    async def _connect_and_send(self, datagram: Datagram, addr: tuple[str, int]) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self._failed(datagram, f"cannot connect to {addr[0]}:{addr[1]}: {e or type(e).__name__}")
            return
        flow = self._add_flow(addr, writer)
        self._write(flow.number, datagram.data)
        await self._serve(reader, flow)

    def _write(self, number: int, data: bytes) -> bool:
        flow = self._flows.get(number) if number else None
        if flow is None or not flow.open:
            return False
        if flow.writer.transport.get_write_buffer_size() > MAX_TCP_BACKLOG:
            # A peer that sends requests but never reads our answers would grow our buffer forever.
            self._note_closed(flow.addr, "backlog", f"over {MAX_TCP_BACKLOG} bytes of our messages left unread")
            flow.writer.transport.abort()
            return False
        flow.writer.write(data)
        return True

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- TCP connections ------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            await self._serve(reader, self._add_flow(addr, writer))
        finally:
            self.gate.release(addr[0])

    def _add_flow(self, addr: tuple[str, int], writer: asyncio.StreamWriter) -> _Flow:
        self._flow_numbers += 1
        flow = _Flow(self._flow_numbers, addr, writer)
        self._flows[flow.number] = flow
        self._flow_by_addr[addr] = flow.number
        return flow

    async def _serve(self, reader: asyncio.StreamReader, flow: _Flow) -> None:
        addr = flow.addr
        try:
            await self._read_messages(reader, flow)
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
            self._flows.pop(flow.number, None)
            if self._flow_by_addr.get(addr) == flow.number:
                del self._flow_by_addr[addr]
            flow.writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(flow.writer.wait_closed(), 5)

    async def _read_messages(self, reader: asyncio.StreamReader, flow: _Flow) -> None:
        """Feed each message the connection brings to the core until it closes, or a time limit closes it."""
        loop = asyncio.get_running_loop()
        limits = self.gate.limits
        framer = StreamFramer()
        last_message = begun = loop.time()
        addr = flow.addr
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
                if self.ua.flow_in_use(flow.number, addr):
                    last_message = loop.time()  # a live call's connection stays open
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
                self._received(message, Transport.TCP, addr[0], addr[1], flow.number)

    def _note_closed(self, addr: tuple[str, int], kind: str, why: str) -> None:
        """Log a connection we close: the first of each kind, then every hundredth (a flood must not
        flood the log)."""
        self.closed[kind] += 1
        count = self.closed[kind]
        if count == 1 or count % 100 == 0:
            log.warning("SIP/TCP connection from %s:%s closed: %s (%d such so far)", addr[0], addr[1], why, count)
