"""One call's RTP: a UDP socket, the jitter buffer, the codec, DTMF both ways and the paced sender.

Frames go out as the call's media clock ticks (one ``write`` per 20 ms), so sending is paced by the
same clock that drives recording. With another ptime (10, 30, 40 … ms) the ticks' audio is queued and a
timer of that period sends it, one packet per period, a packet's worth (plus 5 ms, off the ticks) behind.

Whose packets are the caller's, and where ours go, follows one rule (docs/serve.md, "Media"): the SDP
address first, then the address the SIP signalling came from. Media goes back to where the caller's
packets come from (symmetric RTP, which crosses NATs and survives an SDP naming the wrong address), but a
source other than the SDP address has to prove itself first — a run of consecutive packets of one SSRC —
and an address neither the SDP nor the signalling names may only do so when those addresses stayed
silent through the first second. Anyone who can reach the port can send packets; this way the first
sender does not own the call, nor does whoever sends once the caller falls silent (hold without
re-INVITE, silence suppression).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import cast

import numpy as np

from swml_engine.connections import descriptor_limit, descriptors_in_use
from swml_engine.media.clock import MediaTicker
from swml_engine.media.frame import Frame, Samples
from swml_engine.media.resampler import RateConverter
from swml_engine.transports.sip import names
from swml_engine.transports.sip.codecs import SUPPORTED, Codec
from swml_engine.transports.sip.dtmf import DtmfReceiver, encode_event, event_code
from swml_engine.transports.sip.jitterbuffer import Coded, JitterBuffer, JitterStats
from swml_engine.transports.sip.names import is_address
from swml_engine.transports.sip.rtp import _HEADER, HEADER_SIZE, RtpPacket, parse_rtp
from swml_engine.transports.sip.sdp import Media, is_host_name, unicast_problem

log = logging.getLogger(__name__)

#: Consecutive packets (one SSRC, each sequence number the last plus one, nothing from the current source
#: in between) an address must send before it becomes the caller's source and media goes to it.
PROOF_PACKETS = 5
#: Seconds from the answer (or from a new SDP address) that the addresses the caller's SDP and SIP
#: signalling name have to send their first packet before any other address may prove itself.
STRANGER_GRACE = 1.0
#: Source moves logged at info level per stream (then debug: a flapping source must not flood the log).
_MOVES_LOGGED = 5
#: How long after a packet's audio is complete its timer fires: away from the 20 ms ticks that produce it.
PACE_MARGIN = 0.005
#: A sequence number this far or further ahead of the highest is a sender that restarted its numbering,
#: not that many packets lost (RFC 3550, A.1's MAX_DROPOUT).
MAX_DROPOUT = 3000


class Trust(IntEnum):
    """How far a source address is taken for the caller's (a higher one takes over a lower one)."""

    NOWHERE = -1  # no source yet and no SDP address to expect (hold at 0.0.0.0, a name not yet resolved)
    STRANGER = 0  # an address neither the SDP nor the SIP signalling names
    KNOWN_HOST = 1  # the SDP's or the SIP signalling's IP address, another port: a NAT rewrote the port
    SDP = 2  # exactly the SDP address (IP and port)


class Expecting(Enum):
    """Whether the caller's named addresses (SDP, SIP signalling) have sent a packet in this call."""

    AWAITING = "awaiting"  # not yet: after STRANGER_GRACE, an unnamed address may prove itself
    HEARD = "heard"  # yes: from now on an unnamed address never becomes the source


@dataclass(slots=True)
class _Candidate:
    """An address proving itself: its current run of consecutive packets, kept to be played out if it
    proves (so the caller's first packets from behind a NAT are not lost)."""

    addr: tuple[str, int]
    ssrc: int
    seq: int
    packets: list[tuple[int, int, int, int, bytes]]  # (payload type, sequence, timestamp, SSRC, payload)


