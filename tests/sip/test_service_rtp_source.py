"""Whose RTP a `swml serve` call records and where it sends its own, with an attacker on another host.

Issue 11, item 2, as it was found: after the 200 OK, a second host sending PCMU to the engine's SDP port
before the caller's first packet was recorded as the caller and received the call's audio, and the
caller's own packets were dropped as `foreign`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import read_wav
from interop.peers import Engine, SipPeer, sdp_offer, to_tag, wait_for
from sip.rtp_parties import parties, share

EngineFactory = Callable[..., Engine]

RECORDED_CALL = (
    "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n"
    "    - play: {urls: ['silence:30']}\n"
)


def test_an_attacker_sending_first_from_another_host_is_not_recorded_and_hears_nothing(
    engine: EngineFactory,
) -> None:
    eng = engine(RECORDED_CALL)
    peer = SipPeer(eng.port)
    with parties(("127.0.0.1", 440.0), ("127.0.0.5", 1000.0)) as (caller, attacker):
        try:
            peer.request("INVITE", 1, body=sdp_offer(caller.addr[1]))
            assert wait_for(lambda: peer.receive(0.1) is not None and 200 in peer.statuses("INVITE"), 10)
            ok = peer.final()
            ours = ("127.0.0.1", int(next(x for x in ok.split("\r\n") if x.startswith("m=audio")).split()[1]))
            peer.request("ACK", 1, to_tag=to_tag(ok))
            for _ in range(4):  # the attacker is first ...
                attacker.send(ours)
            for _ in range(100):  # ... and goes on beside the caller for 2 s
                caller.send(ours)
                attacker.send(ours)
                time.sleep(0.02)
            assert wait_for(lambda: caller.received() >= 50, 20), "the caller does not hear the call"
            peer.request("BYE", 2, to_tag=to_tag(ok))
            [meta] = eng.recordings(1, timeout=20)
        finally:
            peer.close()
        assert attacker.received() == 0  # not one packet of the call's audio
    samples, rate = read_wav(eng.data / "recordings" / f"{meta['recording_id']}.wav")
    speak = samples[:, 0]
    assert rate == 8000 and len(speak) > rate  # (the caller's 2 s are in the left channel)
    assert share(speak, 440.0) > 0.5, "the caller is not what was recorded"
    assert share(speak, 1000.0) < 0.001, "the attacker was recorded"
    eng.wait_idle()
    [events] = eng.call_events()
    [stats] = [e for e in events if e["type"] == "rtp.stats"]
    assert 100 <= stats["foreign"] <= 104 and stats["moves"] == 0  # the attacker's, none of the caller's
