"""What a caller on the SIP port may try against a real `swml serve` (docs/security.md, *The SIP port*):
guessing the password of `answer.username`/`password`. Plain SIP over UDP on loopback, from a client of
a few lines whose digest answers come from the engine's own client code."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interop.peers import Engine, engines
from swml_engine.transports.sip.auth import authorization, parse_challenge

SCRIPT = (
    "version: 1.0.0\nsections:\n  main:\n    - answer: {username: alice, password: 'right-password'}\n    - hangup\n"
)
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    with engines(tmp_path) as start:
        yield start


def _final(sock: socket.socket) -> tuple[int, str]:
    """The next final response on ``sock``: its status and text."""
    while True:
        text = sock.recv(65535).decode()
        status = int(text.split(" ", 2)[1])
        if status >= 200:
            return status, text


def _header(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.split("\r\n") if line.lower().startswith(name + ":"))


def dial_with_password(port: int, password: str, source: str = "127.0.0.1") -> int:
    """A call that answers the engine's 401 with ``password``; the final status of the INVITE with it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(20)
        here = f"{source}:{sock.getsockname()[1]}"
        uri, call_id, tag = f"sip:service@127.0.0.1:{port}", uuid.uuid4().hex, uuid.uuid4().hex[:8]

        def invite(cseq: int, extra: str = "") -> None:
            sock.sendto(
                (
                    f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {here};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"From: <sip:alice@{source}>;tag={tag}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\n"
                    f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@{here}>\r\nMax-Forwards: 70\r\n{extra}"
                    f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
                ).encode(),
                ("127.0.0.1", port),
            )

        def ack(text: str, cseq: int) -> None:  # (a final error's ACK: the same branch as its INVITE)
            via, to = _header(text, "via"), _header(text, "to")
            sock.sendto(
                f"ACK {uri} SIP/2.0\r\nVia: {via}\r\nFrom: <sip:alice@{source}>;tag={tag}\r\nTo: {to}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode(),
                ("127.0.0.1", port),
            )

        invite(1)
        status, text = _final(sock)
        assert status == 401, text
        ack(text, 1)
        answer = authorization(
            parse_challenge(_header(text, "www-authenticate")), "INVITE", uri, "alice", password, cnonce="c0ffee"
        )
        invite(2, f"Authorization: {answer}\r\n")
        status, text = _final(sock)
        ack(text, 2)
        return status


def test_guessing_a_callers_password_is_limited_per_address(engine: Callable[..., Engine]) -> None:
    """Each call could guess answer.password once, and nothing limited the calls: a guesser from one
    address could try a dictionary at the rate the service took calls. Now 10 wrong passwords a minute
    from one address, then even the right one gets 403 there (unchecked) while other addresses call on."""
    eng = engine(SCRIPT)
    assert [dial_with_password(eng.port, f"guess-{i}") for i in range(10)] == [403] * 10
    assert dial_with_password(eng.port, "right-password") == 403
    assert "too many wrong passwords from 127.0.0.1" in eng.log()
    assert dial_with_password(eng.port, "right-password", source="127.0.0.2") == 200


PLAYS = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: silence:20\n"


def test_no_audio_goes_to_an_invite_that_is_never_acked(engine: Callable[..., Engine]) -> None:
    """An INVITE whose source was forged is answered 200 to the forged source, which sends no ACK: the
    call's audio went to its SDP's address anyway, 1500 packets (250 KB) for one datagram of 300 bytes —
    a reflector aimed at anyone. Now nothing is sent after the answer until the ACK (or the caller's
    RTP) comes: then the audio flows."""
    eng = engine(PLAYS)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        media.bind(("127.0.0.1", 0))
        media.settimeout(2)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(20)
        here, uri, call_id = f"127.0.0.1:{sock.getsockname()[1]}", f"sip:service@127.0.0.1:{eng.port}", uuid.uuid4().hex
        sdp = SDP.replace("m=audio 9 ", f"m=audio {media.getsockname()[1]} ")
        sock.sendto(
            (
                f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {here};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:alice@{here}>\r\nMax-Forwards: 70\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
            ).encode(),
            ("127.0.0.1", eng.port),
        )
        status, ok = _final(sock)
        assert status == 200
        with pytest.raises(TimeoutError):  # 2 s of the call's audio, and not a packet of it here
            media.recv(2048)
        sock.sendto(
            f"ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {here};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: {_header(ok, 'to')}\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode(),
            ("127.0.0.1", eng.port),
        )
        assert len(media.recv(2048)) > 12  # the ACK came: the audio flows
