"""A browser's call behind the transport interface: aiortc's peer connection (ICE, DTLS-SRTP, Opus and G.711).

The signalling session (``service/phone.py``) makes a :class:`WebRtcCallTransport` from the browser's
offer, awaits :meth:`~WebRtcCallTransport.prepare` (a :class:`WebRtcReject` says why an offer cannot be
taken), then runs the script on a call as for a SIP caller. What the transport has to say to the page
(the SDP answer, ``answered``, ``ended``) goes out through the ``signal`` callback it was given; what the
page says (keypad digits, hang up) comes in through :meth:`~WebRtcCallTransport.press` and
:meth:`~WebRtcCallTransport.remote_hangup`.

Audio: aiortc decodes the browser's packets (Opus at 48 kHz, G.711 at 8 kHz); a task resamples them to
the call's rate, mono, into a :class:`SpeakBuffer` the media tick empties one 20 ms frame at a time.
What the party hears goes out through a :class:`ListenTrack` aiortc encodes and sends as the tick fills
it. Opus calls run at 16 kHz, G.711 calls at 8 kHz: the engine's detectors, VAD and recorders are tuned
and tested at those rates, and speech needs no more, so 48 kHz is not offered to the call.

ICE takes host candidates only, with no STUN or TURN server: a server with a public address reaches a
browser behind NAT through the peer-reflexive candidates the browser's checks reveal. aioice never offers
a loopback address (127.0.0.1), so a machine with nothing else cannot take browser calls (prepare says so).
A server itself behind a one-to-one NAT (a cloud host whose public address is not on its interface, a
container's published ports) is given that address (``announce``, from ``--advertise``): our answer adds
beside each host candidate of its family one at that address and the same port (:func:`announced`), which
is what such a NAT forwards — as a server-reflexive candidate would, learnt without a STUN server.

A browser may name its host candidates by mDNS (``<uuid>.local``, RFC 8828). Firefox answers queries for
those names only once it has our answer (it registers them when its ICE checks start), so the names are
not resolved from the offer: they are set aside, and asked for again and again after our answer is out
(:class:`MdnsCandidates`); end-of-candidates is signalled once they are resolved or given up. Meanwhile
the browser's own checks reach our host candidates, from which ICE learns its address (peer-reflexive).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import logging
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import av
import numpy as np
from aioice.ice import get_host_addresses
from aioice.mdns import is_mdns_hostname
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceTransport

from swml_engine.logs import CallLog
from swml_engine.media.audio import resample
from swml_engine.media.frame import Frame, Samples, samples_per_frame
from swml_engine.media.sources.tones import dtmf_frames
from swml_engine.transports.base import Transport
from swml_engine.vocabulary import EndReason

log = logging.getLogger(__name__)

#: The signalling caps a message at 64 KiB; an offer alone is held to the same.
MAX_OFFER_BYTES = 64 * 1024
#: ICE candidates of an offer that are used: a browser gathers a few per network interface, in its order
#: of preference; each is checked (and an mDNS name resolved), so beyond these the rest are left out —
#: and TCP ones always (media here is over UDP): a machine with many interfaces (Docker's bridges, VPNs)
#: offers dozens. An offer with more than MAX_CANDIDATE_LINES in all is refused, a flood not a browser.
MAX_CANDIDATES = 32
MAX_CANDIDATE_LINES = 256
#: Digits one keypad message may carry, and which.
MAX_PRESS_DIGITS = 32
KEYPAD = frozenset("0123456789*#ABCD")
#: Seconds from our answer to a connected peer (ICE and DTLS) before the browser is taken for gone.
CONNECT_TIMEOUT = 15.0
#: Seconds between rounds of mDNS queries for a browser's host names still unresolved after our answer
#: (each query itself waits 1 s for its answer: aioice's): Firefox starts answering when it has our answer.
MDNS_RETRY_INTERVAL = 0.5
#: Frames of the party's audio held before the first is handed out (40 ms: evens out the arrival of
#: packets decoded on aiortc's thread), and the most held (200 ms: beyond, the oldest go, counted).
PREFETCH_FRAMES = 2
MAX_SPEAK_FRAMES = 10
#: Frames of what the party hears waiting for aiortc's sender (200 ms: beyond, the oldest go, counted).
MAX_LISTEN_FRAMES = 10

#: What the transport hands the signalling session to send (a protocol message, a JSON object).
Signal = Callable[[dict[str, Any]], None]


class WebRtcReject(Exception):
    """The offer cannot be taken; str(e) says why, for a person (the page shows it)."""


class WebRtcUnavailable(WebRtcReject):
    """This server cannot take browser calls at all (no address a browser could reach): ours, not the offer's."""