def _plain(host: str) -> str:
    """An address as the kernel reports it, IPv4-mapped IPv6 (dual-stack sockets) as plain IPv4."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _canonical(host: str) -> str:
    """An address as written in SDP or SIP, in the spelling the kernel reports (names are left as they are)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def out_of_descriptors(error: OSError) -> OSError:
    """The error for a socket the process could not open because it has no file descriptors left."""
    limit = descriptor_limit()
    used = descriptors_in_use()
    if used is None and error.errno == errno.EMFILE:
        used = limit  # listing them needs a descriptor too; EMFILE means every one below the limit is open
    if error.errno == errno.ENFILE:
        where = f"the system's open-file table is full ({used} open here, of limit {limit})"
    else:
        where = f"{used if used is not None else '?'} open of limit {limit if limit is not None else '?'}"
    return OSError(f"no file descriptors left: {where}; raise the limit (ulimit -n, LimitNOFILE=) or lower --max-calls")


@dataclass
class RtpStats:
    received: int = 0
    #: Packets the peer's sequence numbers say it sent that never came (RFC 3550's cumulative loss: gaps,
    #: less late and duplicate packets). A peer that sends nothing — hold, silence suppression — loses none.
    lost: int = 0
    malformed: int = 0  # not RTP, or a payload type not negotiated
    foreign: int = 0  # from an address that was not the caller's source (and did not prove itself)
    moves: int = 0  # times the source (and where our packets go) moved to another address
    sent: int = 0
    dtmf_received: int = 0
    send_errors: int = 0  # packets the socket refused (an unreachable peer address)
    jitter: JitterStats = field(default_factory=JitterStats)
    #: How far the gaps between our packets strayed from the ptime: counts per whole millisecond (0..50).
    send_deviation_ms: list[int] = field(default_factory=lambda: [0] * 51)

    def send_jitter_p99(self) -> float:
        """Milliseconds within which 99% of our packet gaps kept to the ptime."""
        total = sum(self.send_deviation_ms)
        if total == 0:
            return 0.0
        seen = 0
        for ms, count in enumerate(self.send_deviation_ms):
            seen += count
            if seen >= 0.99 * total:
                return float(ms)
        return 50.0


@dataclass
class RtpFigures:
    """What the RTP streams of a process did, added up (``/metrics`` reads it)."""

    received: int = 0
    lost: int = 0  # packets the peers' sequence numbers say never came
    sent: int = 0
    late: int = 0  # packets that came after their audio was played out
    #: 20 ms frames with no audio in time, played as silence: packets lost or late, or none sent (hold,
    #: silence suppression, a peer that stopped sending)
    concealed: int = 0

    def add(self, stats: RtpStats) -> None:
        self.received += stats.received
        self.lost += stats.lost
        self.sent += stats.sent
        self.late += stats.jitter.late
        self.concealed += stats.jitter.concealed_frames


class RtpTally:
    """Every RTP stream of the process: the figures of those closed, kept as they close, and of those
    open, read from their own counters when asked. Nothing is done per packet (the streams count anyway);
    a stream dropped without being closed leaves the tally with it (weakly held)."""

    def __init__(self) -> None:
        self._open: weakref.WeakSet[RtpStream] = weakref.WeakSet()
        self._closed = RtpFigures()

    def opened(self, stream: RtpStream) -> None:
        self._open.add(stream)

    def closed(self, stream: RtpStream) -> None:
        if stream in self._open:  # (a stream may be closed twice: counted once)
            self._open.discard(stream)
            self._closed.add(stream.stats)

    def figures(self) -> RtpFigures:
        total = RtpFigures(**vars(self._closed))
        for stream in list(self._open):
            total.add(stream.stats)
        return total


#: The process's RTP streams (each worker of ``swml serve`` is a process of its own).
TALLY = RtpTally()


class _PendingDigit:
    def __init__(self, code: int, frames: int, done: asyncio.Future[None]) -> None:
        self.code = code
        self.frames = frames  # 20 ms steps while the key is down
        self.sent = 0
        self.timestamp = 0
        self.done = done


