"""A real caller (sipp) of a wildcard-bound `swml serve`: the address it advertises reaches the caller.
(The other dialog rules run against our own SIP peer: tests/sip/test_service_dialogs.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from conftest import read_wav

from .peers import (
    Engine,
    pcap_speech,
    run_sipp,
    scenario,
    sipp_errors,
)
from .test_sipp import best_correlation

EngineFactory = Callable[..., Engine]

# --- P1-1: what a wildcard-bound engine advertises ------------------------------------------------------


def test_wildcard_bind_advertises_the_address_that_reaches_the_caller(engine: EngineFactory, tmp_path: Path) -> None:
    script = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n"
    script += "    - play: {urls: ['silence:60']}\n"
    eng = engine(script, host="0.0.0.0")
    workdir = tmp_path / "sipp"
    xml = scenario("caller_hangs_up", pcap="pcap/g711a.pcap", pause=7000, dtmf="pcap/dtmf_2833_5.pcap", after=300)
    res = run_sipp(workdir, xml, eng.port, extra=["-trace_msg"])
    assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(workdir) + eng.log()[-3000:]
    log = "\n".join(p.read_text(errors="replace") for p in workdir.glob("*_messages.log"))
    ok = log[log.index("SIP/2.0 200 OK") :]
    ok = ok[: ok.index("Content-Length")]
    assert re.search(rf"Contact: <sip:127\.0\.0\.1:{eng.port}>", ok), ok
    assert "0.0.0.0" not in log.split("SIP/2.0 200 OK", 1)[1].split("ACK")[0]
    c_line = re.search(r"c=IN IP4 (\S+)", log.split("SIP/2.0 200 OK", 1)[1])
    assert c_line and c_line.group(1) == "127.0.0.1"
    [meta] = eng.recordings(1)
    audio, _ = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert best_correlation(audio[:, 0], pcap_speech()[8000:40000]) > 0.9  # the caller's RTP reached us
