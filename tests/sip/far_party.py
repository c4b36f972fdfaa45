"""A far party on loopback for the calls the engine places (tests/sip/test_outbound*.py), and the service
those tests run in their own event loop.

:class:`FarParty` is a SIP UAS on a UDP socket: it answers each new INVITE with the steps it is given
(``180``, ``183`` with SDP, ``200`` with SDP, ``486`` ...), challenges it first when given credentials,
takes CANCEL (487), ACK and BYE, and can send BYE or a re-INVITE itself. Once its SDP is out it sends a
tone over RTP (20 ms packets) to the address the engine's offer names, and keeps what the engine sends
it (audio by payload type, RFC 4733 digits). It reads and writes SIP with the engine's own message.py
(the interop tests put sipp there instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import tone
from swml_engine.media.frame import Frame
from swml_engine.service import server
from swml_engine.service.server import Service, ServiceConfig
from swml_engine.transports.sip.auth import DigestChallenge, Verdict
from swml_engine.transports.sip.codecs import SUPPORTED, Codec
from swml_engine.transports.sip.dtmf import EVENTS, encode_event
from swml_engine.transports.sip.endpoint import StreamFramer
from swml_engine.transports.sip.message import Headers, Request, Response, parse_message, response_to
from swml_engine.transports.sip.rtp import RtpPacket, parse_rtp
from swml_engine.transports.sip.sdp import parse_offer

#: RTP ports of the in-process services (apart from the interop engines' 41000-41999).
SERVICE_RTP = (42000, 42999)
#: The payload type our far party gives telephone-event.
EVENT_PT = 101


@dataclass(frozen=True)
class Step:
    """One answer to the INVITE: ``status`` after ``delay`` seconds, with our SDP when ``sdp``."""

    status: int
    sdp: bool = False
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""


RING_ANSWER = (Step(180), Step(200, sdp=True, delay=0.2))


class FarParty(asyncio.DatagramProtocol):
    """See the module docstring. ``credentials``: (user, password) a 407 asks for; ``silent``: send no RTP."""

    def __init__(
        self,
        steps: Sequence[Step] = RING_ANSWER,
        *,
        codec: str = "PCMU",
        freq: float = 1000.0,
        credentials: tuple[str, str] | None = None,
        telephone_event: bool = True,
        silent: bool = False,
        audio: np.ndarray | None = None,
        transport: str = "udp",
    ) -> None:
        self.steps = tuple(steps)
        self.codec_name = codec
        self.info = SUPPORTED[codec]
        self.freq = freq
        self.credentials = credentials
        self.telephone_event = telephone_event
        self.silent = silent
        #: What it says, looped (at the codec's rate): a tone of ``freq`` unless given.
        self.audio = audio if audio is not None else tone(freq, 2.0, self.info.rate)
        self.challenge = DigestChallenge("far.test", proxy=True)
        self.transport = transport
        self.sip: asyncio.DatagramTransport | None = None
        #: Over TCP: our listener, and the connection the engine opened to it.
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0
        self.closed_by_engine = False
        self.rtp: asyncio.DatagramTransport | None = None
        self.port = 0
        self.rtp_port = 0
        #: Every request that came (retransmissions too), and every response we sent.
        self.requests: list[Request] = []
        self.sent: list[Response] = []
        #: The engine's answers to our own requests.
        self.responses: list[Response] = []
        self.invite: Request | None = None
        self.engine: tuple[str, int] = ("", 0)
        self.engine_rtp: tuple[str, int] | None = None
        self.tag = f"far{random.getrandbits(32):x}"
        self.answered = asyncio.Event()
        self.acked = asyncio.Event()
        self.bye = asyncio.Event()
        self.cancelled = asyncio.Event()
        #: What the engine sent over RTP: (payload type, payload), in arrival order.
        self.heard: list[tuple[int, bytes]] = []
        #: The engine's RFC 4733 packets: (RTP timestamp, payload); one timestamp per event.
        self.event_packets: list[tuple[int, bytes]] = []
        #: Our RTP timeline (sequence number, timestamp), kept across pauses as a phone keeps it.
        self._seq, self._ts = 100, 1000
        self._paused_at: float | None = None
        #: Packets of ours still to be lost on the way (lose()).
        self._lose = 0
        #: Pairs of our packets still to arrive swapped (reorder()), and the one held back meanwhile.
        self._swap = 0
        self._held: bytes | None = None
        self._sender: asyncio.Task[None] | None = None
        self._pending: list[asyncio.TimerHandle] = []
        self._cseq = itertools.count(1)
        #: Our INVITEs sent without SDP (their 2xx holds the engine's offer; our ACK, the answer).
        self._offerless: set[int] = set()

    # --- sockets ------------------------------------------------------------------------------------

    async def start(self) -> FarParty:
        """Open its sockets (once)."""
        if self.port:
            return self
        loop = asyncio.get_running_loop()
        if self.transport == "tcp":
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = int(self._server.sockets[0].getsockname()[1])
        else:
            self.sip, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
            self.port = int(self.sip.get_extra_info("sockname")[1])
        self.rtp, _ = await loop.create_datagram_endpoint(lambda: _Rtp(self), local_addr=("127.0.0.1", 0))
        self.rtp_port = int(self.rtp.get_extra_info("sockname")[1])
        return self

    async def __aenter__(self) -> FarParty:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def uri(self) -> str:
        tail = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:bob@127.0.0.1:{self.port}{tail}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writer = writer
        framer = StreamFramer()
        peer = writer.get_extra_info("peername")
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    self.datagram_received(message, (str(peer[0]), int(peer[1])))
        self.closed_by_engine = True

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        if self._sender is not None:
            self._sender.cancel()
        for t in (self.sip, self.rtp):
            if t is not None:
                t.close()
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Request):
            self.requests.append(message)
            self._on_request(message, (str(addr[0]), int(addr[1])))
        else:
            self._on_response(message)

    def _on_response(self, response: Response) -> None:
        """The engine's answer to a request of ours: kept; a 2xx to our (re-)INVITE gets its ACK (each
        retransmission too), as a phone sends it."""
        self.responses.append(response)
        if response.cseq.method == "INVITE" and 200 <= response.status < 300:
            # our answer goes in the ACK when the INVITE had no offer (the 2xx carries the engine's)
            body = self.sdp() if response.cseq.number in self._offerless else ""
            self._send(self.in_dialog("ACK", response.cseq.number, body=body))

    def answers_to(self, request: Request) -> list[Response]:
        """The engine's final answers to a request of ours."""
        return [
            r
            for r in self.responses
            if r.status >= 200 and r.cseq.number == request.cseq.number and r.cseq.method == request.method
        ]

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    # --- SIP ----------------------------------------------------------------------------------------

    def _on_request(self, request: Request, addr: tuple[str, int]) -> None:
        method = request.method
        if method == "INVITE" and request.to.tag is None:
            self._invited(request, addr)
        elif method == "INVITE":  # a re-INVITE (a session refresh, say): our answer again
            self._respond(request, 200, sdp=True)
        elif method == "ACK":
            if self.answered.is_set() and request.cseq.number == (self.invite.cseq.number if self.invite else -1):
                self.acked.set()
        elif method == "CANCEL":
            self._respond(request, 200)
            if self.invite is not None and not self.answered.is_set():
                for handle in self._pending:
                    handle.cancel()
                self._respond(self.invite, 487)
            self.cancelled.set()
        elif method == "BYE":
            self._respond(request, 200)
            self.stop_rtp()
            self.bye.set()
        else:
            self._respond(request, 405)

    def _invited(self, request: Request, addr: tuple[str, int]) -> None:
        if self.invite is not None and request.cseq.number == self.invite.cseq.number:
            return  # a retransmission
        self.engine = addr
        if self.credentials is not None:
            verdict = self.challenge.verify(request, *self.credentials, 0.0)
            if verdict is not Verdict.ACCEPTED:
                self.invite = request
                self._respond(request, 407, headers=tuple(self.challenge.headers(0.0)))
                return
        self.invite = request
        offer = parse_offer(request.text)
        self.engine_rtp = offer.remote
        loop = asyncio.get_running_loop()
        for step in self.steps:
            self._pending.append(loop.call_later(step.delay, self._step, request, step))

    def _step(self, request: Request, step: Step) -> None:
        if self.cancelled.is_set() or self.bye.is_set():
            return
        self._respond(request, step.status, sdp=step.sdp, headers=step.headers, reason=step.reason)
        if step.sdp and not self.silent and self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_tone())
        if 200 <= step.status < 300:
            self.answered.set()

    def _respond(
        self,
        request: Request,
        status: int,
        *,
        sdp: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
        reason: str = "",
    ) -> None:
        extra = [*headers]
        if 100 < status < 300:
            extra.append(("Contact", f"<{self.uri}>"))
        body = self.sdp().encode() if sdp else b""
        if body:
            extra.append(("Content-Type", "application/sdp"))
        tag = None if status == 100 else self.tag
        response = response_to(request, status, reason, to_tag=tag, headers=extra, body=body)
        self.sent.append(response)
        self._send(response)

    def _send(self, message: Request | Response) -> None:
        if self._writer is not None:
            self._writer.write(message.encode())
            return
        assert self.sip is not None
        self.sip.sendto(message.encode(), self.engine)

    def sdp(self, direction: str = "sendrecv") -> str:
        pt = self.info.static_pt
        events = f" {EVENT_PT}" if self.telephone_event else ""
        lines = [
            "v=0",
            "o=far 1 1 IN IP4 127.0.0.1",
            "s=-",
            "c=IN IP4 127.0.0.1",
            "t=0 0",
            f"m=audio {self.rtp_port} RTP/AVP {pt}{events}",
            f"a=rtpmap:{pt} {self.codec_name}/8000",
        ]
        if self.telephone_event:
            lines += [f"a=rtpmap:{EVENT_PT} telephone-event/8000", f"a=fmtp:{EVENT_PT} 0-15"]
        lines.append(f"a={direction}")
        return "\r\n".join(lines) + "\r\n"

    def request(self, method: str, *, body: str = "", headers: tuple[tuple[str, str], ...] = ()) -> Request:
        """A request of ours in the dialog (to the engine's Contact), sent."""
        request = self.in_dialog(method, next(self._cseq), body=body, headers=headers)
        if method == "INVITE" and not body:
            self._offerless.add(request.cseq.number)
        self._send(request)
        return request

    #: The hop count of our requests (a caller's INVITE that came through proxies has less than 70).
    max_forwards = 70

    def in_dialog(
        self, method: str, cseq: int, *, body: str = "", headers: tuple[tuple[str, str], ...] = ()
    ) -> Request:
        """A request in the dialog, not sent; ``cseq`` its number (an ACK takes its INVITE's)."""
        target, ours, theirs, call_id = self._dialog()
        lines = Headers(
            [
                (
                    "Via",
                    f"SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.port};branch=z9hG4bK-far-{random.getrandbits(40):x}",
                ),
                ("Max-Forwards", str(self.max_forwards)),
                ("From", ours),
                ("To", theirs),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Contact", f"<{self.uri}>"),
                *headers,
            ]
        )
        if body:
            lines.add("Content-Type", "application/sdp")
        return Request(method=method, uri=target, headers=lines, body=body.encode())

    def _dialog(self) -> tuple[str, str, str, str]:
        """The dialog's request target (the engine's Contact), our From, its To, and the Call-ID."""
        invite = self.invite
        assert invite is not None
        ours = f"{invite.headers.get('to')};tag={self.tag}"
        return str(invite.contacts()[0].uri), ours, invite.headers.get("from") or "", invite.call_id

    def hang_up(self) -> None:
        self.stop_rtp()
        self.request("BYE")

    # --- RTP ----------------------------------------------------------------------------------------

    async def _send_tone(self) -> None:
        codec: Codec = self.info.factory()
        rate = self.info.rate
        audio = self.audio
        n = rate // 50
        ssrc = 0x5151
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in itertools.count():
            to = self.engine_rtp
            if to is not None and self.rtp is not None:
                k = i % (len(audio) // n)
                payload = codec.encode(np.ascontiguousarray(audio[k * n : (k + 1) * n]))
                if self._lose > 0:  # lost on the way: its sequence number and time are gone with it
                    self._lose -= 1
                else:
                    packet = RtpPacket(self.info.static_pt, self._seq & 0xFFFF, self._ts, ssrc, payload).serialize()
                    if self._held is not None:  # the later one first, then the one held back
                        self.rtp.sendto(packet, to)
                        packet, self._held = self._held, None
                    elif self._swap > 0:
                        self._swap -= 1
                        self._held, packet = packet, b""
                    if packet:
                        self.rtp.sendto(packet, to)
                self._seq += 1
            self._ts += codec.timestamp_units(n)
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))

    def stop_rtp(self) -> None:
        """Go silent (a far end that died, or hung up, or holds with ``inactive``)."""
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
            self._paused_at = asyncio.get_running_loop().time()
        self.silent = True

    def resume_rtp(self) -> None:
        """Send again after :meth:`stop_rtp` (off hold): the same stream, its timestamps past the pause
        (the timeline runs on through it, as a phone's)."""
        self.silent = False
        if self._sender is not None:
            return
        loop = asyncio.get_running_loop()
        if self._paused_at is not None:
            paused = loop.time() - self._paused_at
            self._ts += self.info.factory().timestamp_units(round(paused * self.info.rate))
            self._paused_at = None
        self._sender = loop.create_task(self._send_tone())

    def lose(self, packets: int) -> None:
        """The next ``packets`` of our audio are lost on the way (never sent)."""
        self._lose = packets

    def reorder(self, pairs: int) -> None:
        """The next ``pairs`` pairs of our packets arrive swapped (the second 20 ms before the first)."""
        self._swap = pairs

    def use_codec(self, codec: str) -> None:
        """Speak ``codec`` from now on (our tone at its rate; the same stream, its timeline going on), as
        after a re-INVITE that changes it; our SDP offers it alone."""
        self.codec_name, self.info = codec, SUPPORTED[codec]
        self.audio = tone(self.freq, 2.0, self.info.rate)
        if self._sender is not None:
            self.stop_rtp()
            self.resume_rtp()

    async def move_rtp(self) -> None:
        """Take a new RTP port (send and receive there from now on); the old one is closed. The SDP we
        send next (:meth:`sdp`) names it."""
        old = self.rtp
        self.rtp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Rtp(self), local_addr=("127.0.0.1", 0)
        )
        self.rtp_port = int(self.rtp.get_extra_info("sockname")[1])
        if old is not None:
            old.close()

    def send_digit(self, digit: str) -> None:
        """One RFC 4733 digit (start, then the end packet three times), beside the tone."""
        assert self.rtp is not None and self.engine_rtp is not None
        code = EVENTS.index(digit)
        ts, ssrc = random.getrandbits(31), 0x7777
        packets = [encode_event(code, False, 400), encode_event(code, False, 800)] + [
            encode_event(code, True, 1200)
        ] * 3
        for seq, payload in enumerate(packets):
            self.rtp.sendto(RtpPacket(EVENT_PT, 500 + seq, ts, ssrc, payload, seq == 0).serialize(), self.engine_rtp)

    def heard_audio(self, since: int = 0) -> np.ndarray:
        """The audio the engine sent in our codec, in arrival order (from ``heard[since]`` on)."""
        codec: Codec = self.info.factory()
        chunks = [codec.decode(p) for pt, p in self.heard[since:] if pt == self.info.static_pt]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def heard_digits(self) -> list[int]:
        """The telephone-event codes the engine sent, once per event (by its end packets)."""
        codes: list[int] = []
        for pt, payload in self.heard:
            if pt == EVENT_PT and payload[1] & 0x80 and (not codes or codes[-1] != payload[0]):
                codes.append(payload[0])
        return codes

    def digit_events(self) -> list[str]:
        """The digits of the engine's RFC 4733 events, one per event (its timestamp) however many of its
        packets came: a digit the engine sent twice shows twice."""
        ends: dict[int, int] = {}
        for ts, payload in self.event_packets:
            if payload[1] & 0x80:
                ends.setdefault(ts, payload[0])
        return [EVENTS[code] for code in ends.values() if code < len(EVENTS)]


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self, party: FarParty) -> None:
        self.party = party

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = parse_rtp(data)
        if packet is not None:
            self.party.heard.append((packet.payload_type, packet.payload))
            if packet.payload_type == EVENT_PT and len(packet.payload) >= 4:
                self.party.event_packets.append((packet.timestamp, packet.payload))