class RtpStream(asyncio.DatagramProtocol):
    """``signalling_host``: the address the call's SIP requests came from (an expected media source).
    ``clock``: seconds for the grace of :data:`STRANGER_GRACE` (the loop's time; tests give their own)."""

    def __init__(
        self,
        call_rate: int,
        on_digit: Callable[[str], None],
        *,
        signalling_host: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.call_rate = call_rate
        #: The caller's audio to the call's rate, and the call's to the codec's, when they differ (a
        #: codec that changed rate mid-call while a recording runs at the first): filters kept across
        #: frames, so the audio has no seam every 20 ms.
        self._read_rate, self._write_rate = RateConverter(), RateConverter()
        self.on_digit = on_digit
        self.stats = RtpStats()
        TALLY.opened(self)
        self.media: Media | None = None
        self.codec: Codec | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self._transport: asyncio.DatagramTransport | None = None
        self._jitter: JitterBuffer | None = None
        self._dtmf = DtmfReceiver()
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._signalling = _canonical(signalling_host) if signalling_host else None
        #: The caller's source: packets from here are the call's, and ours go here (symmetric RTP).
        self._peer: tuple[str, int] | None = None
        self._peer_trust = Trust.NOWHERE
        #: The SDP address as an IP address (None: hold, or a name not yet resolved), and the hosts
        #: whose packets are expected (its IP and the signalling's).
        self._sdp: tuple[str, int] | None = None
        self._hosts: frozenset[str] = frozenset()
        self._expecting = Expecting.AWAITING
        self._since = 0.0  # when the current SDP address (or the answer) came: the grace counts from here
        #: At most one address proving itself per trust level (an unnamed sender cannot disturb a NAT's).
        self._candidates: dict[Trust, _Candidate] = {}
        #: The caller's SSRC and highest sequence number so far (what ``stats.lost`` counts gaps from).
        self._peer_ssrc: int | None = None
        self._peer_seq = 0
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._out = np.zeros(0, dtype=np.int16)
        self._marker = True
        self._digits: list[_PendingDigit] = []
        #: The last event's end packet (payload type, the event's timestamp, payload) and how many times
        #: it is still to go: RFC 4733 §2.5.1.4 sends it three times, a packet interval apart (three at
        #: once are lost together by the burst that took the first).
        self._end_packet: tuple[int, int, bytes] = (0, 0, b"")
        self._ends_left = 0
        self._last_send = 0.0
        self._per_packet = 160
        self._units = 160
        self._ptime = 0.02
        self._dest: tuple[str, int] | None = None
        self._resolving = ""
        self._resolver: asyncio.Task[None] | None = None
        #: The ptime timer (ptimes other than 20 ms): when the next packet is due, and its handle.
        self._due = 0.0
        self._pacer: asyncio.TimerHandle | None = None

    # --- socket -----------------------------------------------------------------------------------

    async def bind(self, host: str, ports: tuple[int, int]) -> None:
        """Bind an even port from ``ports`` (RTP convention; RTCP would be the odd one above)."""
        low, high = ports
        candidates = list(range(low + (low & 1), high, 2))
        random.shuffle(candidates)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for port in candidates[:200]:
            try:
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: self, local_addr=(host, port), family=family
                )
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):  # not the port's fault: say what ran out
                    raise out_of_descriptors(e) from None
                continue
            self._transport = transport
            self.local = (host, port)
            return
        raise OSError(f"no free RTP port in {low}-{high} on {host}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass, but has sendto/close.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that has gone: keep going, the call ends by signalling.
        log.debug("RTP socket error on %s: %s", self.local, exc)

    def close(self) -> None:
        TALLY.closed(self)
        self._stop_pacer()
        if self._resolver is not None:
            self._resolver.cancel()
        for d in self._digits:
            if not d.done.done():
                d.done.set_result(None)
        self._digits.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # --- negotiation ------------------------------------------------------------------------------

    def configure(self, media: Media) -> None:
        """Apply an offer/answer result (first answer, re-INVITE, codec change)."""
        changed = self.media is None or media.codec != self.media.codec
        if changed:
            was, self.codec = self.codec, SUPPORTED[media.codec].factory()
            # The audio already waiting stays when it can (PCMU and PCMA: decoded on arrival, same rate):
            # the stream goes on in the other codec, with no hole of the buffer's delay in it.
            if self._jitter is None or was is None or was.stateful or was.rate != self.codec.rate:
                jitter = JitterBuffer(self.codec.rate, self.codec.clock_rate, decode=self._decode_in_turn)
                jitter.stats = self.stats.jitter
                self._jitter = jitter
            self._out = np.zeros(0, dtype=np.int16)
        moved = self.media is None or media.remote != self.media.remote
        self.media = media
        if moved:
            self._expect(media.remote)
        self._route()
        self._ptime = media.ptime / 1000
        assert self.codec is not None
        per_packet = self.codec.rate * media.ptime // 1000
        if per_packet != self._per_packet:
            self._stop_pacer()
            self._out = np.zeros(0, dtype=np.int16)
        self._per_packet = per_packet
        self._units = self.codec.timestamp_units(self._per_packet)

    # --- receiving --------------------------------------------------------------------------------

    def _expect(self, remote: tuple[str, int]) -> None:
        """A new SDP address (the answer, or a re-INVITE moving the media): its source is learnt anew,
        starting from the SDP address itself. Once the caller's named addresses have been heard in this
        call, an unnamed one never becomes the source, whatever later re-INVITEs say (hold at 0.0.0.0)."""
        host = _canonical(remote[0])
        hosts = {self._signalling} if self._signalling else set()
        self._sdp = None
        self._peer, self._peer_trust = None, Trust.NOWHERE
        if is_address(host) and host not in ("0.0.0.0", "::") and remote[1]:
            self._sdp = (host, remote[1])
            self._peer, self._peer_trust = self._sdp, Trust.SDP
            hosts.add(host)
        self._hosts = frozenset(hosts)
        self._candidates.clear()
        self._since = self._clock()

    def media_starts(self) -> None:
        """The call was answered: the caller's media starts now (an early answer's 183 may have come long
        before), so the grace for its first packets counts from here."""
        if self._expecting is Expecting.AWAITING:
            self._since = self._clock()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        media, codec, jitter = self.media, self.codec, self._jitter
        if media is None or codec is None or jitter is None:
            self.stats.malformed += 1
            return
        if data[:1] == b"\x80" and len(data) > HEADER_SIZE:
            # The usual packet (no CSRC list, extension or padding): header and payload at fixed places.
            _, b1, seq, timestamp, ssrc = _HEADER.unpack_from(data)
            pt = b1 & 0x7F
            payload = data[HEADER_SIZE:]
        else:
            packet = parse_rtp(data)
            if packet is None:
                self.stats.malformed += 1
                return
            pt, seq, timestamp, ssrc = packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc
            payload = packet.payload
        if pt != media.payload_type and pt != media.telephone_event:
            self.stats.malformed += 1
            return
        peer = self._peer
        if peer is None or addr[0] != peer[0] or addr[1] != peer[1]:
            self._from_elsewhere((str(addr[0]), int(addr[1])), pt, seq, timestamp, ssrc, payload)
            return
        if self._candidates or self._expecting is Expecting.AWAITING:
            self._peer_spoke()
        self._accept(pt, seq, timestamp, ssrc, payload)

    def _accept(self, pt: int, seq: int, timestamp: int, ssrc: int, payload: bytes) -> None:
        """A packet of the caller's: a digit, or audio for the jitter buffer."""
        media, codec, jitter = self.media, self.codec, self._jitter
        assert media is not None and codec is not None and jitter is not None
        self.stats.received += 1
        if ssrc != self._peer_ssrc:  # (a new stream: its numbering starts here)
            self._peer_ssrc, self._peer_seq = ssrc, seq
        else:
            ahead = (seq - self._peer_seq) & 0xFFFF
            if 0 < ahead < MAX_DROPOUT:
                self.stats.lost += ahead - 1
                self._peer_seq = seq
            elif (ahead == 0 or ahead >= 0x8000) and self.stats.lost > 0:  # late (it fills a gap) or a duplicate
                self.stats.lost -= 1
            elif MAX_DROPOUT <= ahead < 0x8000:  # the sender restarted its numbering
                self._peer_seq = seq
        if pt == media.telephone_event:
            digit = self._dtmf.receive(ssrc, timestamp, payload)
            if digit is not None:
                self.stats.dtmf_received += 1
                self.on_digit(digit)
            return
        if codec.stateful:  # decoded when played, in timestamp order (however the network ordered them)
            jitter.push(ssrc, timestamp, Coded(payload, codec.samples_in(payload)))
            return
        try:
            samples = codec.decode(payload)
        except Exception:  # a corrupt payload the decoder refuses: count it, keep the call
            self.stats.malformed += 1
            return
        jitter.push(ssrc, timestamp, samples)

    def _decode_in_turn(self, packet: Coded) -> Samples:
        """A packet of a stateful codec, at its turn to be played: exactly the samples it stands for
        (silence when the decoder refuses it: counted as malformed)."""
        codec = self.codec
        assert codec is not None
        try:
            samples = codec.decode(packet.payload)
        except Exception:
            self.stats.malformed += 1
            samples = np.zeros(0, dtype=np.int16)
        if len(samples) != packet.samples:
            fitted = np.zeros(packet.samples, dtype=np.int16)
            fitted[: min(len(samples), packet.samples)] = samples[: packet.samples]
            samples = fitted
        return samples

    def _peer_spoke(self) -> None:
        """The source sent: a named one has now been heard, and addresses of no higher trust that were
        proving themselves start again (a source that still sends is not replaced by its equal)."""
        if self._peer_trust > Trust.STRANGER:
            self._heard()
        for trust in [t for t in self._candidates if t <= self._peer_trust]:
            del self._candidates[trust]

    def _heard(self) -> None:
        self._expecting = Expecting.HEARD
        self._candidates.pop(Trust.STRANGER, None)

    def _trust_of(self, host: str, port: int) -> Trust:
        if self._sdp is not None and host == self._sdp[0] and port == self._sdp[1]:
            return Trust.SDP
        return Trust.KNOWN_HOST if host in self._hosts else Trust.STRANGER

    def _from_elsewhere(
        self, addr: tuple[str, int], pt: int, seq: int, timestamp: int, ssrc: int, payload: bytes
    ) -> None:
        """A packet from an address other than the source: the source in another spelling, a foreign
        packet, or one more packet of an address proving itself — which, once proved, becomes the source."""
        host, port = _plain(addr[0]), addr[1]
        peer = self._peer
        if peer is not None and _plain(peer[0]) == host and peer[1] == port:
            self._peer = addr  # the source itself as a dual-stack socket spells it: not a move
            self._route()
            self._peer_spoke()
            self._accept(pt, seq, timestamp, ssrc, payload)
            return
        trust = self._trust_of(host, port)
        if trust > Trust.STRANGER:
            self._heard()
        elif self._expecting is Expecting.HEARD or self._clock() - self._since < STRANGER_GRACE:
            self._foreign(addr)
            return
        run = self._candidates.get(trust)
        if run is None or run.addr != addr or run.ssrc != ssrc or seq != (run.seq + 1) & 0xFFFF:
            run = self._candidates[trust] = _Candidate(addr, ssrc, seq, [])
        run.seq = seq
        run.packets.append((pt, seq, timestamp, ssrc, payload))
        self._foreign(addr)
        if len(run.packets) >= PROOF_PACKETS:
            self._move(trust, run)

    def _foreign(self, addr: tuple[str, int]) -> None:
        self.stats.foreign += 1
        if self.stats.foreign == 1:
            log.info("RTP on port %d: packets from %s:%d are not the caller's (yet): ignored", self.local[1], *addr)

    def _move(self, trust: Trust, run: _Candidate) -> None:
        """``run``'s address proved itself: it is the caller's source now, and its packets are played."""
        del self._candidates[trust]
        was = self._peer
        self._peer, self._peer_trust = run.addr, trust
        self._route()
        self.stats.moves += 1
        level = logging.INFO if self.stats.moves <= _MOVES_LOGGED else logging.DEBUG
        log.log(
            level,
            "RTP on port %d: the caller's media comes from %s:%d now (%s; before: %s)",
            self.local[1],
            *run.addr,
            trust.name.lower().replace("_", " "),
            f"{was[0]}:{was[1]}" if was is not None else "none",
        )
        self.stats.foreign -= len(run.packets)
        for packet in run.packets:
            self._accept(*packet)

    def read(self) -> Frame | None:
        """The caller's next 20 ms at the call's rate (None before any audio arrived)."""
        if self._jitter is None or self.codec is None:
            return None
        # How late this tick runs: what arrived meanwhile is not the peer running ahead (jitterbuffer).
        frame = self._jitter.pop(MediaTicker.lateness(self._loop))
        if frame is None:
            return None
        return self._read_rate(frame, self.codec.rate, self.call_rate)

    def skip(self, frames: int) -> None:
        """The loop skipped ``frames`` ticks: the caller's audio for them is dropped, and ours leaves a
        gap of that length in time (the timestamps jump, the sequence numbers do not: nothing was lost)."""
        if self._jitter is not None:
            self._jitter.skip(frames)
        self._leave_gap(frames)

    def _leave_gap(self, frames: int) -> None:
        """Advance what we send past ``frames`` ticks nobody filled. Without this the caller's receiver
        plays what follows the gap that much early (seen as a whole pulse shifted by 0.24 s): RTP
        timestamps are when the audio is, not how much of it went before (RFC 3550 §5.1)."""
        codec = self.codec
        if codec is None or frames <= 0:
            return
        if self._digits and self._digits[0].sent:  # a key down through the gap: it was held that long
            self._digits[0].sent += frames
            return
        # audio queued for a ptime over 20 ms belongs before the gap and is stale now: its time passes too
        queued, self._out = len(self._out), np.zeros(0, dtype=np.int16)
        step = codec.timestamp_units(codec.rate // 50)
        self._ts = (self._ts + frames * step + codec.timestamp_units(queued)) & 0xFFFFFFFF
        self._marker = True  # the first packet after a silence (RFC 3551 §4.1): the receiver may re-time

    # --- sending ----------------------------------------------------------------------------------

    @property
    def destination(self) -> tuple[str, int] | None:
        if self._peer is not None:
            return self._peer
        return self.media.remote if self.media is not None else None

    def _route(self) -> None:
        """Where packets go now (the caller's source, at first the SDP address), None while that is nowhere.

        An SDP address that is a host name (RFC 4566 allows it) is resolved in the background; until
        then, and for an address of the other IP family than our socket, nothing is sent — a source
        that proves itself gives its address anyway (symmetric RTP)."""
        dest = self.destination
        self._dest = None
        if dest is None or dest[1] == 0 or dest[0] in ("0.0.0.0", "::"):
            return
        host, port = dest
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if is_host_name(host) and self._peer is None and self._resolving != host:
                self._resolving = host
                self._resolver = self._loop.create_task(self._resolve(host, port))  # (kept: not collected)
            return
        ours6 = ":" in self.local[0]
        if (ip.version == 6) == ours6:
            self._dest = (str(ip), port)
        elif ours6 and self.local[0] == "::":  # a dual-stack socket reaches IPv4 as ::ffff:a.b.c.d
            self._dest = (f"::ffff:{ip}", port)
        else:
            log.info("RTP peer %s unreachable from %s (other IP family): waiting for its packets", host, self.local)

    async def _resolve(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in self.local[0] else socket.AF_INET
        try:
            infos = await names.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as e:
            log.info("RTP peer %s not resolved: %s", host, e)
            return
        if not infos or self.media is None or self.media.remote[0] != host or self._sdp is not None:
            return  # the SDP address changed meanwhile
        ip = ipaddress.ip_address(_plain(str(infos[0][4][0])))
        problem = unicast_problem(ip)
        if problem is not None or ip.is_unspecified:
            log.info("RTP peer %s resolves to %s, %s: not sent to", host, ip, problem or "no address")
            return
        self._sdp = (str(ip), port)
        self._hosts = self._hosts | {str(ip)}
        if self._peer is None:
            self._peer, self._peer_trust = self._sdp, Trust.SDP
            self._route()

    def _send(self, packet: RtpPacket) -> None:
        self._send_raw(packet.serialize())

    def _send_raw(self, data: bytes) -> None:
        dest, transport = self._dest, self._transport
        if transport is None or dest is None:
            return
        stats = self.stats
        try:
            transport.sendto(data, dest)
        except (OSError, ValueError) as e:  # a peer address the socket cannot reach: count it, keep the call
            stats.send_errors += 1
            if stats.send_errors == 1:
                log.info("RTP to %s failed: %s", dest, e)
            return
        stats.sent += 1
        now = self._loop.time()
        last, self._last_send = self._last_send, now
        if last:
            ms = int(abs(now - last - self._ptime) * 1000)
            stats.send_deviation_ms[ms if ms < 50 else 50] += 1

    def write(self, frame: Frame) -> None:
        """What the caller hears for this tick; sent in packets of the negotiated ptime."""
        media, codec = self.media, self.codec
        if media is None or codec is None or not media.sends:
            return
        if self._ends_left:
            self._ends_left -= 1
            pt, timestamp, payload = self._end_packet
            self._send(RtpPacket(pt, self._seq, timestamp, self._ssrc, payload))
            self._seq = (self._seq + 1) & 0xFFFF
        if self._digits:
            self._send_digit_step(media, codec)
            return
        samples = self._write_rate(frame, self.call_rate, codec.rate)
        per_packet, units = self._per_packet, self._units
        if not len(self._out) and len(samples) == per_packet:  # the usual case: one frame, one packet
            self._send_audio(media.payload_type, codec.encode(samples), units)
            return
        self._out = np.concatenate([self._out, samples]) if len(self._out) else samples
        if len(self._out) > 2 * per_packet + len(samples):  # the timer fell behind: keep the latency bounded
            self._out = self._out[-(per_packet + len(samples)) :]
        if self._pacer is None:  # the first packet is due once its audio is all here
            self._due = self._loop.time() + self._ptime + PACE_MARGIN
            self._pacer = self._loop.call_at(self._due, self._pace)

    def _pace(self) -> None:
        """The ptime timer: one packet of the queued audio per period; it stops when the audio does."""
        self._pacer = None
        media, codec = self.media, self.codec
        if media is None or codec is None or not media.sends or self._digits or self._transport is None:
            return  # the next write starts it again
        now = self._loop.time()
        if len(self._out) < self._per_packet:
            if now - self._due > 2 * self._ptime + 0.02:  # no audio came for a while: stop, drop the rest
                self._out = np.zeros(0, dtype=np.int16)
                return
            self._pacer = self._loop.call_at(now + PACE_MARGIN / 2, self._pace)  # the tick is late: soon again
            return
        chunk, self._out = self._out[: self._per_packet], self._out[self._per_packet :]
        self._send_audio(media.payload_type, codec.encode(np.ascontiguousarray(chunk)), self._units)
        self._due += self._ptime
        if self._due < now - 0.2:  # the loop stalled: start the period afresh rather than burst
            self._due = now + self._ptime
        self._pacer = self._loop.call_at(self._due, self._pace)

    def _stop_pacer(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None

    def _send_audio(self, pt: int, payload: bytes, units: int) -> None:
        # the hot path: the header packed directly, no packet object
        self._send_raw(
            _HEADER.pack(0x80, (0x80 if self._marker else 0) | pt, self._seq, self._ts, self._ssrc) + payload
        )
        self._marker = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + units) & 0xFFFFFFFF

    def send_digit(self, digit: str, duration: float) -> asyncio.Future[None]:
        """Queue one RFC 4733 digit; the future completes when its end packets are out."""
        done: asyncio.Future[None] = self._loop.create_future()
        media = self.media
        if media is None or media.telephone_event is None or not media.sends:
            done.set_result(None)  # the peer takes no telephone-events: nothing can be sent
            return done
        self._digits.append(_PendingDigit(event_code(digit), max(2, round(duration / 0.02)), done))
        return done

    def _send_digit_step(self, media: Media, codec: Codec) -> None:
        """One 20 ms step of the digit at the head of the queue (audio pauses while a key is down)."""
        assert media.telephone_event is not None
        d = self._digits[0]
        step = codec.timestamp_units(codec.rate // 50)
        if d.sent == 0:
            d.timestamp = self._ts
        d.sent += 1
        end = d.sent >= d.frames
        duration = d.sent * step
        payload = encode_event(d.code, end, duration)
        self._send(RtpPacket(media.telephone_event, self._seq, d.timestamp, self._ssrc, payload, d.sent == 1))
        self._seq = (self._seq + 1) & 0xFFFF
        if end:  # twice more, with the next two packets (whatever they carry: the voice again, a next key)
            self._end_packet, self._ends_left = (media.telephone_event, d.timestamp, payload), 2
            self._digits.pop(0)
            self._ts = (d.timestamp + duration) & 0xFFFFFFFF
            self._out = np.zeros(0, dtype=np.int16)
            if not d.done.done():
                d.done.set_result(None)
