"""``sip_refer`` against sipp as the caller being transferred (scenarios/transferee.xml): sipp takes the
REFER (202), tells the target's answer in NOTIFYs (100, then 200 or 486), and gets the engine's BYE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .peers import Engine, run_sipp, scenario, sipp_errors

EngineFactory = Callable[..., Engine]

SCRIPT = """
version: 1.0.0
sections:
  main:
    - sip_refer: {to_uri: 'sip:agent@192.0.2.50'}
    - set: {after: reached}
    - play: {url: 'silence:0.5'}
"""


@pytest.mark.parametrize(
    ("final", "result", "code", "reason"),
    [("SIP/2.0 200 OK", "success", "200", "transferred"), ("SIP/2.0 486 Busy Here", "failed", "486", "script_end")],
)
def test_sipp_takes_the_refer_and_tells_the_outcome(
    final: str, result: str, code: str, reason: str, engine: EngineFactory, tmp_path: Path
) -> None:
    eng = engine(SCRIPT)
    xml = scenario("transferee", final=final, ring=1000)
    res = run_sipp(tmp_path / "sipp", xml, eng.port)
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-3000:]
    eng.wait_idle()
    [events] = eng.call_events()
    seen = {e["name"]: e["value"] for e in events if e["type"] == "vars.set"}
    assert (seen["sip_refer_result"], seen["sip_refer_response_code"], seen["sip_refer_to_response_code"]) == (
        result,
        "202",
        code,
    )
    assert seen["sip_refer_to"] == "sip:agent@192.0.2.50"
    assert ("after" in seen) is (result == "failed")  # the script goes on only when the transfer failed
    refer = [e for e in events if e["type"] == "sip.refer"]
    assert [e["state"] for e in refer] == ["pending", "pending", result]
    # the target's answer came about 1 s after the first NOTIFY (sipp's pause), on the call's clock
    assert 0.9 <= float(str(refer[-1]["t"])) - float(str(refer[1]["t"])) <= 5.0
    [ended] = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended["reason"] == reason