class WebRtcGone(WebRtcReject):
    """The page hung up (its WebSocket closed) before its call started: nothing to answer, nothing wrong."""


@dataclass(frozen=True)
class WebRtcCodec:
    """A codec the transport negotiates: its ``answer.codecs`` name, its SDP name, the call's rate with it."""

    name: str
    mime: str
    rate: int


#: Ours, in order of preference (``answer.codecs`` narrows and reorders them).
CODECS = (
    WebRtcCodec("OPUS", "audio/opus", 16000),
    WebRtcCodec("PCMU", "audio/PCMU", 8000),
    WebRtcCodec("PCMA", "audio/PCMA", 8000),
)


def codecs_for(allowed: list[str]) -> list[WebRtcCodec]:
    """Our codecs the script allows, in its order (all of ours, Opus first, when it names none)."""
    if not allowed:
        return list(CODECS)
    by_name = {c.name: c for c in CODECS}
    return [by_name[name] for name in dict.fromkeys(n.upper() for n in allowed) if name in by_name]


# --- the offer ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedOffer:
    """An offer fit to answer: its text, and the codecs of ours it offers (their SDP names, lower case)."""

    sdp: str
    offered: frozenset[str]


def check_offer(text: str) -> CheckedOffer:
    """The browser's offer, or WebRtcReject naming what is wrong with it. One audio stream only (a video
    or data stream is refused rather than half answered), every ICE candidate in it (no trickle)."""
    if len(text.encode("utf-8", "replace")) > MAX_OFFER_BYTES:
        raise WebRtcReject(f"the offer is larger than {MAX_OFFER_BYTES // 1024} KiB")
    candidates = sum(1 for line in text.splitlines() if line.startswith("a=candidate:"))
    if candidates > MAX_CANDIDATE_LINES:
        raise WebRtcReject(f"the offer has {candidates} ICE candidates; at most {MAX_CANDIDATE_LINES} are read")
    text = _kept_candidates(text)
    try:
        parsed = aiortc_sdp.SessionDescription.parse(text)
    except Exception as e:  # the parser fails in many ways (AssertionError, ValueError, ...) on bad input
        raise WebRtcReject(f"the offer is not SDP that can be read ({type(e).__name__}: {e})") from None
    kinds = [m.kind for m in parsed.media]
    if not kinds:
        raise WebRtcReject("the offer has no media stream: it is not an SDP offer with audio")
    if kinds != ["audio"]:
        raise WebRtcReject(f"the offer has {', '.join(kinds)} streams; exactly one audio stream is taken (no video)")
    media = parsed.media[0]
    if media.direction == "inactive":
        raise WebRtcReject("the offer's audio stream is inactive")
    if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
        raise WebRtcReject("the offer has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
    if media.dtls is None or not media.dtls.fingerprints:
        raise WebRtcReject("the offer has no DTLS fingerprint (a=fingerprint): media must be DTLS-SRTP")
    if not media.rtcp_mux:
        raise WebRtcReject("the offer does not multiplex RTCP (a=rtcp-mux)")
    if not media.ice_candidates:
        raise WebRtcReject("the offer has no ICE candidates: gather them all before sending it (no trickle)")
    for candidate in media.ice_candidates:
        if not _checkable(candidate.ip):
            raise WebRtcReject(
                f"ICE candidate {candidate.ip[:60]!r}: not an IP address nor an mDNS name (one label, then .local)"
            )
    offered = frozenset(c.mimeType.lower() for c in media.rtp.codecs)
    if not any(c.mime.lower() in offered for c in CODECS):
        names = ", ".join(sorted(m.split("/")[-1] for m in offered)) or "none"
        raise WebRtcReject(f"no codec in common: the offer has {names}; this server takes Opus, PCMU, PCMA")
    return CheckedOffer(text, offered)


def announced(sdp: str, address: str | None) -> str:
    """Our answer with, after each host candidate of ``address``'s family, one at ``address`` and the same
    port: a server-reflexive candidate (type preference 100, below the host's 126), which a browser
    beyond a one-to-one NAT reaches while our own addresses are private to us. ``None``: as it is."""
    if address is None:
        return sdp
    public = ipaddress.ip_address(address)
    lines: list[str] = []
    for line in sdp.split("\r\n"):
        lines.append(line)
        if not line.startswith("a=candidate:"):
            continue
        fields = line.removeprefix("a=candidate:").split(" ")
        # foundation component transport priority address port "typ" type ...
        if len(fields) < 8 or fields[6] != "typ" or fields[7] != "host" or fields[2].lower() != "udp":
            continue
        try:
            own = ipaddress.ip_address(fields[4])
        except ValueError:
            continue
        if own.version != public.version or own == public:
            continue
        foundation = f"nat{zlib.crc32(fields[0].encode()):x}"  # (its own: another type, another base)
        priority = (100 << 24) | (int(fields[3]) & 0xFFFFFF)
        lines.append(
            f"a=candidate:{foundation} {fields[1]} {fields[2]} {priority} {public} {fields[5]} typ srflx "
            f"raddr {own} rport {fields[5]}"
        )
    return "\r\n".join(lines)


def _kept_candidates(text: str) -> str:
    """The offer with its UDP candidates only, the first MAX_CANDIDATES of them (a browser lists them best
    first): the others would never carry this server's media, only cost checks."""
    kept: list[str] = []
    udp = 0
    for line in text.split("\n"):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) < 3 or fields[2].lower() != "udp" or udp >= MAX_CANDIDATES:
                continue
            udp += 1
        kept.append(line)
    return "\n".join(kept)


