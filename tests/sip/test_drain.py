"""Taking calls and stopping, as a SIP dispatcher in front of `swml serve` sees it: OPTIONS probes get 503
whenever a new call would (over --max-calls, stopping), and the BYEs a stop sends are retransmitted until
answered before the process exits."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from interop.peers import PATIENCE, Engine, SipPeer, free_port, header, sdp_offer, to_tag, wait_for
from swml_engine.service.cli import SAME_SIGNAL, StopSignals

EngineFactory = Callable[..., Engine]

LONG_CALL = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: {urls: ['silence:20']}\n"


def answered(peer: SipPeer, rtp_port: int = 31400) -> str:
    """A call from ``peer``, answered and ACKed; its To tag."""
    peer.request("INVITE", 1, body=sdp_offer(rtp_port))
    assert peer.wait(lambda: 200 in peer.statuses("INVITE")), peer.messages
    tag = to_tag(peer.final())
    peer.request("ACK", 1, to_tag=tag)
    return tag


def probe(peer: SipPeer, cseq: int) -> int:
    """The status an OPTIONS probe (outside any dialog) gets."""
    peer.request("OPTIONS", cseq)
    assert peer.wait(lambda: len(peer.statuses("OPTIONS")) >= cseq), peer.messages
    return peer.statuses("OPTIONS")[cseq - 1]


def probed(peer: SipPeer, status: int) -> bool:
    """Whether OPTIONS probes, one at a time as a dispatcher sends them, come to get ``status`` (the
    service reads a signal, or sees a call end, when its loop gets to it)."""

    def ask() -> bool:
        cseq = len(peer.statuses("OPTIONS")) + 1
        peer.request("OPTIONS", cseq)
        return peer.wait(lambda: len(peer.statuses("OPTIONS")) >= cseq) and peer.statuses("OPTIONS")[-1] == status

    return wait_for(ask, PATIENCE)


def test_options_is_503_while_max_calls_are_up_and_200_again_when_one_ends(engine: EngineFactory) -> None:
    eng = engine(LONG_CALL, "--max-calls", "1")
    prober, caller = SipPeer(eng.port), SipPeer(eng.port)
    try:
        assert probe(prober, 1) == 200
        tag = answered(caller)
        assert probe(prober, 2) == 503  # a dispatcher marks the node down before sending an INVITE
        caller.request("BYE", 2, to_tag=tag)
        assert caller.wait(lambda: 200 in caller.statuses("BYE")), caller.messages
        assert probed(prober, 200)
    finally:
        prober.close()
        caller.close()


def bye_requests(peer: SipPeer) -> list[str]:
    return [m for m in peer.messages if m.startswith("BYE ")]


def test_the_bye_sigterm_sends_is_retransmitted_until_answered_then_the_service_exits(engine: EngineFactory) -> None:
    # With --outbound-port the calls a worker places go out from an endpoint of their own: before, a
    # stop waited for that one's BYEs only, and closed the SIP port with its BYEs unanswered.
    eng = engine(LONG_CALL, "--drain-timeout", "0", "--stop-grace", "10", "--outbound-port", str(free_port()))
    caller = SipPeer(eng.port)
    try:
        answered(caller)
        assert eng.proc is not None
        eng.proc.send_signal(signal.SIGTERM)
        assert caller.wait(lambda: len(bye_requests(caller)) >= 1), eng.log()[-2000:]  # lost: not answered
        assert caller.wait(lambda: len(bye_requests(caller)) >= 2), eng.log()[-2000:]  # again, T1 later
        assert eng.proc.poll() is None  # still there for the answer
        caller.reply(bye_requests(caller)[-1])
        assert eng.proc.wait(PATIENCE) == 0, eng.log()[-3000:]
    finally:
        caller.close()


SHORT_CALL = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - play: {urls: ['silence:2']}\n"


def reason_of(bye: str) -> str:
    return (header(bye, "Reason") or [""])[0]


def test_at_sigterm_a_live_call_ends_by_itself_while_new_calls_and_probes_get_503(engine: EngineFactory) -> None:
    eng = engine(SHORT_CALL, "--drain-timeout", "600")
    caller, prober, late = SipPeer(eng.port), SipPeer(eng.port), SipPeer(eng.port)
    try:
        answered(caller)
        assert eng.proc is not None
        eng.proc.send_signal(signal.SIGTERM)
        assert probed(prober, 503)
        late.request("INVITE", 1, body=sdp_offer(31402))
        assert late.wait(lambda: bool(late.finals())) and late.finals() == [503], late.messages
        assert caller.wait(lambda: bool(bye_requests(caller))), eng.log()[-2000:]  # the script's own end
        bye = bye_requests(caller)[0]
        assert "shutdown" not in reason_of(bye), bye
        caller.reply(bye)
        assert eng.proc.wait(PATIENCE) == 0, eng.log()[-3000:]  # then out, long before 600 s
    finally:
        for peer in (caller, prober, late):
            peer.close()
    assert "drained: every call ended by itself" in eng.log()


@pytest.mark.parametrize("how", ["drain timeout", "second signal"])
def test_the_calls_left_are_hung_up_when_the_drain_is_over(engine: EngineFactory, how: str) -> None:
    eng = engine(LONG_CALL, "--drain-timeout", "1" if how == "drain timeout" else "600")
    caller = SipPeer(eng.port)
    try:
        answered(caller)
        assert eng.proc is not None
        eng.proc.send_signal(signal.SIGTERM)
        assert probed(caller, 503)  # draining
        if how == "second signal":
            assert not bye_requests(caller)
            time.sleep(SAME_SIGNAL)  # (closer signals are one: a terminal's Ctrl-C reaches every process)
            eng.proc.send_signal(signal.SIGINT)
        assert caller.wait(lambda: bool(bye_requests(caller))), eng.log()[-2000:]
        bye = bye_requests(caller)[0]
        assert "shutdown" in reason_of(bye), bye
        caller.reply(bye)
        assert eng.proc.wait(PATIENCE) == 0, eng.log()[-3000:]
    finally:
        caller.close()


def test_stop_signals_closer_than_a_second_are_one_stop() -> None:
    now = [100.0]
    signals = StopSignals(lambda: now[0])
    signals.received()
    assert signals.first.is_set() and not signals.again.is_set()
    now[0] += SAME_SIGNAL / 2  # the same stop, reaching this worker twice
    signals.received()
    assert not signals.again.is_set()
    now[0] += SAME_SIGNAL / 2
    signals.received()  # a second stop: hang up now
    assert signals.again.is_set()
