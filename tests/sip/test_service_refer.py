"""``sip_refer`` on `swml serve`, with our own SIP peer on loopback as the caller being transferred: the
REFER on the wire, the caller's 202 and NOTIFYs, the engine's BYE after the transfer, and what the
script saw. (The protocol rules, socket-free: test_refer.py; the method's logic: test_sip_refer.py.)"""

from __future__ import annotations

from collections.abc import Callable

from interop.peers import Engine, SipPeer, header, wait_for

from .test_service_dialogs import answered

EngineFactory = Callable[..., Engine]


TARGET = "sip:bob@192.0.2.99:5099"
SCRIPT = (
    "version: 1.0.0\nsections:\n  main:\n"
    f"    - sip_refer: {{to_uri: '{TARGET}'}}\n"
    "    - set: {after: reached}\n"
    "    - play: {url: 'silence:1'}\n"
)


def requests(peer: SipPeer, method: str) -> list[str]:
    return [m for m in peer.messages if m.startswith(f"{method} ")]


def reply(peer: SipPeer, request: str, code: int, phrase: str) -> None:
    """Our answer to a request the engine sent (its Vias, From, To, Call-ID and CSeq copied back)."""
    lines = [f"SIP/2.0 {code} {phrase}"]
    lines += [
        f"{name}: {value}" for name in ("Via", "From", "To", "Call-ID", "CSeq") for value in header(request, name)
    ]
    lines.append("Content-Length: 0")
    peer.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), ("127.0.0.1", peer.port))


def notify(peer: SipPeer, cseq: int, tag: str, frag: str, state: str) -> None:
    """The caller's NOTIFY of the transfer's progress (a message/sipfrag body)."""
    lines = [
        f"NOTIFY sip:record@127.0.0.1:{peer.port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.local};branch=z9hG4bK-notify-{cseq};rport",
        f"From: <sip:peer@127.0.0.1>;tag={peer.tag}",
        f"To: <sip:record@127.0.0.1>;tag={tag}",
        f"Call-ID: {peer.call_id}",
        f"CSeq: {cseq} NOTIFY",
        f"Contact: <sip:peer@127.0.0.1:{peer.local}>",
        "Max-Forwards: 70",
        "Event: refer",
        f"Subscription-State: {state}",
        "Content-Type: message/sipfrag;version=2.0",
        f"Content-Length: {len(frag)}",
    ]
    peer.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + frag).encode(), ("127.0.0.1", peer.port))


def vars_of(eng: Engine) -> dict[str, object]:
    [events] = eng.call_events()
    return {str(e["name"]): e["value"] for e in events if e["type"] == "vars.set"}


def test_a_caller_that_takes_the_refer_is_transferred_and_the_engine_hangs_up(engine: EngineFactory) -> None:
    eng = engine(SCRIPT)
    peer = SipPeer(eng.port)
    try:
        tag = answered(peer)
        assert peer.wait(lambda: bool(requests(peer, "REFER"))), peer.messages
        [refer] = requests(peer, "REFER")
        assert refer.startswith(f"REFER sip:peer@127.0.0.1:{peer.local};transport=udp SIP/2.0")
        assert header(refer, "Refer-To") == [f"<{TARGET}>"]
        assert header(refer, "Referred-By") == ["<sip:record@127.0.0.1>"]
        assert header(refer, "Call-ID") == [peer.call_id] and f"tag={tag}" in header(refer, "From")[0]
        reply(peer, refer, 202, "Accepted")
        notify(peer, 2, tag, "SIP/2.0 100 Trying\r\n", "active;expires=60")
        notify(peer, 3, tag, "SIP/2.0 200 OK\r\n", "terminated;reason=noresource")
        assert peer.wait(lambda: bool(requests(peer, "BYE"))), peer.messages
        assert peer.statuses("NOTIFY") == [200, 200]
        [bye] = requests(peer, "BYE")
        assert "transferred" in header(bye, "Reason")[0]
        reply(peer, bye, 200, "OK")
        assert wait_for(lambda: any(e["type"] == "call.state" and e["state"] == "ended" for e in eng.call_events()[0]))
    finally:
        peer.close()
    seen = vars_of(eng)
    assert {k: seen[k] for k in ("sip_refer_result", "sip_refer_response_code", "sip_refer_to_response_code")} == {
        "sip_refer_result": "success",
        "sip_refer_response_code": "202",
        "sip_refer_to_response_code": "200",
    }
    assert "after" not in seen
    [events] = eng.call_events()
    assert [e["state"] for e in events if e["type"] == "sip.refer"] == ["pending", "pending", "success"]
    [ended] = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended["reason"] == "transferred"


def test_a_caller_that_refuses_the_refer_stays_with_the_script(engine: EngineFactory) -> None:
    eng = engine(SCRIPT)
    peer = SipPeer(eng.port)
    try:
        tag = answered(peer)
        assert peer.wait(lambda: bool(requests(peer, "REFER"))), peer.messages
        reply(peer, requests(peer, "REFER")[0], 603, "Decline")
        # a NOTIFY after the refusal is not taken: there is no subscription
        notify(peer, 2, tag, "SIP/2.0 200 OK\r\n", "terminated")
        assert peer.wait(lambda: bool(peer.statuses("NOTIFY"))), peer.messages
        assert peer.statuses("NOTIFY") == [481]
        # the script goes on: its play of 1 s, then the end of the script hangs up
        assert peer.wait(lambda: bool(requests(peer, "BYE"))), peer.messages
        [bye] = requests(peer, "BYE")
        assert "script_end" in header(bye, "Reason")[0]
        reply(peer, bye, 200, "OK")
    finally:
        peer.close()
    seen = vars_of(eng)
    assert (seen["sip_refer_result"], seen["sip_refer_response_code"], seen["after"]) == ("failed", "603", "reached")
    assert seen["sip_refer_to_response_code"] == ""
