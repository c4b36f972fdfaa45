"""What a caller sends cannot break or drive `swml serve`'s log: a Call-ID holding a terminal escape, a C1
control and a bidirectional override is written escaped, and one of 40,000 characters is cut, in the text
lines and in the JSON lines alike."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections import Counter
from collections.abc import Callable

import pytest

from interop.peers import Engine, SipPeer, sdp_offer

EngineFactory = Callable[..., Engine]

BUSY = "version: 1.0.0\nsections:\n  main:\n    - hangup: {reason: busy}\n"
#: Clears the screen of an operator's `tail -f`, colours the rest red (the 8-bit CSI), and reverses it.
HOSTILE = "x\x1b[2J\x9b31m\u202ey@192.0.2.9"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_callers_control_characters_reach_the_log_escaped(engine: EngineFactory, log_format: str) -> None:
    eng = engine(BUSY, "--log-format", log_format)
    caller = SipPeer(eng.port, call_id=HOSTILE)
    # a Call-ID of 40,000 characters (the SIP core takes it): its line is cut, or a log pipeline would cut
    # it into lines of its own (journald: at 48 KiB), the rest beginning with the caller's text
    long = SipPeer(eng.port, call_id="c" * 40_000)
    try:
        for peer in (caller, long):
            peer.request("INVITE", 1, body=sdp_offer(31400))
            assert peer.wait(lambda: 486 in peer.statuses("INVITE")), peer.messages  # noqa: B023
        assert caller.wait(lambda: eng.log().count("ended after") == 2), eng.log()[-2000:]
    finally:
        caller.close()
        long.close()
    lines = eng.log().splitlines()  # (splitlines breaks at U+2028, \x85 and the like too)
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    assert max(len(line) for line in lines) < 6000
    if log_format == "text":
        assert any(" (x\\x1b[2J\\x9b31m\\u202ey@192.0.2.9) from " in line for line in lines), lines
    else:  # read back, the message holds the Call-ID as it came
        messages = [json.loads(line)["message"] for line in lines if line.startswith("{")]
        assert any(f" ({HOSTILE}) from " in message for message in messages), messages


def test_offers_we_cannot_use_from_one_address_do_not_write_a_line_each(engine: EngineFactory) -> None:
    """Each INVITE whose offer we cannot use gets 488; its log line is written for the first from each
    address, then one in a hundred with the count — a line each once let one address (or forged ones)
    write the log at the rate it sent datagrams."""
    eng = engine(BUSY)
    caller = SipPeer(eng.port)
    unusable = sdp_offer(31400).replace("RTP/AVP 0", "RTP/AVP 99")  # no codec we speak
    try:
        for cseq in range(1, 151):
            caller.request("INVITE", cseq, body=unusable)
        answered = caller.wait(lambda: caller.statuses("INVITE").count(488) == 150)
        # (a text: pytest cuts a list's repr short, and pair 23/24 failures could not be read)
        assert answered, f"{Counter(caller.statuses('INVITE'))}\n{eng.log()[-3000:]}"
    finally:
        caller.close()
    refused = [line for line in eng.log().splitlines() if "rejected 488" in line]
    assert len(refused) == 2, refused
    assert "no common codec" in refused[0] and "100 refused so far" in refused[1]


def test_a_burst_that_comes_while_the_service_is_held_up_is_all_answered(engine: EngineFactory) -> None:
    """A PBX failing its calls over, a monitor's OPTIONS: a burst of requests while the service cannot
    read (here stopped with SIGSTOP, as a loaded machine would not schedule it). They wait in the SIP
    socket's buffer and are answered once it runs: the system's default buffer (208 KiB) held some 150
    such requests and the kernel dropped the rest unanswered."""
    eng = engine(BUSY)
    caller = SipPeer(eng.port)
    caller.sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # (SO_RCVBUFFORCE: this side keeps all)
    os.kill(eng.proc.pid, signal.SIGSTOP)
    try:
        for cseq in range(1, 501):
            caller.request("OPTIONS", cseq)
    finally:
        os.kill(eng.proc.pid, signal.SIGCONT)
    try:
        assert caller.wait(lambda: len(caller.statuses("OPTIONS")) == 500), len(caller.statuses("OPTIONS"))
    finally:
        caller.close()
