"""`connect` on `swml serve --workers 2` against real peers: sipp calls the engine from a socket per call
(so the kernel spreads the calls over both workers), the script records each in stereo and connects it
to one far sipp that answers every call. Each worker places its far legs from a port of its own, so the
far sipp's answers reach the worker that placed each leg: every call is bridged (the caller's pulses on
the left of its recording, the far party's on the right), both workers ran calls, and the far sipp got
every call's BYE."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import read_wav

from .peers import Engine, free_port, run_sipp, scenario, sipp_errors
from .test_outbound import CALLER_TONE, FAR_TONE, PULSE, onsets, pulses, regular

#: Calls placed at once, and how long each caller talks (s).
CALLS, TALK = 10, 5.0
SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true, format: wav}}
    - connect: {{to: '{far}'}}
"""
#: A worker's line for each call it runs: "<date> <time> <pid> INFO [<call id>] ...: call <id> (...) from".
CALL_LINE = re.compile(r"^\S+ \S+ (\d+) INFO \[[^\]]*\] swml_engine\.service\.server: call \S+ \(", re.M)


def mostly_regular(times: list[float]) -> bool:
    """A period between pulses (within a frame), for every gap but one."""
    return sum(not regular([a, b]) for a, b in itertools.pairwise(times)) <= 1


def far_sipp(workdir: Path, pcap: Path, calls: int) -> tuple[subprocess.Popen[str], int]:
    """sipp answering ``calls`` calls with PCMU, each sending ``pcap`` from its ACK until our BYE."""
    workdir.mkdir(parents=True, exist_ok=True)
    xml = scenario("far_answers", offer="0 8 9 101", ring=300, far_media="0", pcap=str(pcap), bye_timeout=60000)
    (workdir / "scenario.xml").write_text(xml)
    port, media = free_port(), free_port(span=4)
    cmd = ["sipp", "-sf", "scenario.xml", "-p", str(port), "-i", "127.0.0.1", "-mp", str(media), "-m", str(calls)]
    cmd += ["-t", "u1", "-nostdin", "-trace_err", "-timeout", "90s", "-timeout_error"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def test_every_call_on_two_workers_is_bridged_to_the_far_sipp(engine: Callable[..., Engine], tmp_path: Path) -> None:
    caller_pcap, far_pcap = tmp_path / "caller.pcap", tmp_path / "far.pcap"
    pulses(caller_pcap, "PCMA", CALLER_TONE, TALK + 1)
    pulses(far_pcap, "PCMU", FAR_TONE, TALK + 1, offset=0.5)
    far, far_port = far_sipp(tmp_path / "far", far_pcap, CALLS)
    try:
        eng = engine(SCRIPT.format(far=f"sip:far@127.0.0.1:{far_port}"), "--workers", "2")
        xml = scenario(
            "caller_hangs_up", pcap=str(caller_pcap), pause=int(TALK * 1000), dtmf="pcap/dtmf_2833_1.pcap", after=300
        )
        extra = ["-r", str(CALLS), "-max_socket", "100"]
        res = run_sipp(tmp_path / "caller", xml, eng.port, transport="un", calls=CALLS, timeout=60, extra=extra)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        try:
            assert far.wait(60) == 0, (far.stdout.read() if far.stdout else "") + sipp_errors(tmp_path / "far")
        except subprocess.TimeoutExpired:
            raise AssertionError("the far sipp did not get every call's BYE: " + eng.log()[-3000:]) from None
    finally:
        if far.poll() is None:
            far.kill()
            far.wait()
    assert len(set(CALL_LINE.findall(eng.log()))) == 2, eng.log()[-3000:]  # both workers ran calls
    recordings = eng.recordings(CALLS)
    assert len(recordings) == CALLS
    for meta in recordings:
        [bridge] = meta["bridges"]
        assert bridge["to"] == f"sip:far@127.0.0.1:{far_port}" and bridge["end"] is not None
        audio, rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
        left, right = audio[:, 0], audio[:, 1]
        # Each side came through in step: a period between pulses, but for one gap at most — ten calls of
        # one sipp each way on a busy machine may stall a stream past the jitter buffer's delay, which
        # moves a pulse and may cut it in two (its pieces, within a pulse and a stall of PULSE of each
        # other, count as one: pulses are a second apart); the bridged-call test measures such stalls
        # and checks them exactly.
        said = onsets(left, rate, CALLER_TONE, stall=PULSE)
        heard = onsets(right, rate, FAR_TONE, stall=PULSE)
        assert len(said) >= 3 and mostly_regular(said), said
        assert len(heard) >= 3 and mostly_regular(heard), heard
