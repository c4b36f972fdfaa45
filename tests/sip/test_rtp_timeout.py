"""`swml serve --rtp-timeout`: a caller whose phone vanished (no BYE, no packets) is hung up; one on hold
is not. Our own SIP peer and an RTP party on loopback are the caller."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from interop.peers import Engine, SipPeer, header, sdp_offer, to_tag, wait_for
from sip.rtp_parties import parties

EngineFactory = Callable[..., Engine]

LONG_CALL = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: {urls: ['silence:60']}\n"


def answered_call(peer: SipPeer, rtp_port: int) -> tuple[str, tuple[str, int]]:
    """INVITE, ACK; the dialog's tag and the engine's RTP address."""
    peer.request("INVITE", 1, body=sdp_offer(rtp_port))
    assert wait_for(lambda: peer.receive(0.1) is not None and 200 in peer.statuses("INVITE"), 10)
    ok = peer.final()
    ours = ("127.0.0.1", int(next(x for x in ok.split("\r\n") if x.startswith("m=audio")).split()[1]))
    tag = to_tag(ok)
    peer.request("ACK", 1, to_tag=tag)
    return tag, ours


def byes(peer: SipPeer) -> list[str]:
    return [m for m in peer.messages if m.startswith("BYE ")]


def test_a_caller_that_goes_silent_without_bye_is_hung_up_after_the_rtp_timeout(engine: EngineFactory) -> None:
    eng = engine(LONG_CALL, "--rtp-timeout", "1")
    peer = SipPeer(eng.port)
    with parties(("127.0.0.1", 440.0)) as (caller,):
        try:
            _, ours = answered_call(peer, caller.addr[1])
            for _ in range(75):  # 1.5 s of audio: longer than the timeout, and no hang-up meanwhile
                caller.send(ours)
                time.sleep(0.02)
            stopped = time.monotonic()  # the phone dies: nothing more
            peer.receive(0.1)
            assert byes(peer) == []
            assert peer.wait(lambda: bool(byes(peer)), 20), eng.log()[-2000:]
            # (about 1 s: counted in media ticks, which a late loop may run in a quick burst to catch up)
            assert time.monotonic() - stopped >= 0.5
            assert "RTP timeout" in header(byes(peer)[0], "Reason")[0]
        finally:
            peer.close()
    eng.wait_idle()
    [events] = eng.call_events()
    assert any(e["type"] == "warning" and e.get("where") == "sip.rtp" for e in events)
    [ended] = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended["reason"] == "remote_hangup"


@pytest.mark.parametrize("direction", ["inactive", "sendonly"])
def test_a_caller_on_hold_may_send_nothing(direction: str, engine: EngineFactory) -> None:
    # sendonly too: a phone holding us says it sends (music on hold) yet often sends nothing — baresip's
    # /hold does so — and a hold longer than --rtp-timeout must not end the call
    eng = engine(LONG_CALL, "--rtp-timeout", "1")
    peer = SipPeer(eng.port)
    with parties(("127.0.0.1", 440.0)) as (caller,):
        try:
            tag, ours = answered_call(peer, caller.addr[1])
            caller.send(ours, 10)
            hold = sdp_offer(caller.addr[1]).replace("o=peer 1 1", "o=peer 1 2") + f"a={direction}\r\n"
            peer.request("INVITE", 2, to_tag=tag, body=hold)
            assert peer.wait(lambda: 200 in peer.statuses("INVITE")[1:] or peer.statuses("INVITE").count(200) > 1)
            peer.request("ACK", 2, to_tag=tag)
            peer.receive(3.0)  # on hold, silent for three timeouts
            assert byes(peer) == []
            peer.request("BYE", 3, to_tag=tag)
            assert peer.wait(lambda: bool(peer.statuses("BYE")))
        finally:
            peer.close()
