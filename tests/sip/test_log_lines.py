"""What a caller sends cannot break or drive `swml serve`'s log: a Call-ID holding a terminal escape, a C1
control and a bidirectional override is written escaped, in the text lines and in the JSON lines alike."""

from __future__ import annotations

import json
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
    try:
        caller.request("INVITE", 1, body=sdp_offer(31400))
        assert caller.wait(lambda: 486 in caller.statuses("INVITE")), caller.messages
        assert caller.wait(lambda: "ended after" in eng.log()), eng.log()[-2000:]
    finally:
        caller.close()
    lines = eng.log().splitlines()  # (splitlines breaks at U+2028, \x85 and the like too)
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    if log_format == "text":
        assert any(" (x\\x1b[2J\\x9b31m\\u202ey@192.0.2.9) from " in line for line in lines), lines
    else:  # read back, the message holds the Call-ID as it came
        messages = [json.loads(line)["message"] for line in lines if line.startswith("{")]
        assert any(f" ({HOSTILE}) from " in message for message in messages), messages
