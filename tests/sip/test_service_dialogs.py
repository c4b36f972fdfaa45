"""Dialogs as RFC 3261 has them, against `swml serve` with our own SIP peer on loopback: the address we
advertise, TCP dialogs, route sets, host names, one final answer per INVITE and its retransmission until
the ACK. (The same rules, socket-free, are the core's tests: test_useragent.py, test_dialog.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable

from conftest import HttpServer
from interop.peers import (
    PATIENCE,
    Engine,
    SipPeer,
    free_port,
    header,
    listen_udp,
    sdp_offer,
    to_tag,
    wait_datagram,
    wait_for,
)

EngineFactory = Callable[..., Engine]

ANSWER_THEN_HANG_UP = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - sleep: {ms}\n    - hangup\n"


def answered(peer: SipPeer, rtp_port: int = 31400, **kw: object) -> str:
    """INVITE, then the 200 OK's To tag once it comes (ACKed)."""
    peer.request("INVITE", 1, body=sdp_offer(rtp_port), **kw)  # type: ignore[arg-type]
    assert peer.wait(lambda: 200 in peer.statuses("INVITE")), peer.messages
    tag = to_tag(peer.final())
    peer.request("ACK", 1, to_tag=tag)
    return tag


def sdp_lines(msg: str, kind: str) -> list[str]:
    return [line for line in msg.split("\r\n\r\n", 1)[1].split("\r\n") if line.startswith(kind)]


# --- what the engine advertises ---------------------------------------------------------------------


def test_advertise_overrides_contact_and_sdp(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300), "--advertise", "192.0.2.7", host="0.0.0.0")
    peer = SipPeer(eng.port)
    try:
        answered(peer)
        ok = peer.final()
        assert header(ok, "Contact") == [f"<sip:192.0.2.7:{eng.port}>"]
        assert sdp_lines(ok, "c=") == ["c=IN IP4 192.0.2.7"] and sdp_lines(ok, "o=")[0].endswith(" 192.0.2.7")
    finally:
        peer.close()
    help_text = subprocess.run(
        [sys.executable, "-m", "swml_engine", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--advertise HOST" in help_text


def test_dual_stack_wildcard_gives_an_ipv4_caller_its_ipv4_address(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300), host="::")
    contact, contact_port = listen_udp()
    peer = SipPeer(eng.port)
    try:
        answered(peer, contact=f"<sip:peer@127.0.0.1:{contact_port}>")
        ok = peer.final()
        assert header(ok, "Contact") == [f"<sip:127.0.0.1:{eng.port}>"] and sdp_lines(ok, "c=") == [
            "c=IN IP4 127.0.0.1"
        ]
        bye = wait_datagram(contact, PATIENCE, "BYE ")  # sent from the dual-stack socket to ::ffff:127.0.0.1
        assert bye is not None and f"Via: SIP/2.0/UDP 127.0.0.1:{eng.port}" in bye, eng.log()[-2000:]
    finally:
        peer.close()
        contact.close()


# --- P1-2: TCP dialogs -------------------------------------------------------------------------------------


def test_tcp_contact_says_tcp_and_a_bye_over_udp_finds_the_dialog(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=20000))
    peer = SipPeer(eng.port, "tcp")
    try:
        tag = answered(peer)
        assert header(peer.final(), "Contact") == [f"<sip:127.0.0.1:{eng.port};transport=tcp>"]
        # a client that sends its BYE over UDP all the same (another socket, same dialog)
        udp = SipPeer(eng.port, "udp", call_id=peer.call_id)
        udp.tag = peer.tag
        udp.request("BYE", 2, to_tag=tag)
        assert udp.wait(lambda: bool(udp.statuses("BYE")))
        udp.close()
        assert udp.statuses("BYE") == [200]
    finally:
        peer.close()
    eng.wait_idle()
    ended = [e for e in eng.call_events()[0] if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended[0]["reason"] == "remote_hangup"


def test_engine_bye_over_tcp_opens_a_connection_when_the_callers_is_closed(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=1500))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(PATIENCE)
    contact_port = listener.getsockname()[1]
    peer = SipPeer(eng.port, "tcp")
    try:
        answered(peer, contact=f"<sip:peer@127.0.0.1:{contact_port};transport=tcp>")
        peer.close()  # the caller closes its connection; the engine hangs up later
        conn, _ = listener.accept()
        conn.settimeout(PATIENCE)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65535)
        bye = data.decode()
        assert bye.startswith("BYE sip:peer@127.0.0.1:") and "SIP/2.0/TCP" in bye, bye
        via = header(bye, "Via")[0]
        ok = [
            "SIP/2.0 200 OK",
            f"Via: {via}",
            *(f"{h}: {header(bye, h)[0]}" for h in ("From", "To", "Call-ID", "CSeq")),
            "Content-Length: 0",
        ]
        conn.sendall(("\r\n".join(ok) + "\r\n\r\n").encode())
        time.sleep(0.3)
        conn.close()
    finally:
        listener.close()
    assert "not sent" not in eng.log()