def _checkable(host: str) -> bool:
    """A candidate's host the ICE checks may go to: an IP address, or a browser's mDNS name (which aioice
    resolves on the local link). Any other name would be a DNS lookup the browser asked us to make. An mDNS
    name is one label and ``.local``, as browsers make them (RFC 8828: a UUID) and as aioice resolves them:
    another ``….local`` (``a.b.local``, ``x%s.local``) it takes for an address, and fails on, again at every
    round of queries (a name with ``%`` in it breaks its log lines: a stack dump each time)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return is_mdns_hostname(host)
    return True


@dataclass(frozen=True)
class DeferredOffer:
    """The offer as first set (without its mDNS candidates), those candidates, resolved after our answer,
    and whether its end-of-candidates was held back with them (signalled once they are done)."""

    sdp: str
    mdns: tuple[RTCIceCandidate, ...] = ()
    ends_later: bool = False


def defer_mdns_candidates(sdp: str) -> DeferredOffer:
    """Take the candidates named by mDNS (``….local``) out of a checked offer, and with them its
    end-of-candidates: resolving them now would fail for a browser that answers for its names only once it
    has our answer (Firefox), and ICE must not give up before they are tried. Only UDP ones are kept to
    resolve: ICE here takes no TCP candidates (a browser's are ``tcptype active``, which need ours passive)."""
    kept: list[str] = []
    deferred: list[RTCIceCandidate] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) >= 8 and fields[4].endswith(".local"):
                if fields[2].lower() == "udp":
                    deferred.append(aiortc_sdp.candidate_from_sdp(line.removeprefix("a=candidate:")))
                continue
        kept.append(line)
    if len(kept) == len(sdp.splitlines()):
        return DeferredOffer(sdp)
    ends = [line for line in kept if line != "a=end-of-candidates"]
    return DeferredOffer("\r\n".join(ends) + "\r\n", tuple(deferred), ends_later=len(ends) < len(kept))