# --- the service, in the test's own loop --------------------------------------------------------------------

HANG_UP = "version: 1.0.0\nsections:\n  main:\n    - hangup\n"


@contextlib.asynccontextmanager
async def running_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script_text: str = HANG_UP, **config: Any
) -> AsyncIterator[Service]:
    """``swml serve`` in this event loop (its dialer is what the tests drive; ``script_text`` is what its
    callers run), stopped at the end. The stop leaves the process's status-callback pool as it is: other
    tests in this process still use it."""
    monkeypatch.setattr(server.callbacks, "shutdown", lambda timeout: 0)
    script = tmp_path / "script.yaml"
    script.write_text(script_text)
    # No overload guard (max_lag 0): on a machine busy with other tests the media may run late, and the
    # dialer would refuse to place the legs these tests are about.
    config = {"max_lag": 0.0, **config}
    service = Service(
        ServiceConfig(sip=("127.0.0.1", 0), script=script, data=tmp_path / "data", rtp_ports=SERVICE_RTP, **config)
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop(grace=2)


class Heard:
    """A tap on a far leg's call: the frames its transport read (what the far party said), in order."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def on_frame(self, speak: Frame, listen: Frame) -> None:
        self.frames.append(speak)

    def audio(self, last: float | None = None) -> np.ndarray:
        frames = self.frames[-round(last * 50) :] if last else self.frames
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


async def until(predicate: Any, timeout: float = 20.0) -> bool:
    """Poll ``predicate()`` until true (True) or ``timeout`` seconds pass (False): generous, for a busy machine."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())