# --- P1-3: host names --------------------------------------------------------------------------------------


def test_bye_to_a_contact_host_name_is_resolved_and_sent(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300))
    contact, contact_port = listen_udp()
    peer = SipPeer(eng.port)
    try:
        answered(peer, contact=f"<sip:peer@localhost:{contact_port}>")
        bye = wait_datagram(contact, PATIENCE, "BYE ")
        assert bye is not None and bye.startswith(f"BYE sip:peer@localhost:{contact_port} SIP/2.0"), eng.log()[-2000:]
    finally:
        peer.close()
        contact.close()


def test_bye_to_an_unresolvable_contact_is_logged(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=200))
    peer = SipPeer(eng.port)
    try:
        answered(peer, contact="<sip:peer@no-such-host.invalid:5060>")
        assert wait_for(lambda: "BYE for" in eng.log(), PATIENCE), eng.log()[-2000:]
    finally:
        peer.close()
    line = next(x for x in eng.log().splitlines() if "BYE for" in x)
    assert peer.call_id in line and "no-such-host.invalid" in line and "not sent" in line


# --- P1-4: Record-Route -----------------------------------------------------------------------------------


def test_record_route_is_copied_and_our_bye_goes_to_the_nearest_proxy(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300))
    near, near_port = listen_udp()
    far, far_port = listen_udp()
    contact, contact_port = listen_udp()
    routes = f"<sip:127.0.0.1:{near_port};lr>, <sip:127.0.0.1:{far_port};lr;ftag=x>"
    peer = SipPeer(eng.port)
    try:
        answered(peer, headers=(f"Record-Route: {routes}",), contact=f"<sip:peer@127.0.0.1:{contact_port}>")
        assert ", ".join(header(peer.final(), "Record-Route")) == routes  # in order, one line or several
        bye = wait_datagram(near, PATIENCE, "BYE ")
        assert bye is not None, eng.log()[-2000:]
        assert bye.startswith(f"BYE sip:peer@127.0.0.1:{contact_port} SIP/2.0")
        assert header(bye, "Route") == [f"<sip:127.0.0.1:{near_port};lr>", f"<sip:127.0.0.1:{far_port};lr;ftag=x>"]
        assert wait_datagram(far, 0.3) is None and wait_datagram(contact, 0.3) is None
    finally:
        for s in (near, far, contact):
            s.close()
        peer.close()


def test_strict_router_gets_the_bye_with_its_uri_as_request_uri(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300))
    proxy, proxy_port = listen_udp()
    contact_port = free_port()
    peer = SipPeer(eng.port)
    try:
        answered(
            peer,
            headers=(f"Record-Route: <sip:127.0.0.1:{proxy_port}>",),
            contact=f"<sip:peer@127.0.0.1:{contact_port}>",
        )
        bye = wait_datagram(proxy, PATIENCE, "BYE ")
        assert bye is not None, eng.log()[-2000:]
        assert bye.startswith(f"BYE sip:127.0.0.1:{proxy_port} SIP/2.0")
        assert header(bye, "Route") == [f"<sip:peer@127.0.0.1:{contact_port}>"]
    finally:
        proxy.close()
        peer.close()


