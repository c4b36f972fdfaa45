"""A caller that reaches the engine through a proxy, as a phone behind Kamailio does: its INVITE goes
to the proxy, and its ACK and BYE follow the route set the 200 OK's Record-Route gives (RFC 3261
§12.1.2), to the Contact of the node that answered. It answers the BYE a node sends through the proxy.
Over UDP, or over one TCP connection to the proxy (which then relays to the node over UDP and
record-routes itself twice, once per transport). It sends no audio: a node records silence of the
call's length all the same."""

from __future__ import annotations

import random
import re
import socket
import time

from conftest import PATIENCE
from interop.peers import cseq_method, header, sdp_offer, status


def _uri(name_addr: str) -> str:
    m = re.search(r"<([^>]*)>", name_addr)
    return m.group(1) if m else name_addr.split(";")[0].strip()


class ProxiedCall:
    """One call placed to ``sip:<user>@127.0.0.1:<proxy_port>`` over UDP or TCP."""

    def __init__(
        self, proxy_port: int, user: str = "record", *, bye_delay: float = 0.0, transport: str = "udp"
    ) -> None:
        self.proxy = ("127.0.0.1", proxy_port)
        self.user = user
        self.transport = transport
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        if transport == "tcp":
            self.sock.connect(self.proxy)
        self.sock.settimeout(0.1)
        self._stream = b""  # TCP: what came that is not a whole message yet
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where the node's audio goes
        self.rtp.bind(("127.0.0.1", 0))
        self.local = int(self.sock.getsockname()[1])
        self.call_id = f"proxied-{random.getrandbits(48):x}@127.0.0.1"
        self.tag = f"c{random.getrandbits(32):x}"
        self.to_tag = ""
        self.route: list[str] = []  # the route set: the 200's Record-Route, reversed
        self.target = ""  # the answering node's Contact
        self.answered_after: float | None = None  # seconds from the INVITE to the 200 OK
        self.messages: list[str] = []
        self.bye_received = False
        #: How long this caller takes to answer the node's BYE (a slow phone, or the first answers lost).
        self.bye_delay = bye_delay
        self._bye: tuple[str, tuple[str, int], float] | None = None  # the BYE, where from, when to answer
        self.bye_answered = False

    @property
    def node(self) -> str:
        """host:port of the node that answered (its Contact)."""
        m = re.match(r"sips?:(?:[^@]*@)?([^;>]+)", self.target)
        return m.group(1) if m else ""

    def _send(self, lines: list[str], body: str = "", to: tuple[str, int] | None = None) -> None:
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        data = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
        if self.transport == "tcp":
            self.sock.sendall(data)  # everything goes to the proxy, on our connection
        else:
            self.sock.sendto(data, to or self.proxy)

    def _request(self, method: str, cseq: int, uri: str, body: str = "") -> None:
        to = f"<sip:{self.user}@127.0.0.1:{self.proxy[1]}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.local};branch=z9hG4bK{random.getrandbits(48):x};rport",
            f"From: <sip:caller@127.0.0.1>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@127.0.0.1:{self.local};transport={self.transport}>",
            "Max-Forwards: 70",
            *(f"Route: {r}" for r in self.route),
        ]
        self._send(lines, body)

    def _receive(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._answer_bye()
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                break
            for msg in self._messages(data):
                self._take(msg, addr or self.proxy)
        self._answer_bye()

    def _messages(self, data: bytes) -> list[str]:
        """The whole messages in what came: a datagram is one; a TCP stream is framed by Content-Length."""
        if self.transport == "udp":
            return [data.decode(errors="replace")]
        self._stream += data
        out = []
        while True:
            head, sep, rest = self._stream.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            size = int(length.group(1)) if length else 0
            if not sep or len(rest) < size:
                return out
            out.append((head + sep + rest[:size]).decode(errors="replace"))
            self._stream = rest[size:]

    def _take(self, msg: str, addr: tuple[str, int]) -> None:
        self.messages.append(msg)
        if msg.startswith("BYE "):
            self.bye_received = True
            if self._bye is None:
                self._bye = (msg, addr, time.monotonic() + self.bye_delay)
            elif self.bye_answered:
                self._reply(msg, addr)  # a retransmission gets the answer again

    def _answer_bye(self) -> None:
        if self._bye is not None and not self.bye_answered and time.monotonic() >= self._bye[2]:
            self._reply(self._bye[0], self._bye[1])
            self.bye_answered = True

    def _reply(self, request: str, addr: tuple[str, int]) -> None:
        """200 OK to a request (the node's BYE), back to the proxy it came through."""
        copied = [
            f"{name}: {value}" for name in ("Via", "From", "To", "Call-ID", "CSeq") for value in header(request, name)
        ]
        self._send(["SIP/2.0 200 OK", *copied], to=addr)

    def _responses(self, method: str) -> list[str]:
        return [m for m in self.messages if m.startswith("SIP/2.0") and cseq_method(m) == method]

    def invite(self, timeout: float = PATIENCE) -> int:
        """Send the INVITE and wait for its final answer (its status); a 200 is ACKed along the route set."""
        started = time.monotonic()
        offer = sdp_offer(int(self.rtp.getsockname()[1]))
        self._request("INVITE", 1, f"sip:{self.user}@127.0.0.1:{self.proxy[1]}", offer)
        while time.monotonic() - started < timeout:
            self._receive(0.1)
            finals = [m for m in self._responses("INVITE") if status(m) >= 200]
            if finals:
                break
        else:
            return 0
        final = finals[0]
        if status(final) != 200:
            return status(final)
        self.answered_after = time.monotonic() - started
        self.to_tag = re.search(r";tag=([^;>\s]+)", header(final, "To")[0]).group(1)  # type: ignore[union-attr]
        record_route = [r.strip() for value in header(final, "Record-Route") for r in value.split(",")]
        self.route = list(reversed(record_route))
        self.target = _uri(header(final, "Contact")[0])
        self._request("ACK", 1, self.target)
        return 200

    def hang_up(self, timeout: float = PATIENCE) -> int:
        """Our BYE along the route set; its answer's status (0: none)."""
        self._request("BYE", 2, self.target)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._receive(0.1)
            if answers := [status(m) for m in self._responses("BYE") if status(m) >= 200]:
                return answers[0]
        return 0

    def wait_bye(self, timeout: float = PATIENCE) -> bool:
        """Until the node's BYE has come and been answered (after ``bye_delay``)."""
        deadline = time.monotonic() + timeout
        while not self.bye_answered and time.monotonic() < deadline:
            self._receive(0.1)
        return self.bye_answered

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()
