"""RFC 3261 request handling against `swml serve` with a bare SIP peer: in-dialog OPTIONS, methods we do
not serve (405 with Allow), Require with extensions we lack (420), merged requests (482), and a clean
SIGTERM with a TCP call up."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

import pytest

from interop.peers import PATIENCE, Engine, SipPeer, cseq_method, header, sdp_offer, status, to_tag, wait_for

EngineFactory = Callable[..., Engine]

LONG_CALL = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: {urls: ['silence:20']}\n"
ALLOW = ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]


def answered(peer: SipPeer) -> str:
    peer.request("INVITE", 1, body=sdp_offer(31400))
    assert peer.wait(lambda: 200 in peer.statuses("INVITE")), peer.messages
    tag = to_tag(peer.final())
    peer.request("ACK", 1, to_tag=tag)
    return tag


def reply(peer: SipPeer, method: str) -> str:
    """The first response to ``method`` (waited for)."""
    assert peer.wait(lambda: bool(peer.statuses(method))), peer.messages
    return next(m for m in peer.messages if m.startswith("SIP/2.0") and cseq_method(m) == method)


def tags(msg: str) -> list[str]:
    return re.findall(r";tag=([^;>\s]+)", header(msg, "To")[0])


def allow(msg: str) -> list[str]:
    return [m.strip() for line in header(msg, "Allow") for m in line.split(",")]


def test_in_dialog_requests_keep_the_dialog_tag_and_405_says_allow(engine: EngineFactory) -> None:
    eng = engine(LONG_CALL)
    peer = SipPeer(eng.port)
    try:
        tag = answered(peer)
        peer.request("OPTIONS", 2, to_tag=tag)
        ok = reply(peer, "OPTIONS")
        assert status(ok) == 200 and tags(ok) == [tag], ok  # one To tag: the dialog's
        assert allow(ok) == ALLOW  # only what we serve
        for cseq, method in enumerate(("INFO", "REFER"), 3):
            peer.request(method, cseq, to_tag=tag, headers=("Refer-To: <sip:carol@127.0.0.1>",) * (method == "REFER"))
            answer = reply(peer, method)
            assert status(answer) == 405 and allow(answer) == ALLOW and tags(answer) == [tag], answer
        # an UPDATE without a body is a session refresh (RFC 4028), taken though not offered in Allow
        peer.request("UPDATE", 5, to_tag=tag)
        answer = reply(peer, "UPDATE")
        assert status(answer) == 200 and tags(answer) == [tag], answer
        peer.request("BYE", 6, to_tag=tag)
        assert status(reply(peer, "BYE")) == 200  # the call was never disturbed
    finally:
        peer.close()


@pytest.mark.parametrize("require", ["100rel", "foo-ext, 100rel"])
def test_require_of_an_extension_we_lack_is_420_with_unsupported(engine: EngineFactory, require: str) -> None:
    eng = engine(LONG_CALL)
    peer = SipPeer(eng.port)
    try:
        branch = peer.request("INVITE", 1, body=sdp_offer(31400), headers=(f"Require: {require}", "Supported: 100rel"))
        assert peer.wait(lambda: bool(peer.finals())), peer.messages
        assert peer.finals()[:1] == [420], peer.messages
        final = next(m for m in peer.messages if status(m) >= 200)
        assert header(final, "Unsupported") == [require]
        peer.request("ACK", 1, branch=branch, to_tag=to_tag(final))
    finally:
        peer.close()
    assert eng.call_events() == []  # no call was started


def test_sigterm_with_a_tcp_call_up_ends_it_without_a_traceback(engine: EngineFactory) -> None:
    eng = engine(LONG_CALL)
    peers = [SipPeer(eng.port, "tcp"), SipPeer(eng.port, "udp")]
    try:
        for peer in peers:
            answered(peer)
        assert wait_for(lambda: len(eng.call_events()) == 2, PATIENCE)
        assert eng.proc is not None
        eng.proc.send_signal(signal.SIGTERM)
        for peer in peers:  # the stop waits for its BYEs to be answered
            assert peer.wait(lambda p=peer: any(m.startswith("BYE ") for m in p.messages)), peer.messages
            peer.reply(next(m for m in peer.messages if m.startswith("BYE ")))
        assert eng.stop() == 0
    finally:
        for peer in peers:
            peer.close()
    assert "Traceback" not in eng.log() and " ERROR " not in eng.log(), eng.log()[-3000:]


def test_merged_invite_while_ringing_is_482_and_the_first_goes_on(engine: EngineFactory) -> None:
    ringing = (
        "version: 1.0.0\nsections:\n  main:\n    - play: {url: 'silence:1', auto_answer: false}\n    - answer\n"
        "    - play: {urls: ['silence:20']}\n"
    )
    eng = engine(ringing)
    peer = SipPeer(eng.port)
    try:
        first = peer.request("INVITE", 1, body=sdp_offer(31400))
        assert peer.wait(lambda: 183 in peer.statuses("INVITE")), peer.messages
        tag = to_tag(peer.messages[-1])
        # the same INVITE by another path (a forking proxy): same Call-ID, From tag and CSeq, a new branch
        second = peer.request("INVITE", 1, body=sdp_offer(31400))
        assert peer.wait(lambda: 200 in peer.statuses("INVITE")), peer.messages
        by_branch = {b: [m for m in peer.messages if f"branch={b}" in m] for b in (first, second)}
        assert [status(m) for m in by_branch[second]][:1] == [482]
        assert 200 not in [status(m) for m in by_branch[second]]
        ok = next(m for m in by_branch[first] if status(m) == 200)
        assert to_tag(ok) == tag  # the first INVITE's dialog was not replaced
        peer.request("ACK", 1, branch=second, to_tag=to_tag(by_branch[second][0]))
        peer.request("ACK", 1, to_tag=tag)
        peer.request("BYE", 2, to_tag=tag)
        assert status(reply(peer, "BYE")) == 200
    finally:
        peer.close()
    assert len(eng.call_events()) == 1