# --- P2-5/6/7: one final answer, 481 for unknown dialogs, Timer G -----------------------------------------


def test_cancel_during_a_slow_failing_fetch_gets_one_final_answer(
    engine: EngineFactory, http_server: HttpServer
) -> None:
    http_server.delays["/swml"] = [4.0]  # the first fetch hangs a while: the CANCEL comes during it
    http_server.failures["/swml"] = [500] * 5
    eng = engine(None, "--script-url", http_server.url("/swml"))
    peer = SipPeer(eng.port)
    try:
        branch = peer.request("INVITE", 1, body=sdp_offer(31400))
        assert wait_for(lambda: bool(http_server.requests), PATIENCE)  # the fetch has begun
        peer.request("CANCEL", 1, branch=branch)
        assert peer.wait(lambda: bool(peer.finals()) and bool(peer.statuses("CANCEL"))), peer.messages
        peer.receive(4.0)  # past the fetch's end: nothing more may come of it
        assert set(peer.finals()) == {487}, peer.statuses("INVITE")
        assert peer.statuses("CANCEL") == [200]
        peer.request("ACK", 1, branch=branch, to_tag=to_tag(peer.final()))
    finally:
        peer.close()
    eng.wait_idle()


def test_invite_with_a_to_tag_for_an_unknown_dialog_is_481(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300))
    peer = SipPeer(eng.port)
    try:
        branch = peer.request("INVITE", 5, to_tag="deadbeef", body=sdp_offer(31400))
        assert peer.wait(lambda: bool(peer.finals()))
        assert peer.finals()[:1] == [481]
        assert to_tag(peer.final()) == "deadbeef"
        peer.request("ACK", 5, branch=branch, to_tag="deadbeef")
    finally:
        peer.close()
    assert eng.call_events() == []  # no call was started


def test_final_error_is_retransmitted_until_the_ack(engine: EngineFactory) -> None:
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300))
    peer = SipPeer(eng.port)
    try:
        branch = peer.request("INVITE", 1, body=sdp_offer(31400, "18\r\na=rtpmap:18 G729/8000"))
        # Timer G: the 488 again (0.5 s, then 1 s later) while no ACK comes
        assert peer.wait(lambda: len(peer.finals()) >= 3), peer.statuses("INVITE")
        assert set(peer.finals()) == {488}
        peer.request("ACK", 1, branch=branch, to_tag=to_tag(peer.final()))
        # an OPTIONS after the ACK: its answer comes after any 488 sent before the ACK was taken
        peer.request("OPTIONS", 2)
        assert peer.wait(lambda: bool(peer.statuses("OPTIONS")))
        before = len(peer.finals())
        peer.receive(4.5)  # the next retransmission was due within 4 s (T2)
        assert len(peer.finals()) == before  # the ACK stopped it
    finally:
        peer.close()
    assert "rejected 488" in eng.log()


def test_a_carriers_multipart_invite_is_answered_from_its_sdp_part(engine: EngineFactory) -> None:
    # SIP-I (RFC 5621): the offer beside the ISUP IAM the carrier's network carries along; ours is plain SDP.
    eng = engine(ANSWER_THEN_HANG_UP.format(ms=300))
    peer = SipPeer(eng.port)
    isup = "\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\x00"
    body = (
        "--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\n"
        + sdp_offer(31420)
        + "\r\n--unique-boundary-1\r\nContent-Type: application/ISUP;version=itu-t92+\r\n"
        + "Content-Disposition: signal;handling=optional\r\n\r\n"
        + isup
        + "\r\n--unique-boundary-1--\r\n"
    )
    try:
        peer.request("INVITE", 1, body=body, content_type='multipart/mixed;boundary="unique-boundary-1"')
        assert peer.wait(lambda: 200 in peer.statuses("INVITE")), peer.messages
        ok = peer.final()
        assert header(ok, "Content-Type") == ["application/sdp"]
        assert sdp_lines(ok, "m=audio") and sdp_lines(ok, "a=rtpmap:0 ") == ["a=rtpmap:0 PCMU/8000"]
        peer.request("ACK", 1, to_tag=to_tag(ok))
    finally:
        peer.close()