class MdnsCandidates:
    """A browser's host candidates named by mDNS, added to ICE once their names resolve (aioice asks on the
    local link, 1 s a query). Asked for in rounds until every one is added, the connection is up (the
    browser's checks found us first: the rest are not needed), the transport ends, or ``timeout`` passes;
    then end-of-candidates, so ICE can fail if nothing came of them."""

    def __init__(self, ice: RTCIceTransport, candidates: tuple[RTCIceCandidate, ...], timeout: float) -> None:
        self.ice = ice
        self.pending = list(candidates)
        self.timeout = timeout
        #: Candidates added, and rounds of queries made (logged at the end).
        self.added = 0
        self.rounds = 0

    async def run(self, done: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while self.pending and not done() and loop.time() < deadline and self.ice.state != "closed":
            self.rounds += 1
            await asyncio.gather(*(self.ice.addRemoteCandidate(c) for c in self.pending))
            known = {(c.ip, c.port, c.component) for c in self.ice.getRemoteCandidates()}
            left = [c for c in self.pending if (c.ip, c.port, c.component) not in known]
            self.added += len(self.pending) - len(left)
            self.pending = left
            if left:
                await asyncio.sleep(MDNS_RETRY_INTERVAL)
        if self.ice.state != "closed":
            await self.ice.addRemoteCandidate(None)


def check_host_address() -> None:
    """WebRtcUnavailable when this machine has no address but loopback: aioice leaves 127.0.0.1 out of
    the candidates it gathers, so there would be none to answer with."""
    if not get_host_addresses(use_ipv4=True, use_ipv6=True):
        raise WebRtcUnavailable(
            "this server has no network address but loopback (127.0.0.1), which WebRTC's ICE never offers: "
            "browser calls need an address the browser can reach"
        )


# --- audio ----------------------------------------------------------------------------------------------


class SpeakBuffer:
    """The party's audio at the call's rate, cut in 20 ms frames: filled as packets are decoded, emptied
    once a tick. A burst or a stall never grows memory or delay without bound: beyond ``MAX_SPEAK_FRAMES``
    the oldest frames go (``dropped``); after running dry it waits for ``PREFETCH_FRAMES`` again."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._frames: deque[Frame] = deque()
        self._partial = np.zeros(0, dtype=np.int16)
        self._primed = False
        #: Frames taken in, and those dropped (overflow or skipped ticks).
        self.received = 0
        self.dropped = 0

    def reset(self, rate: int) -> None:
        self.rate = rate
        self._frames.clear()
        self._partial = np.zeros(0, dtype=np.int16)
        self._primed = False

    def push(self, samples: Samples) -> None:
        n = samples_per_frame(self.rate)
        data = np.concatenate([self._partial, samples]) if len(self._partial) else samples
        whole = len(data) - len(data) % n
        for start in range(0, whole, n):
            if len(self._frames) >= MAX_SPEAK_FRAMES:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(data[start : start + n])
            self.received += 1
        self._partial = data[whole:].copy()

    def pop(self) -> Frame | None:
        if not self._primed:
            if len(self._frames) < PREFETCH_FRAMES:
                return None
            self._primed = True
        if not self._frames:
            self._primed = False
            return None
        return self._frames.popleft()

    def skip(self, frames: int) -> None:
        for _ in range(min(frames, len(self._frames))):
            self._frames.popleft()
            self.dropped += 1


class ListenTrack(MediaStreamTrack):
    """What the party hears, as aiortc's sender takes it: each ``recv`` waits for the next frame the media
    tick queued (so the call's clock paces the stream) and hands it over stamped with when it is in the
    call (aiortc's RTP timestamps follow ``pts``); aiortc encodes it. A sender that falls behind loses the
    oldest frames (``dropped``); their time, and ticks the loop skipped (``gap``), still pass, so the
    browser plays what follows when it happened rather than early."""

    kind = "audio"

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.rate = rate
        #: Frames to send, each with the samples of silence (a gap) before it.
        self._frames: deque[tuple[Frame, int]] = deque()
        self._gap = 0  # samples skipped since the last frame queued
        self._queued = asyncio.Event()
        self._pts = 0
        self.sent = 0
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        if len(self._frames) >= MAX_LISTEN_FRAMES:
            oldest, gap = self._frames.popleft()
            self._pts += gap + len(oldest)
            self.dropped += 1
        self._frames.append((frame, self._gap))
        self._gap = 0
        self._queued.set()

    def gap(self, samples: int) -> None:
        """``samples`` of the call's time that had no frame (the loop skipped its ticks)."""
        self._gap += samples

    async def recv(self) -> av.AudioFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._queued.clear()
            await self._queued.wait()
        samples, gap = self._frames.popleft()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.time_base = fractions.Fraction(1, self.rate)
        frame.pts = self._pts + gap
        self._pts = frame.pts + len(samples)
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._queued.set()  # a recv waiting for a frame ends (MediaStreamError)


# --- the transport --------------------------------------------------------------------------------------


class PeerState(StrEnum):
    """Where the browser's call is. Media flows in ``early`` and ``answered``."""

    OFFERED = "offered"  # made from the offer, not checked yet
    READY = "ready"  # prepare() took the offer; nothing sent to the browser yet
    EARLY = "early"  # our answer is out (early media): the script has not answered
    ANSWERED = "answered"
    ENDED = "ended"  # hung up by either side, or refused
    CLOSED = "closed"  # and the peer connection released


_MEDIA = frozenset({PeerState.EARLY, PeerState.ANSWERED})
_MOVES: dict[PeerState, frozenset[PeerState]] = {
    PeerState.OFFERED: frozenset({PeerState.READY}),
    PeerState.READY: frozenset({PeerState.EARLY, PeerState.ANSWERED}),
    PeerState.EARLY: frozenset({PeerState.ANSWERED}),
    PeerState.ANSWERED: frozenset(),
    PeerState.ENDED: frozenset(),
    PeerState.CLOSED: frozenset(),
}


class IllegalMove(RuntimeError):
    """The transport was asked to move where its state does not lead: a bug, named with both states."""


class WebRtcCallTransport(Transport):
    """A browser's call (see the module docstring). ``peer``: who the browser is, for logs (its address)."""

    kind = "webrtc"

    def __init__(
        self,
        offer_sdp: str,
        signal: Signal,
        *,
        peer: str,
        connect_timeout: float = CONNECT_TIMEOUT,
        announce: str | None = None,
    ) -> None:
        self.offer_sdp = offer_sdp
        self.peer = peer
        self.connect_timeout = connect_timeout
        #: Our public address behind a one-to-one NAT, offered beside our own (:func:`announced`).
        self.announce = announce
        #: The codec agreed in our answer (``opus``, ``PCMU``, ``PCMA``), None before it.
        self.codec: str | None = None
        self.state = PeerState.OFFERED
        self._signal = signal
        self._offer: CheckedOffer | None = None
        self._pc: RTCPeerConnection | None = None
        #: Our codecs, in order, the peer connection was given (a narrower answer.codecs makes another).
        self._pc_codecs: list[WebRtcCodec] = []
        self._speak = SpeakBuffer(self.rate)
        self._listen: ListenTrack | None = None
        self._reader: asyncio.Task[None] | None = None
        #: Resolved when the connection is up (True) or will never be (False: failed, closed, hung up).
        self._link: asyncio.Future[bool] | None = None
        self._connection_state: tuple[str, str] | None = None
        self._ended_sent = False
        #: The offer as set on the peer connection, its mDNS candidates set aside (defer_mdns_candidates).
        self._deferred: DeferredOffer | None = None
        self._ice: RTCIceTransport | None = None
        self._resolver: asyncio.Task[None] | None = None

    # --- the state ----------------------------------------------------------------------------------

    def _move(self, to: PeerState) -> None:
        """Change state along _MOVES; ENDED from any state but CLOSED, CLOSED from any."""
        here = self.state
        if to is PeerState.CLOSED or (to is PeerState.ENDED and here is not PeerState.CLOSED):
            self.state = to
            return
        if to not in _MOVES[here]:
            raise IllegalMove(f"WebRTC call from {self.peer}: cannot go from {here} to {to}")
        self.state = to

    @property
    def ended(self) -> bool:
        return self.state in (PeerState.ENDED, PeerState.CLOSED)

    @property
    def _log(self) -> CallLog:
        return CallLog(log, self.call.call_id if self.call is not None else None)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._signal(message)
        except Exception:  # the page's socket is the session's to handle; the call goes on regardless
            self._log.exception("WebRTC call from %s: signalling %s failed", self.peer, message.get("type"))

    def _send_ended(self, reason: str) -> None:
        if not self._ended_sent:
            self._ended_sent = True
            self._send({"type": "ended", "reason": reason})

    # --- before the script --------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Take the browser's offer (WebRtcReject: why not). The call's rate follows the codec we would
        choose: 16 kHz when the browser offers Opus, 8 kHz for G.711."""
        if self.ended:  # (a page that closes its tab at once: its WebSocket went before the call began)
            raise self._gone_before_start()
        if self.state is not PeerState.OFFERED:
            raise IllegalMove(f"WebRTC call from {self.peer}: prepare() once, before the call starts")
        self._offer = check_offer(self.offer_sdp)
        check_host_address()
        first = next(c for c in CODECS if c.mime.lower() in self._offer.offered)
        self.rate = first.rate
        self._speak.reset(self.rate)
        self._pc = await self._connect(list(CODECS))
        if self.ended:  # hung up while the peer connection was made: let its sockets go now
            await self._release()
            raise self._gone_before_start()
        self._move(PeerState.READY)

    def _gone_before_start(self) -> WebRtcGone:
        self._log.info("WebRTC call from %s: the page hung up before its call started", self.peer)
        return WebRtcGone("the page hung up before its call started")

    async def _connect(self, codecs: list[WebRtcCodec]) -> RTCPeerConnection:
        """A peer connection with the offer set as its remote description: our one audio transceiver sends
        the ListenTrack, its codec preferences ``codecs``; the reader task takes what the browser sends."""
        assert self._offer is not None
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # none: aiortc's default is a public STUN server
        self._listen = ListenTrack(self.rate)
        transceiver = pc.addTransceiver(self._listen, direction="sendrecv")
        _prefer(transceiver, codecs)
        self._deferred = defer_mdns_candidates(self._offer.sdp)
        self._ice = transceiver.receiver.transport.transport
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=self._deferred.sdp, type="offer"))
        except Exception as e:  # aiortc's own checks, past ours: the offer still cannot be taken
            await pc.close()
            raise WebRtcReject(f"the offer cannot be used ({type(e).__name__}: {e})") from None
        self._pc_codecs = codecs
        pc.on("connectionstatechange", self._on_state)
        pc.on("iceconnectionstatechange", self._on_state)
        track = transceiver.receiver.track
        if track is not None and self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(track))
        return pc

    # --- answer, early media, hangup ----------------------------------------------------------------

    async def early_media(self) -> None:
        if self.state is PeerState.READY:
            await self._answer_browser(early=True)

    async def answer(self) -> None:
        if self.state is PeerState.READY:
            await self._answer_browser(early=False)
        elif self.state is PeerState.EARLY:
            self._move(PeerState.ANSWERED)
            self._send({"type": "answered"})

    async def _answer_browser(self, *, early: bool) -> None:
        """Send our SDP answer (once), then wait for ICE and DTLS: the script's first words are not lost
        to a connection still being made. Not connected within ``connect_timeout``: the browser is gone."""
        assert self._offer is not None and self._pc is not None
        call = self.call
        allowed = codecs_for(call.codecs if call is not None else [])
        usable = [c for c in allowed if c.mime.lower() in self._offer.offered]
        if not usable:
            self._refuse(f"no codec in common with answer.codecs ({', '.join(c.name for c in allowed) or 'none'})")
            return
        if allowed != self._pc_codecs:  # the script narrowed the codecs: preferences are set before the offer
            await self._release()
            try:
                self._pc = await self._connect(allowed)
            except WebRtcReject as e:
                self._refuse(str(e))
                return
        pc, chosen = self._pc, usable[0]
        if call is not None and chosen.rate != self.rate:
            if call.change_rate(chosen.rate):
                self.rate = chosen.rate
            else:
                self._log.info("call %s stays at %d Hz (%s): media already runs", call.call_id, self.rate, chosen.name)
        self._speak.reset(self.rate)
        assert self._listen is not None
        self._listen.rate = self.rate
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # (InvalidStateError: the peer connection was closed meanwhile, by a hangup)
            if not self.ended:
                self._refuse(f"our answer could not be made ({type(e).__name__}: {e})")
            return
        if self.ended:  # hung up while the answer was made
            return
        self.codec = chosen.mime.split("/")[1]
        self._move(PeerState.EARLY if early else PeerState.ANSWERED)
        self._link = asyncio.get_running_loop().create_future()
        self._on_state()
        self._send({"type": "answer", "sdp": announced(pc.localDescription.sdp, self.announce), "early": early})
        self._resolve_mdns()
        if call is not None:
            call.events.emit("webrtc.answer", codec=self.codec, rate=self.rate, early=early)
        try:
            await asyncio.wait_for(asyncio.shield(self._link), self.connect_timeout)
        except TimeoutError:
            self._gone(f"not connected (ICE and DTLS) within {self.connect_timeout:g} s of our answer")

    def _resolve_mdns(self) -> None:
        """The offer's mDNS candidates, now that the browser has our answer and will say where they are."""
        deferred, ice = self._deferred, self._ice
        if deferred is None or not (deferred.mdns or deferred.ends_later) or ice is None or self._resolver is not None:
            return
        mdns = MdnsCandidates(ice, deferred.mdns, self.connect_timeout)
        self._resolver = asyncio.get_running_loop().create_task(self._run_mdns(mdns))

    async def _run_mdns(self, mdns: MdnsCandidates) -> None:
        link = self._link
        total = len(mdns.pending)
        try:
            await mdns.run(lambda: self.ended or (link is not None and link.done()))
        except Exception:  # aiortc's, on a transport closing meanwhile: the call's own end says the rest
            self._log.exception("WebRTC call from %s: adding the offer's mDNS candidates failed", self.peer)
            return
        self._log.info(
            "WebRTC call from %s: %d of %d mDNS candidates resolved (%d rounds of queries)",
            self.peer,
            mdns.added,
            total,
            mdns.rounds,
        )

    def _refuse(self, why: str) -> None:
        """The call cannot be answered (the script's codecs, an offer aiortc would not take): it ends."""
        self._log.info("WebRTC call from %s refused: %s", self.peer, why)
        self._move(PeerState.ENDED)
        call = self.call
        if call is not None:
            call.events.emit("error", where="webrtc.answer", message=why)
            call.on_remote_hangup("rejected")
        self._send_ended("remote_rejected")

    async def hangup(self, reason: EndReason) -> None:
        if self.ended:
            return
        self._move(PeerState.ENDED)
        self._settle_link(False)
        self._send_ended(reason)
        await self._release()

    def remote_hangup(self) -> None:
        """The page hung up, or its WebSocket closed."""
        if self.ended:
            return
        self._move(PeerState.ENDED)
        self._settle_link(False)
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def _gone(self, why: str) -> None:
        """The browser's connection failed, closed or never came up: a remote hangup."""
        if self.ended:
            return
        self._log.info("WebRTC call from %s: %s: the browser is taken for gone", self.peer, why)
        self._move(PeerState.ENDED)
        self._settle_link(False)
        call = self.call
        if call is not None:
            call.events.emit("warning", where="webrtc", message=f"{why}: the call ends")
            call.on_remote_hangup("hangup")

    def _settle_link(self, up: bool) -> None:
        if self._link is not None and not self._link.done():
            self._link.set_result(up)

    def _on_state(self) -> None:
        """ICE or the connection moved: the call's timeline shows it; up settles the answer's wait,
        failed or closed (by the browser) ends the call."""
        pc = self._pc
        if pc is None:
            return
        state = (pc.iceConnectionState, pc.connectionState)
        if state == self._connection_state:
            return
        self._connection_state = state
        if self.call is not None:
            self.call.events.emit("webrtc.state", ice=state[0], connection=state[1])
        if state[1] == "connected":
            self._settle_link(True)
        elif state[1] in ("failed", "closed") and self.state in _MEDIA:
            self._gone(f"its connection {state[1]}")

    async def close(self) -> None:
        if self.state is PeerState.CLOSED:
            return
        self._move(PeerState.CLOSED)
        self._settle_link(False)
        call = self.call
        # Ended by the call, not through hangup() (a failed media tick): the page still hears why.
        self._send_ended(call.end_reason if call is not None and call.end_reason else "hangup")
        await self._release()
        if call is not None:
            listen = self._listen
            call.events.emit(
                "webrtc.stats",
                codec=self.codec,
                frames_received=self._speak.received,
                frames_dropped_in=self._speak.dropped,
                frames_sent=listen.sent if listen is not None else 0,
                frames_dropped_out=listen.dropped if listen is not None else 0,
            )

    async def _release(self) -> None:
        """Stop the reader and the sending track, close the peer connection (its sockets, its tasks)."""
        reader, pc, self._reader, self._pc = self._reader, self._pc, None, None
        resolver, self._resolver = self._resolver, None
        for task in (reader, resolver):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._listen is not None:
            self._listen.stop()
        if pc is not None:
            await pc.close()

    # --- media ----------------------------------------------------------------------------------------

    async def _read(self, track: MediaStreamTrack) -> None:
        """aiortc's decoded frames (Opus: 48 kHz stereo; G.711: 8 kHz) to mono at the call's rate."""
        resampler: Any = None
        made_for = 0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if resampler is None or made_for != self.rate:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
                made_for = self.rate
            frame.pts = None  # the resampler keeps its own timeline: a jump in RTP time is not a gap to fill
            try:
                resampled = resampler.resample(frame)
            except (av.error.FFmpegError, ValueError) as e:  # a frame unlike the others (its layout changed)
                self._log.info("WebRTC call from %s: a decoded frame dropped: %s", self.peer, e)
                resampler = None
                continue
            for out in resampled:
                self._speak.push(np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.int16))

    def read_speak(self) -> Frame | None:
        if self.state not in _MEDIA:
            return None
        return self._speak.pop()

    def write_listen(self, frame: Frame) -> None:
        listen = self._listen
        if self.state not in _MEDIA or listen is None or self._connection_state is None:
            return
        if self._connection_state[1] != "connected":
            return  # nothing sends yet: what would wait here is stale by the time it could
        if listen.rate != self.rate:  # (the call's rate is fixed at the answer: never in practice)
            frame = resample(frame, self.rate, listen.rate)
        listen.put(frame)

    def skip(self, frames: int) -> None:
        self._speak.skip(frames)
        if self._listen is not None:
            self._listen.gap(frames * self._listen.rate // 50)

    # --- digits ---------------------------------------------------------------------------------------

    def press(self, digits: str) -> None:
        """Keypad digits from the page, each a digit event for the call (as RFC 4733 events would be)."""
        keys = digits.upper()
        if not keys or len(keys) > MAX_PRESS_DIGITS or not set(keys) <= KEYPAD:
            raise WebRtcReject(f"dtmf: {digits[:40]!r} is not 1 to {MAX_PRESS_DIGITS} keypad digits (0-9 * # A-D)")
        call = self.call
        if call is None or self.ended:
            return
        for key in keys:
            call.loop.call_soon(call.on_dtmf, key, "event")

    async def send_dtmf(self, digit: str, duration: float) -> None:
        """A browser takes no telephone-events from us (aiortc sends none): the digit's tones, in the
        audio, as a phone line would carry them."""
        call = self.call
        if call is not None:
            await call.play_frames(dtmf_frames(digit, duration, call.rate))


def _prefer(transceiver: RTCRtpTransceiver, codecs: list[WebRtcCodec]) -> None:
    """Our codecs, in order, as the transceiver's preferences (aiortc's answer lists them so)."""
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    wanted = [cap for c in codecs for cap in capabilities if cap.mimeType.lower() == c.mime.lower()]
    transceiver.setCodecPreferences(wanted)
