"""What a caller on the SIP port may try against a real `swml serve` (docs/security.md, *The SIP port*,
*Calls the engine places*): guessing the password of `answer.username`/`password`, an INVITE from a
forged source, bytes of its SIP headers that a document copies into `connect`. Plain SIP over UDP on
loopback, from a caller of a few lines whose digest answers come from the engine's own client code."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interop.peers import Engine, engines, wait_for
from swml_engine.transports.sip.auth import authorization, parse_challenge

SCRIPT = (
    "version: 1.0.0\nsections:\n  main:\n    - answer: {username: alice, password: 'right-password'}\n    - hangup\n"
)
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    with engines(tmp_path) as start:
        yield start


def _header(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.split("\r\n") if line.lower().startswith(name + ":"))


class Caller:
    """One call's requests from a UDP socket of its own (``source``: the address it binds)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(20)
        self.port, self.source = port, source
        self.here = f"{source}:{self.sock.getsockname()[1]}"
        self.uri, self.call_id, self.tag = f"sip:service@127.0.0.1:{port}", uuid.uuid4().hex, uuid.uuid4().hex[:8]

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def _send(self, text: str) -> None:
        self.sock.sendto(text.encode("latin-1"), ("127.0.0.1", self.port))

    def invite(self, cseq: int, extra: str = "", sdp: str = SDP) -> None:
        """``extra``: header lines (each ending in CRLF) after the usual ones."""
        self._send(
            f"INVITE {self.uri} SIP/2.0\r\nVia: SIP/2.0/UDP {self.here};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:alice@{self.source}>;tag={self.tag}\r\nTo: <{self.uri}>\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@{self.here}>\r\nMax-Forwards: 70\r\n{extra}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )

    def final(self) -> tuple[int, str]:
        """The next final response: its status and text."""
        while True:
            text = self.sock.recv(65535).decode()
            status = int(text.split(" ", 2)[1])
            if status >= 200:
                return status, text

    def ack(self, answer: str, cseq: int) -> None:
        """The ACK of a final answer (of an error: in its INVITE's transaction; of a 2xx: a new one)."""
        ok = answer.startswith("SIP/2.0 2")
        via = f"SIP/2.0/UDP {self.here};branch=z9hG4bK{uuid.uuid4().hex}" if ok else _header(answer, "via")
        self._send(
            f"ACK {self.uri} SIP/2.0\r\nVia: {via}\r\nFrom: <sip:alice@{self.source}>;tag={self.tag}\r\n"
            f"To: {_header(answer, 'to')}\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} ACK\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )


def dial_with_password(port: int, password: str, source: str = "127.0.0.1") -> int:
    """A call that answers the engine's 401 with ``password``; the final status of the INVITE with it."""
    with Caller(port, source) as caller:
        caller.invite(1)
        status, text = caller.final()
        assert status == 401, text
        caller.ack(text, 1)
        challenge = parse_challenge(_header(text, "www-authenticate"))
        answer = authorization(challenge, "INVITE", caller.uri, "alice", password, cnonce="c0ffee")
        caller.invite(2, f"Authorization: {answer}\r\n")
        status, text = caller.final()
        caller.ack(text, 2)
        return status


def test_guessing_a_callers_password_is_limited_per_address(engine: Callable[..., Engine]) -> None:
    """Each call could guess answer.password once, and nothing limited the calls: a guesser from one
    address could try a dictionary at the rate the service took calls. Now 10 wrong passwords a minute
    from one address, then even the right one gets 403 there (unchecked) while other addresses call on."""
    eng = engine(SCRIPT)
    assert [dial_with_password(eng.port, f"guess-{i}") for i in range(10)] == [403] * 10
    assert dial_with_password(eng.port, "right-password") == 403
    assert wait_for(lambda: "too many wrong passwords from 127.0.0.1" in eng.log(), 20)  # (logged after the 403)
    assert dial_with_password(eng.port, "right-password", source="127.0.0.2") == 200


PLAYS = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: silence:20\n"


def test_no_audio_goes_to_an_invite_that_is_never_acked(engine: Callable[..., Engine]) -> None:
    """An INVITE whose source was forged is answered 200 to the forged source, which sends no ACK: the
    call's audio went to its SDP's address anyway, 1500 packets (250 KB) for one datagram of 300 bytes —
    a reflector aimed at anyone. Now nothing is sent after the answer until the ACK (or the caller's
    RTP) comes: then the audio flows."""
    eng = engine(PLAYS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media, Caller(eng.port) as caller:
        media.bind(("127.0.0.1", 0))
        media.settimeout(2)
        caller.invite(1, sdp=SDP.replace("m=audio 9 ", f"m=audio {media.getsockname()[1]} "))
        status, ok = caller.final()
        assert status == 200
        with pytest.raises(TimeoutError):  # 2 s of the call's audio, and not a packet of it here
            media.recv(2048)
        caller.ack(ok, 1)
        assert len(media.recv(2048)) > 12  # the ACK came: the audio flows


def test_a_callers_control_bytes_copied_into_connect_to_do_not_reach_the_invite(
    engine: Callable[..., Engine],
) -> None:
    """A document that dials `sip:${call.headers[7].value}@...` (the caller's X-Agent) sent the caller's
    control bytes — an ANSI escape for the far end's log viewer, a DEL — raw into the INVITE's
    Request-URI and To. Now such a `to` fails its leg (`error`, as `from` and `headers` already did)
    and nothing is sent; a clean value is dialled as before."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as far:
        far.bind(("127.0.0.1", 0))
        far.settimeout(20)
        to = f"sip:${{call.headers[7].value}}@127.0.0.1:{far.getsockname()[1]}"
        eng = engine(f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - connect: {{to: '{to}'}}\n    - hangup\n")
        for agent in ("a\x1b[31mb\x7f", "agent"):  # the second call's INVITE is the first the far end gets
            with Caller(eng.port) as caller:
                caller.invite(1, f"X-Agent: {agent}\r\n")  # (the 8th header: call.headers[7])
                status, ok = caller.final()
                assert status == 200
                caller.ack(ok, 1)
        assert far.recv(65535).startswith(f"INVITE sip:agent@127.0.0.1:{far.getsockname()[1]} ".encode())

    def refused() -> list[dict[str, object]]:
        return [e for c in eng.call_events() for e in c if e["type"] == "connect.leg" and e.get("reason") == "error"]

    assert wait_for(lambda: bool(refused()), 20)
    assert "control character" in str(refused()[0]["text"])
