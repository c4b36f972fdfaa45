"""The browser's side of a WebRTC call, in the test: an aiortc RTCPeerConnection with a microphone of its
own (a tone) that keeps what it hears.

ICE: aioice never gathers loopback (127.0.0.1), so the peers meet on this machine's other addresses
(eth0, 192.0.2.2 here) without naming them; a machine with only loopback cannot run these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import av
import dns.exception
import dns.flags
import dns.message
import numpy as np
from aioice.mdns import MDnsProtocol
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from conftest import PATIENCE, tone

#: What the browser's microphone sends.
MIC_HZ = 440.0


class Microphone(MediaStreamTrack):
    """The browser's microphone: a steady tone at 48 kHz, 20 ms a frame, paced by the loop's clock."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self._wave = tone(freq, 1.0, 48000, level=0.4)  # one second loops seamlessly: whole periods
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self._n * 0.02 - loop.time()))
        i = (self._n % 50) * 960
        frame = av.AudioFrame.from_ndarray(self._wave[i : i + 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.time_base = fractions.Fraction(1, 48000)
        frame.pts = self._n * 960
        self._n += 1
        return frame


@dataclass
class Browser:
    """The test's RTCPeerConnection in the browser's place: it offers (every candidate gathered), takes the
    transport's answer, and keeps what it hears as mono samples at the rate aiortc decodes to."""

    codecs: tuple[str, ...] = ()
    #: False: the answer never reaches the peer connection (a browser gone before it connects).
    takes_answer: bool = True
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    heard: list[np.ndarray] = field(default_factory=list)
    heard_rate: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)

    async def offer(self) -> str:
        transceiver = self.pc.addTransceiver(Microphone(MIC_HZ), direction="sendrecv")
        if self.codecs:
            caps = RTCRtpSender.getCapabilities("audio").codecs
            transceiver.setCodecPreferences([c for name in self.codecs for c in caps if c.mimeType == name])
        self.pc.on("track", lambda track: self.tasks.append(asyncio.ensure_future(self._listen(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            data = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
            self.heard_rate = frame.sample_rate
            self.heard.append(data)

    def signal(self, message: dict[str, Any]) -> None:
        """The signalling session's part: the answer goes to the browser's peer connection."""
        self.messages.append(message)
        if message["type"] == "answer" and self.takes_answer:
            answer = RTCSessionDescription(message["sdp"], "answer")
            self.tasks.append(asyncio.ensure_future(self.pc.setRemoteDescription(answer)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def close(self) -> None:
        await self.pc.close()


class BrowserNames(MDnsProtocol):
    """A browser's mDNS responder on the local link (its own socket on 5353, as a browser's is): it answers
    for the names it was given, and keeps every name it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        with contextlib.suppress(dns.exception.DNSException):
            message = dns.message.from_wire(cast(bytes, data))
            if not message.flags & dns.flags.QR:
                self.asked += [q.name.to_text(omit_final_dot=True) for q in message.question]
        super().datagram_received(data, addr)


async def browser_names() -> BrowserNames:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # beside the service's own mDNS socket
    sock.bind(("", 5353))
    _, names = await asyncio.get_running_loop().create_datagram_endpoint(BrowserNames, sock=sock)
    return names


@dataclass
class NamingBrowser(Browser):
    """A browser that hides its host addresses behind mDNS names (``<uuid>.local``, RFC 8828) and, as
    Firefox, answers for them only once it has the service's answer (when its ICE checks start)."""

    names: dict[str, str] = field(default_factory=dict)
    responder: BrowserNames | None = None

    async def offer(self) -> str:
        sdp = await super().offer()
        self.responder = await browser_names()
        lines = []
        for line in sdp.splitlines():
            fields = line.split(" ")
            if line.startswith("a=candidate:"):
                if ":" in fields[4]:
                    continue  # (IPv4 alone: the service's queries are for A records)
                fields[4] = self.names.setdefault(fields[4], f"{uuid.uuid4()}.local")
            lines.append(" ".join(fields))
        assert self.names, "the offer had an IPv4 host candidate to name"
        return "\r\n".join(lines) + "\r\n"

    def signal(self, message: dict[str, Any]) -> None:
        if message["type"] == "answer" and self.responder is not None:
            for address, name in self.names.items():
                self.tasks.append(asyncio.ensure_future(self.responder.publish(name, address)))
        super().signal(message)

    async def close(self) -> None:
        await super().close()
        if self.responder is not None:
            await self.responder.close()


async def wait_until(predicate: Callable[[], object], what: str = "what the test waits for") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not predicate():
        assert loop.time() < deadline, f"{what}: not within {PATIENCE:g} s"
        await asyncio.sleep(0.02)


@dataclass
class BeyondNatBrowser(Browser):
    """A browser behind a NAT of its own calling a service behind a one-to-one NAT (``nat``): the
    service's own addresses are private (out of this browser's reach), only the public one counts, and
    the service cannot reach the browser before the browser has reached it. Its offer keeps its IPv4
    candidates (the NAT is IPv4's)."""

    nat: Any = None  # (tests/webrtc/nat.py's Nat)

    async def offer(self) -> str:
        sdp = await super().offer()
        lines = [
            line for line in sdp.splitlines() if not (line.startswith("a=candidate:") and ":" in line.split(" ")[4])
        ]
        ports = [int(line.split(" ")[5]) for line in lines if line.startswith("a=candidate:")]
        assert ports, "the offer had an IPv4 candidate"
        self.nat.shield(ports)
        return "\r\n".join(lines) + "\r\n"

    def signal(self, message: dict[str, Any]) -> None:
        if message["type"] == "answer":
            public = self.nat.public
            kept = [
                line
                for line in message["sdp"].split("\r\n")
                if not line.startswith("a=candidate:") or line.split(" ")[4] == public
            ]
            message = {**message, "sdp": "\r\n".join(kept)}
        super().signal(message)
